"""The quarantine record and the table built from it."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime

from churn_platform.events.contract import QUARANTINE_SCHEMA, QuarantineRow, quarantine_table


def test_a_quarantine_row_has_a_field_for_every_column():
    assert [f.name for f in fields(QuarantineRow)] == QUARANTINE_SCHEMA.names


def test_quarantine_table_puts_each_field_in_its_own_column():
    at = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    rows = [
        QuarantineRow("events", 3, 1_000, b"c-1", b"{", "invalid_json", "cut short", at),
        QuarantineRow("events", 3, 1_007, None, None, "empty", "no value", at),
    ]
    table = quarantine_table(rows)
    assert table.schema == QUARANTINE_SCHEMA
    assert table.to_pylist() == [
        {
            "topic": "events",
            "partition": 3,
            "offset": 1_000,
            "key": b"c-1",
            "value": b"{",
            "reason": "invalid_json",
            "detail": "cut short",
            "quarantined_at": at,
        },
        {
            "topic": "events",
            "partition": 3,
            "offset": 1_007,
            "key": None,
            "value": None,
            "reason": "empty",
            "detail": "no value",
            "quarantined_at": at,
        },
    ]


def test_quarantined_at_may_be_epoch_milliseconds():
    ms = int(datetime(2026, 11, 30, tzinfo=UTC).timestamp() * 1000)
    row = QuarantineRow("events", 0, 5, None, b"", "empty", "empty message", ms)
    assert quarantine_table([row]).column("quarantined_at").to_pylist() == [
        datetime(2026, 11, 30, tzinfo=UTC)
    ]

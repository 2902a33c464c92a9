"""lake.raw directly: an extract's commit, the event days, and forgetting a topic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from churn_platform.events.contract import EVENTS_TOPIC, QuarantineRow, quarantine_table
from churn_platform.lake import raw, tables
from churn_platform.lake.store import Lake
from churn_platform.testing.lakes import FIRST_DAY, ExtractLike, event_ids, raw_rows

OTHER = "other-events"


def of_topic(rows: pa.Table, topic: str) -> pa.Table:
    index = rows.schema.get_field_index("_topic")
    return rows.set_column(index, "_topic", pa.array([topic] * rows.num_rows, pa.string()))


def rejects(topic: str, partition: int, offsets: range) -> pa.Table:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return quarantine_table(
        [
            QuarantineRow(
                topic=topic,
                partition=partition,
                offset=offset,
                key=None,
                value=b"{",
                reason="invalid_json",
                detail="test",
                quarantined_at=at,
            )
            for offset in offsets
        ]
    )


def test_an_extract_from_offsets_another_writer_moved_is_refused_and_adds_nothing(tmp_path):
    lake = Lake(tmp_path / "lake")
    extract = ExtractLike(lake)
    version = extract.round()
    before = event_ids(lake)
    assert raw.extracted_offsets(lake, EVENTS_TOPIC, [0, 1, 2]) == {0: 40, 1: 40, 2: 0}
    # a second extract that read from where the lake was before the first one committed
    late = tables.write_file(
        lake, tables.RAW_EVENTS, raw_rows(0, 0, 5, FIRST_DAY), {"event_date": FIRST_DAY}
    )
    with pytest.raises(tables.CommitConflict, match="expected 0, found 40"):
        raw.commit_extract(lake, EVENTS_TOPIC, {0: 0, 1: 0}, {0: 5, 1: 0}, [late], [])
    assert tables.open_table(lake, tables.RAW_EVENTS).version() == version
    assert event_ids(lake) == before
    assert raw.extracted_offsets(lake, EVENTS_TOPIC, [0, 1]) == {0: 40, 1: 40}
    # nothing new and no offset moved: no commit at all
    assert raw.commit_extract(lake, EVENTS_TOPIC, {0: 40, 1: 40}, {0: 40, 1: 40}, [], []) is None


def test_event_days_and_raw_files_come_from_the_commit_log(tmp_path):
    lake = Lake(tmp_path / "lake")
    ExtractLike(lake, partitions=2).round(days=3)
    days = [FIRST_DAY + timedelta(days=d) for d in range(3)]
    assert raw.event_days(lake) == days
    assert len(raw.raw_files(lake)) == 6  # a file per partition and day
    middle = raw.raw_files(lake, days[1], days[1])
    assert [raw.event_date_of(raw.raw_path(f)) for f in middle] == [days[1], days[1]]
    assert len(raw.raw_files(lake, start=days[1])) == 4
    assert raw.read_raw_events(lake, start=days[2])["event_date"].unique().to_list() == [days[2]]


def test_forget_topic_removes_its_rows_rejects_and_offsets_and_keeps_the_others(tmp_path):
    lake = Lake(tmp_path / "lake")
    raw.append_rows(
        lake,
        EVENTS_TOPIC,
        raw_rows(0, 0, 6, FIRST_DAY),
        quarantine=rejects(EVENTS_TOPIC, 0, range(6, 8)),
        ends={0: 8},
    )
    raw.append_rows(
        lake,
        OTHER,
        of_topic(raw_rows(1, 0, 4, FIRST_DAY), OTHER),
        quarantine=rejects(OTHER, 1, range(4, 5)),
        ends={1: 5},
    )
    assert raw.quarantined_offsets(lake, EVENTS_TOPIC, [0]) == {0: 8}

    assert raw.forget_topic(lake, EVENTS_TOPIC) == 6
    assert raw.read_raw_events(lake)["_topic"].unique().to_list() == [OTHER]
    assert raw.read_quarantine(lake)["topic"].to_list() == [OTHER]
    assert raw.extracted_offsets(lake, EVENTS_TOPIC, [0]) == {0: 0}
    assert raw.quarantined_offsets(lake, EVENTS_TOPIC, [0]) == {0: 0}
    assert raw.extracted_offsets(lake, OTHER, [0, 1]) == {0: 0, 1: 5}
    assert raw.quarantined_offsets(lake, OTHER, [1]) == {1: 5}

    # extracted again from the start, the topic's rows come back once
    raw.append_rows(lake, EVENTS_TOPIC, raw_rows(0, 0, 6, FIRST_DAY), ends={0: 8})
    assert len(raw.read_raw_events(lake, [EVENTS_TOPIC])) == 6
    assert raw.forget_topic(lake, "never-extracted") == 0

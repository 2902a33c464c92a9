"""`churn-platform lake migrate`: a lake of the old layout (range files + ledger) → Delta tables.

The old layout is written here with the old layout's own writers (`Lake.write_parquet`,
`lake.ledger.write_ledger`, the range-file names of `lake.paths`), including what a
crashed run left behind: a file beyond the ledger and a temporary file.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pyarrow as pa
import pytest

from churn_platform.events.contract import QUARANTINE_SCHEMA, RAW_EVENTS_SCHEMA
from churn_platform.lake import raw, tables
from churn_platform.lake.ledger import write_ledger
from churn_platform.lake.migrate import LEGACY_DIR, migrate
from churn_platform.lake.paths import quarantine_path, raw_events_path
from churn_platform.lake.store import Lake, LakeError

TOPIC = "customer-events"
DAY = date(2026, 10, 1)


def _rows(partition: int, first: int, count: int, day: date) -> pa.Table:
    ts = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    return pa.table(
        {
            "event_id": [f"e-{partition}-{first + i}" for i in range(count)],
            "customer_id": [f"c{(first + i) % 7}" for i in range(count)],
            "event_type": ["login"] * count,
            "ts": pa.array(
                [ts + timedelta(seconds=i) for i in range(count)], pa.timestamp("ms", "UTC")
            ),
            "value": pa.array([None] * count, pa.float64()),
            "attributes": pa.array([None] * count, pa.string()),
            "event_date": pa.array([day] * count, pa.date32()),
            "_topic": [TOPIC] * count,
            "_partition": pa.array([partition] * count, pa.int32()),
            "_offset": pa.array(range(first, first + count), pa.int64()),
        },
        schema=RAW_EVENTS_SCHEMA,
    )


def old_layout_lake(root) -> tuple[Lake, set[tuple[int, int]]]:
    """Two partitions over three days, a quarantined message, and a crashed run's leftovers."""
    lake = Lake(root)
    committed: set[tuple[int, int]] = set()
    next_offset = {0: 0, 1: 0}
    for d in range(3):
        day = DAY + timedelta(days=d)
        for partition in (0, 1):
            first, count = next_offset[partition], 5 + d + partition
            table = _rows(partition, first, count, day)
            lake.write_parquet(
                raw_events_path(day, TOPIC, partition, first, first + count - 1), table
            )
            committed |= {(partition, first + i) for i in range(count)}
            next_offset[partition] += count
    # one rejected message at partition 1's next offset
    bad = next_offset[1]
    rejects = pa.table(
        {
            "topic": [TOPIC],
            "partition": pa.array([1], pa.int32()),
            "offset": pa.array([bad], pa.int64()),
            "key": [b"k"],
            "value": [b"{not json"],
            "reason": ["invalid_json"],
            "detail": ["expected an object"],
            "quarantined_at": pa.array(
                [datetime(2026, 10, 3, tzinfo=UTC)], pa.timestamp("ms", "UTC")
            ),
        },
        schema=QUARANTINE_SCHEMA,
    )
    lake.write_parquet(quarantine_path(TOPIC, 1, bad, bad), rejects)
    next_offset[1] += 1
    write_ledger(lake, TOPIC, next_offset)
    # a run that crashed before moving the ledger: a file beyond it, and a temp file
    leftover = _rows(0, next_offset[0], 4, DAY + timedelta(days=3))
    lake.write_parquet(
        raw_events_path(DAY + timedelta(days=3), TOPIC, 0, next_offset[0], next_offset[0] + 3),
        leftover,
    )
    lake.write_bytes(f"raw/customer_events/event_date={DAY}/.x.parquet.tmp-0123456789ab", b"half")
    # a derived table of the old layout
    lake.write_parquet(
        f"features/customer_features/as_of={DAY}/part-00000-of-00001.parquet",
        pa.table({"customer_id": ["c1"], "events_28d": [3]}),
    )
    return lake, committed


def test_migrate_keeps_every_committed_row_once_and_the_offsets(tmp_path):
    lake, committed = old_layout_lake(tmp_path / "lake")
    with pytest.raises(raw.LegacyLake, match="churn-platform lake migrate"):
        raw.read_raw_events(lake)

    result = migrate(lake)

    assert [t.rows for t in result.topics] == [len(committed)]
    events = raw.read_raw_events(lake, [TOPIC])
    assert set(events.select("_partition", "_offset").iter_rows()) == committed
    assert events.height == len(committed)  # once each; the leftover beyond the ledger is not in
    assert raw.extracted_offsets(lake, TOPIC) == {0: 18, 1: 22}
    assert raw.read_quarantine(lake)["offset"].to_list() == [21]
    assert raw.quarantined_offsets(lake, TOPIC, [0, 1]) == {0: 18, 1: 22}
    # any Delta reader sees the same rows; the old files are kept under _legacy/
    other = pl.read_delta(lake.url(tables.RAW_EVENTS.name))
    assert other.height == len(committed) and other["event_date"].n_unique() == 3
    moved = lake.list_files(LEGACY_DIR)
    assert f"{LEGACY_DIR}/raw/_ledger/{TOPIC}.json" in moved
    assert any("event_date=2026-10-04" in p for p in moved)  # the leftover, moved not deleted
    assert any(p.startswith(f"{LEGACY_DIR}/features/customer_features/") for p in moved)
    assert not lake.list_files("raw/_ledger")
    # nothing of the old layout is left inside the tables' directories
    assert all("_delta_log" in p or "-" in p.rpartition("/")[2] for p in lake.list_files("raw"))
    assert tables.open_table(lake, tables.FEATURES) is None  # recomputed, not half-kept

    again = migrate(lake)
    assert again.topics == [] and again.moved == 0
    assert raw.read_raw_events(lake).height == len(committed)


def test_an_interrupted_migration_finishes_on_the_rerun(tmp_path, monkeypatch):
    lake, committed = old_layout_lake(tmp_path / "lake")
    from churn_platform.lake import migrate as module

    def killed(*_args):
        raise KeyboardInterrupt("killed while moving")

    monkeypatch.setattr(module, "_migrate_topic", killed)
    with pytest.raises(KeyboardInterrupt):
        migrate(lake)
    monkeypatch.undo()
    with pytest.raises(raw.LegacyLake):  # half-way: readers still refuse
        raw.read_raw_events(lake)
    # the old files moved, nothing converted yet: the rerun converts from _legacy/
    again = migrate(lake)
    assert again.moved == 0 and again.topics[0].rows == len(committed)
    assert migrate(lake).topics == []
    assert raw.read_raw_events(lake).height == len(committed)


def test_a_damaged_old_file_is_named_and_nothing_is_committed(tmp_path):
    lake, _ = old_layout_lake(tmp_path / "lake")
    victim = sorted(p for p in lake.list_files("raw/customer_events", ".parquet"))[1]
    data = bytearray(lake.read_bytes(victim))
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    lake.write_bytes(victim, bytes(data))
    with pytest.raises(LakeError, match=f"{LEGACY_DIR}/{victim}"):
        migrate(lake)
    assert tables.committed_offsets(lake, tables.RAW_EVENTS, TOPIC) == {}
    with pytest.raises(raw.LegacyLake, match="run `churn-platform lake migrate` again"):
        raw.read_raw_events(lake)


def test_the_command_migrates_and_says_what_it_did(tmp_path):
    import json
    import subprocess
    import sys

    lake, committed = old_layout_lake(tmp_path / "lake")
    command = [sys.executable, "-m", "churn_platform.cli", "lake", "migrate", "--lake", lake.root]
    done = subprocess.run(command + ["--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["topics"][0]["rows"] == len(committed) and body["legacy_files_moved"] > 0
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to migrate" in again.stdout, again.stdout
    # a damaged old ledger: one line naming it, no traceback
    other, _ = old_layout_lake(tmp_path / "other")
    ledger = f"raw/_ledger/{TOPIC}.json"
    other.write_bytes(ledger, b"{not json")
    bad = subprocess.run(
        [sys.executable, "-m", "churn_platform.cli", "lake", "migrate", "--lake", other.root],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
    assert f"{LEGACY_DIR}/{ledger}" in bad.stderr and "corrupt" in bad.stderr, bad.stderr

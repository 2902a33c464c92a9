"""Compaction and vacuum of a local lake: fewer files, the same rows and offsets, bounded history."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from churn_platform.events.contract import EVENTS_TOPIC
from churn_platform.lake import maintenance, tables
from churn_platform.lake.store import Lake
from churn_platform.testing.lakes import ExtractLike, age, event_ids, orphan

RAW = tables.RAW_EVENTS


def offsets(lake: Lake) -> dict[int, int]:
    return tables.committed_offsets(lake, RAW, EVENTS_TOPIC)


def test_compaction_merges_the_partitions_of_many_small_files_and_keeps_rows_and_offsets(
    tmp_path,
):
    lake = Lake(tmp_path)
    extract = ExtractLike(lake)
    for _ in range(12):
        extract.round(days=2)  # 24 files in each of two days
    extract.round(days=3)  # the third day: 2 files, too few to compact
    before_version = tables.version(lake, RAW)
    before = tables.data_files(lake, RAW)

    done = maintenance.compact(lake, RAW)

    assert done.files_before == len(before) == 2 * 26 + 2
    compacted = {p.partition["event_date"]: p for p in done.partitions}
    assert set(compacted) == {"2026-01-01", "2026-01-02"}  # not 2026-01-03
    for p in compacted.values():
        assert (p.files_before, p.files_after, p.skipped) == (26, 1, "")
        assert p.bytes_after < p.bytes_before  # one file's overhead instead of 26
    assert done.files_after == len(tables.data_files(lake, RAW)) == 1 + 1 + 2
    assert event_ids(lake) == extract.expected_ids()
    assert offsets(lake) == extract.next
    # readers of the version before still read it (the files stay until vacuumed)
    assert event_ids(lake, before_version) == extract.expected_ids()
    # nothing left to do: one log read, no commit
    again = maintenance.compact(lake, RAW)
    assert again.partitions == () and again.files_after == again.files_before == 4
    assert tables.version(lake, RAW) == before_version + 2


def test_a_dry_run_changes_nothing(tmp_path):
    lake = Lake(tmp_path)
    extract = ExtractLike(lake)
    for _ in range(10):
        extract.round()
    left = orphan(lake, age_hours=3)
    version = tables.version(lake, RAW)
    [done] = maintenance.maintain(lake, [RAW], retention_hours=1, dry_run=True)
    assert [p.skipped for p in done.compaction.partitions] == ["dry run", "dry run"]
    assert done.vacuum.removed_files == 1 and done.vacuum.dry_run
    assert tables.version(lake, RAW) == version
    assert lake.exists(left)


def test_vacuum_removes_a_killed_writers_files_once_older_than_the_retention(tmp_path):
    lake = Lake(tmp_path)
    extract = ExtractLike(lake)
    for _ in range(10):
        extract.round()
    old_orphan = orphan(lake, age_hours=2)
    # written by an extract that is still running: young, not committed yet
    in_flight = extract.write_running(7)
    before_compaction = tables.version(lake, RAW)
    maintenance.compact(lake, RAW)
    replaced = [
        tables.file_path(RAW, f) for f in tables.data_files(lake, RAW, version=before_compaction)
    ]

    done = maintenance.vacuum(lake, RAW, retention_hours=1)

    assert done.removed_files == 1 and not lake.exists(old_orphan)
    assert lake.exists(tables.file_path(RAW, in_flight))
    # compaction's replaced files stay for the retention (from their removal): a reader
    # that started before the compaction reads on
    assert all(lake.exists(p) for p in replaced)
    assert event_ids(lake, before_compaction) == extract.expected_ids()
    # the running extract commits its file after the vacuum: visible, once
    extract.commit_running(in_flight, 7)
    assert event_ids(lake) == extract.expected_ids()
    assert offsets(lake) == extract.next


def test_log_cleanup_keeps_the_delta_log_bounded_and_the_offsets(tmp_path):
    lake = Lake(tmp_path)
    extract = ExtractLike(lake)
    for _ in range(30):
        extract.round(days=1)
    maintenance.vacuum(lake, RAW, retention_hours=1)  # the table now keeps logs 1 h
    configuration = tables.open_table(lake, RAW).metadata().configuration
    assert configuration["delta.logRetentionDuration"] == "interval 1 hours"
    log = Path(lake.path(RAW.log_dir))
    for entry in log.glob("*.json"):
        age(str(entry), 2)
    commits_before = len(list(log.glob("*.json")))
    extract.round(days=1)  # delta-rs may already clean up expired entries after a commit

    done = maintenance.vacuum(lake, RAW, retention_hours=1)

    assert commits_before > 30
    assert len(list(log.glob("*.json"))) <= 5 and done.log_files_after <= 10
    assert event_ids(lake) == extract.expected_ids()
    assert offsets(lake) == extract.next  # the checkpoint carries the txn offsets


@pytest.mark.parametrize(
    ("text", "named"),
    [("0", "CHURN_LAKE_RETENTION_HOURS='0'"), ("1.5", "'1.5'"), ("a week", "'a week'")],
)
def test_a_bad_retention_setting_is_refused_naming_it(text, named):
    with pytest.raises(ValueError, match="CHURN_LAKE_RETENTION_HOURS") as refused:
        maintenance.retention_from_env({"CHURN_LAKE_RETENTION_HOURS": text})
    message = str(refused.value)
    assert named in message and "168" in message and "\n" not in message
    assert maintenance.retention_from_env({}) == tables.DEFAULT_RETENTION_HOURS == 168
    assert maintenance.retention_from_env({"CHURN_LAKE_RETENTION_HOURS": " 24 "}) == 24


def test_a_retention_shorter_than_the_longest_run_is_refused():
    with pytest.raises(ValueError, match=r"shorter than the longest run \(5\.5 h\).*at least 6"):
        maintenance.check_retention(2, longest_run_hours=5.5)
    assert maintenance.check_retention(6, longest_run_hours=5.5) == 6


def test_appends_and_maintenance_commit_concurrently_without_losing_a_row(tmp_path):
    """An extract-like writer commits (with txn offsets) while compaction and vacuum loop."""
    lake = Lake(tmp_path)
    extract = ExtractLike(lake, partitions=3)
    extract.round()
    orphans = [orphan(lake, age_hours=2) for _ in range(3)]
    stop = threading.Event()
    failures: list[BaseException] = []
    observed: list[dict[int, int]] = []

    def append() -> None:
        try:
            while not stop.is_set():
                extract.round(days=2, per_file=5)
                observed.append(offsets(lake))
        except BaseException as exc:  # the assertion below reports it
            failures.append(exc)

    writer = threading.Thread(target=append)
    writer.start()
    compacted = vacuumed = 0
    deadline = time.monotonic() + 4
    try:
        while time.monotonic() < deadline and not failures:
            done = maintenance.compact(lake, RAW, min_small_files=2)
            compacted += sum(not p.skipped for p in done.partitions)
            vacuumed += maintenance.vacuum(lake, RAW, retention_hours=1).removed_files
    finally:
        stop.set()
        writer.join()
    assert failures == []
    assert compacted >= 3 and vacuumed == len(orphans)
    assert len(observed) >= 10  # the writer was not blocked
    assert event_ids(lake) == extract.expected_ids()  # every row exactly once
    assert offsets(lake) == extract.next
    # each commit's offsets were visible right after it, never rolled back by a compaction
    assert all(a[p] <= b[p] for a, b in zip(observed, observed[1:], strict=False) for p in a)

"""The lake's tables on an S3-compatible object store (moto's server on loopback).

The same operations as on a local disk: data files then one commit with the
extract's offsets, reads, replacing a partition, time travel, compaction,
vacuum, and concurrent committers from separate processes, each commit landing
(delta-rs makes a commit atomic with a conditional PUT: If-None-Match on the
commit file, which this server honours like S3).
"""

from __future__ import annotations

import subprocess
import sys
from datetime import date

import pyarrow as pa
import pytest

from churn_platform.events.contract import EVENTS_TOPIC
from churn_platform.lake import maintenance, tables
from churn_platform.lake.store import Lake
from churn_platform.testing.lakes import ExtractLike, event_ids, raw_rows
from churn_platform_tests.lake.s3 import environ_with

RAW = tables.RAW_EVENTS


def test_storage_options_reach_the_endpoint_over_plain_http(s3_lake_root, s3_server):
    options = tables.storage_options(Lake(s3_lake_root))
    assert options["AWS_ENDPOINT_URL"] == s3_server.endpoint
    assert options["AWS_ALLOW_HTTP"] == "true"
    assert options["AWS_CONDITIONAL_PUT"] == "etag"
    assert tables.storage_options(Lake("var/lake")) is None


def test_the_server_refuses_a_second_conditional_put_of_the_same_key(s3_lake_root, s3_server):
    """What atomic commits rely on: a second writer of version N's commit file is refused."""
    import botocore.exceptions

    client = s3_server.client()
    bucket = s3_lake_root.removeprefix("s3://").split("/")[0]
    client.put_object(Bucket=bucket, Key="probe.json", Body=b"1", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError, match="PreconditionFailed"):
        client.put_object(Bucket=bucket, Key="probe.json", Body=b"2", IfNoneMatch="*")


def test_commits_with_offsets_reads_replace_and_time_travel(s3_lake_root):
    lake = Lake(s3_lake_root)
    extract = ExtractLike(lake)
    for _ in range(3):
        extract.round()
    assert event_ids(lake) == extract.expected_ids()
    assert tables.committed_offsets(lake, RAW, EVENTS_TOPIC) == extract.next
    # a killed writer's file: on the store, referenced by no commit, read by no one
    tables.write_file(
        lake, RAW, raw_rows(7, 0, 5, date(2026, 1, 1)), {"event_date": date(2026, 1, 1)}
    )
    assert event_ids(lake) == extract.expected_ids()

    before = tables.version(lake, RAW)
    replacement = raw_rows(0, 1000, 3, date(2026, 1, 2))
    after = tables.write(lake, RAW, replacement, replace={"event_date": date(2026, 1, 2)})
    assert after == before + 1
    day_two = tables.read_arrow(lake, RAW, ["event_id"], where={"event_date": date(2026, 1, 2)})
    assert sorted(day_two.column("event_id").to_pylist()) == ["0-1000", "0-1001", "0-1002"]
    assert event_ids(lake, version=before) == extract.expected_ids()  # time travel
    assert tables.committed_offsets(lake, RAW, EVENTS_TOPIC) == extract.next  # kept by the replace


def test_compaction_and_vacuum_on_the_object_store(s3_lake_root):
    lake = Lake(s3_lake_root)
    extract = ExtractLike(lake)
    for _ in range(10):
        extract.round()
    in_flight = extract.write_running(4)
    before = tables.version(lake, RAW)

    [done] = maintenance.maintain(lake, [RAW], retention_hours=1)

    assert (done.compaction.files_before, done.compaction.files_after) == (40, 2)
    assert event_ids(lake) == extract.expected_ids()
    assert event_ids(lake, version=before) == extract.expected_ids()
    assert tables.committed_offsets(lake, RAW, EVENTS_TOPIC) == extract.next
    # the young uncommitted file (a running extract's) survived; it commits now
    assert done.vacuum.removed_files == 0
    assert lake.exists(tables.file_path(RAW, in_flight))
    extract.commit_running(in_flight, 4)
    assert event_ids(lake) == extract.expected_ids()
    # full vacuum finds files no commit references on this store (what removes a killed
    # writer's files once they are older than the retention; the store's clock cannot
    # be turned back here, so this one uses retention 0 directly)
    orphan = tables.write_file(
        lake, RAW, raw_rows(9, 0, 2, date(2026, 1, 1)), {"event_date": "2026-01-01"}
    )
    table = tables.open_table(lake, RAW)
    lite = table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=True)
    assert orphan.path not in lite  # the default mode never sees it
    full = table.vacuum(
        retention_hours=0, enforce_retention_duration=False, dry_run=True, full=True
    )
    assert orphan.path in full
    assert len(tables.open_table(lake, RAW).history()) > 0 and lake.list_files(RAW.log_dir)


COMMITTER = """
import sys
import pyarrow as pa
from churn_platform.lake import tables
from churn_platform.lake.store import Lake

lake, name, count = Lake(sys.argv[1]), sys.argv[2], int(sys.argv[3])
schema = pa.schema([("writer", pa.string()), ("n", pa.int64())])
print("ready", flush=True)
sys.stdin.readline()  # every committer starts at once
overtaken = 0  # commits another writer's commit came before, after this one read the table
for n in range(count):
    data_file = tables.write_file(lake, tables.TRAINING_SET, pa.table({"writer": [name], "n": [n]}, schema))
    read = tables.version(lake, tables.TRAINING_SET)
    landed = tables.commit(lake, tables.TRAINING_SET, [data_file], schema=schema, transactions={name: n + 1})
    overtaken += landed > read + 1
print(overtaken, flush=True)
"""


def test_concurrent_committers_in_separate_processes_all_land(s3_lake_root, s3_server):
    lake = Lake(s3_lake_root)
    schema = pa.schema([("writer", pa.string()), ("n", pa.int64())])
    tables.create(lake, tables.TRAINING_SET, schema)
    writers, count = ("a", "b", "c"), 8
    children = [
        subprocess.Popen(
            [sys.executable, "-c", COMMITTER, s3_lake_root, name, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ_with(s3_server),
        )
        for name in writers
    ]
    for child in children:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    overtaken = 0
    for child in children:
        printed, errors = child.communicate(timeout=120)
        assert child.returncode == 0, errors
        overtaken += int(printed.strip())

    table = tables.open_table(lake, tables.TRAINING_SET)
    assert table.version() == len(writers) * count  # version 0 created it: no commit lost
    found = tables.read_arrow(lake, tables.TRAINING_SET)
    assert sorted(zip(found["writer"].to_pylist(), found["n"].to_pylist(), strict=True)) == [
        (w, n) for w in writers for n in range(count)
    ]
    assert [table.transaction_version(w) for w in writers] == [count] * len(writers)
    # they overlapped: while one prepared a commit, the others committed
    assert overtaken > 0

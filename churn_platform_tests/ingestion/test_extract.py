"""The exactly-once extract against a real broker: rounds, crashes, caps, bad input."""

from __future__ import annotations

import random
from collections import Counter
from datetime import date, timedelta

import pyarrow as pa
import pytest

from churn_platform.events.contract import Reason
from churn_platform.ingestion.extract import (
    ExtractConfig,
    ExtractError,
    ExtractProgress,
    _by_day,
    extract_topic,
)
from churn_platform.lake import tables
from churn_platform.lake.raw import extracted_offsets, read_quarantine, read_raw_events
from churn_platform.lake.store import Lake, LakeError
from churn_platform.testing.topics import produce_round


@pytest.fixture
def lake(tmp_path) -> Lake:
    return Lake(tmp_path / "lake")


def test_rounds_extract_every_valid_event_exactly_once(kafka_settings, topic, lake):
    expected_ids: list[str] = []
    expected_bad: Counter[str] = Counter()
    for round_number in range(3):
        valid, bad = produce_round(kafka_settings, topic, seed=100 + round_number)
        expected_ids += valid
        expected_bad += bad
        result = extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
        assert result.rows == len(valid)
        assert result.rejected_by_reason == dict(sorted(bad.items()))

    # an extract with nothing new changes nothing
    again = extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    assert again.messages == 0 and again.files == []

    events = read_raw_events(lake, [topic])
    assert sorted(events["event_id"].to_list()) == sorted(expected_ids)
    assert events["event_id"].n_unique() == events.height
    assert events.select("_partition", "_offset").is_duplicated().sum() == 0
    quarantine = read_quarantine(lake, [topic])
    assert Counter(quarantine["reason"].to_list()) == expected_bad
    assert set(expected_bad) == set(Reason.ALL)  # the simulator injected every kind
    # every offset of every partition is accounted for, once
    offsets = (
        events.select("_partition", "_offset").rows()
        + quarantine.select("partition", "offset").rows()
    )
    assert len(offsets) == len(set(offsets)) == sum(extracted_offsets(lake, topic).values())
    # what a reader that knows nothing of this project sees: the same rows
    import polars as pl

    other = pl.read_delta(lake.url(tables.RAW_EVENTS.name))
    assert sorted(other["event_id"].to_list()) == sorted(expected_ids)
    assert pl.read_delta(lake.url(tables.QUARANTINE.name)).height == quarantine.height


@pytest.mark.parametrize("stage", ["files_written", "quarantine_committed"])
def test_crash_before_the_commit_then_rerun_is_still_exactly_once(
    kafka_settings, topic, lake, stage
):
    """Killed after the data files (or after the quarantine's commit, before the raw one)."""
    first, _ = produce_round(kafka_settings, topic, seed=7, bad_fraction=0.0)
    extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    offsets_before = extracted_offsets(lake, topic)
    files_before = len(tables.data_files(lake, tables.RAW_EVENTS))

    second, bad = produce_round(kafka_settings, topic, seed=8, bad_fraction=0.05)

    def crash(at: str) -> None:
        if at == stage:
            raise KeyboardInterrupt(f"simulated crash at {stage}")

    with pytest.raises(KeyboardInterrupt):
        extract_topic(kafka_settings, lake, ExtractConfig(topic=topic), fault_hook=crash)
    # the crashed run's files exist but no commit references them: nothing moved
    assert extracted_offsets(lake, topic) == offsets_before
    assert len(tables.data_files(lake, tables.RAW_EVENTS)) == files_before
    on_disk = [
        p for p in lake.list_files(tables.RAW_EVENTS.name, ".parquet") if "_delta_log" not in p
    ]
    assert len(on_disk) > files_before
    assert sorted(read_raw_events(lake, [topic])["event_id"].to_list()) == sorted(first)
    quarantined = read_quarantine(lake, [topic]).height
    assert quarantined == (sum(bad.values()) if stage == "quarantine_committed" else 0)

    # more data arrives before the rerun, so the rerun covers a different range
    third, _ = produce_round(kafka_settings, topic, seed=9, bad_fraction=0.0)
    extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    ids = read_raw_events(lake, [topic])["event_id"].to_list()
    assert sorted(ids) == sorted(first + second + third)
    quarantine = read_quarantine(lake, [topic])
    assert Counter(quarantine["reason"].to_list()) == bad  # once, whichever commit it was
    assert quarantine.select("partition", "offset").is_duplicated().sum() == 0


def test_crash_after_ledger_skips_nothing(kafka_settings, topic, lake):
    valid, _ = produce_round(kafka_settings, topic, seed=21, bad_fraction=0.0)

    def crash(stage: str) -> None:
        if stage == "committed":
            raise KeyboardInterrupt("crash before the consumer-group commit")

    with pytest.raises(KeyboardInterrupt):
        extract_topic(kafka_settings, lake, ExtractConfig(topic=topic), fault_hook=crash)
    rerun = extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    assert rerun.messages == 0
    assert sorted(read_raw_events(lake, [topic])["event_id"].to_list()) == sorted(valid)


def test_cap_per_partition_reads_in_steps(kafka_settings, topic, lake):
    valid, _ = produce_round(kafka_settings, topic, seed=31, bad_fraction=0.0)
    runs = 0
    while True:
        result = extract_topic(
            kafka_settings, lake, ExtractConfig(topic=topic, max_messages_per_partition=50)
        )
        runs += 1
        assert all(end - start <= 50 for start, end in result.offsets().values())
        if result.messages == 0:
            break
    assert runs > 2
    assert sorted(read_raw_events(lake, [topic])["event_id"].to_list()) == sorted(valid)


def test_two_worker_processes_give_the_same_lake(kafka_settings, topic, lake):
    valid, bad = produce_round(kafka_settings, topic, seed=41)
    result = extract_topic(kafka_settings, lake, ExtractConfig(topic=topic, workers=2))
    assert result.workers == 2
    assert sorted(read_raw_events(lake, [topic])["event_id"].to_list()) == sorted(valid)
    assert Counter(read_quarantine(lake, [topic])["reason"].to_list()) == bad


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_says_where_each_partition_is_while_it_reads(kafka_settings, topic, lake, workers):
    """Small chunks and no interval: a line per chunk, from the workers' shared positions."""
    for seed in (91, 92, 93):
        produce_round(kafka_settings, topic, seed=seed, bad_fraction=0.01)
    heard: list[ExtractProgress] = []
    result = extract_topic(
        kafka_settings,
        lake,
        ExtractConfig(topic=topic, workers=workers, chunk_size=100),
        progress=heard.append,
        progress_every_s=0,
    )
    assert result.workers == workers
    assert len(heard) >= result.messages // 100 / workers
    ends = {p: end for p, (_start, end) in result.offsets().items()}
    starts = {p: start for p, (start, _end) in result.offsets().items()}
    for earlier, later in zip(heard, heard[1:], strict=False):
        assert later.seconds >= earlier.seconds and later.messages >= earlier.messages
        assert all(later.positions[p] >= earlier.positions[p] for p in ends)
    assert all(starts[p] <= u.positions[p] <= ends[p] for u in heard for p in ends)
    # the last line, after every worker's last chunk: the whole run
    last = heard[-1]
    assert last.positions == ends
    assert last.messages == result.messages
    assert (last.rows, last.rejected) == (result.rows, result.rejected)
    line = last.describe()
    assert f"extract {topic}: {result.messages:,} messages" in line
    assert all(f"p{p} {end:,}" in line for p, end in ends.items()), line


def test_without_a_listener_or_within_the_interval_nothing_is_reported(kafka_settings, topic, lake):
    produce_round(kafka_settings, topic, seed=94, bad_fraction=0.0)
    heard: list[ExtractProgress] = []
    extract_topic(
        kafka_settings, lake, ExtractConfig(topic=topic, chunk_size=100), progress=heard.append
    )
    assert heard == []  # a run shorter than the interval (5 s) says nothing until its result


def test_lag_is_what_the_topic_holds_beyond_the_ledger_after_the_run(kafka_settings, topic, lake):
    # several rounds, each flushed: the embedded broker reports the last batch's base offset
    # as the high watermark, so one batch would show no lag at all
    for seed in (95, 96, 97, 98):
        produce_round(kafka_settings, topic, seed=seed, bad_fraction=0.0)
    capped = extract_topic(
        kafka_settings, lake, ExtractConfig(topic=topic, max_messages_per_partition=50)
    )
    lag = capped.lag
    assert set(lag) == {0, 1, 2}
    for p, (_start, end) in capped.offsets().items():
        assert lag[p] == max(0, capped.high_watermarks[p] - end)
    assert sum(lag.values()) > 0  # most of the topic is still to read
    assert capped.as_dict()["lag"] == {str(p): n for p, n in lag.items()}
    rest = extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    assert rest.messages >= sum(lag.values())  # the lag under-counts by at most the last batch
    assert rest.lag == {0: 0, 1: 0, 2: 0}


def test_group_offsets_mirror_the_lake(kafka_settings, topic, lake):
    from confluent_kafka import Consumer, TopicPartition

    produce_round(kafka_settings, topic, seed=51, bad_fraction=0.0)
    result = extract_topic(kafka_settings, lake, ExtractConfig(topic=topic, group_id="lag-check"))
    assert result.group_committed
    consumer = Consumer(kafka_settings.client_config(**{"group.id": "lag-check"}))
    try:
        committed = consumer.committed(
            [TopicPartition(topic, p) for p in result.offsets()], timeout=10
        )
    finally:
        consumer.close()
    assert {tp.partition: tp.offset for tp in committed} == extracted_offsets(lake, topic)


def test_dead_letter_topic_gets_the_rejects(kafka_settings, topic, lake):
    from churn_platform.kafka.admin import partitions_of
    from churn_platform.kafka.reader import OffsetRangeReader

    _, bad = produce_round(kafka_settings, topic, seed=61, bad_fraction=0.1)
    dlq = f"{topic}-dlq"
    extract_topic(kafka_settings, lake, ExtractConfig(topic=topic, dead_letter_topic=dlq))
    reader = OffsetRangeReader(
        kafka_settings, dlq, {p: 0 for p in partitions_of(kafka_settings, dlq)}
    )
    reasons = Counter()
    for chunk in reader.chunks():
        for message in chunk.messages:
            reasons[dict(message.headers())["reason"].decode()] += 1
    assert reasons == bad


def test_missing_topic_and_damaged_log_are_named(kafka_settings, topic, lake):
    with pytest.raises(ExtractError, match="does not exist"):
        extract_topic(kafka_settings, lake, ExtractConfig(topic=f"{topic}-missing"))
    produce_round(kafka_settings, topic, seed=41, bad_fraction=0.0)
    extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    log = tables.RAW_EVENTS.log_dir
    newest = sorted(lake.list_files(log, ".json"))[-1]
    lake.write_bytes(newest, b"{not json")
    with pytest.raises(LakeError, match="_delta_log") as refused:
        extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    assert "restore _delta_log" in str(refused.value)


def test_a_lost_log_is_refused_never_taken_for_a_new_table(kafka_settings, topic, lake, tmp_path):
    """Data files and no transaction log: committed history whose log was lost.

    Treating the table as new would read the topic again from offset 0 (losing
    what Kafka no longer holds) and leave the history to be vacuumed."""
    import shutil

    produce_round(kafka_settings, topic, seed=81)
    extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    produce_round(kafka_settings, topic, seed=82)
    extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    total = sum(extracted_offsets(lake, topic).values())
    files = sorted(lake.list_files("", ".parquet"))
    log = lake.path(tables.RAW_EVENTS.log_dir)
    shutil.move(log, tmp_path / "log-backup")
    with pytest.raises(LakeError, match="no transaction log") as refused:
        extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    assert lake.url(tables.RAW_EVENTS.log_dir) in str(refused.value)
    assert sorted(lake.list_files("", ".parquet")) == files  # nothing deleted or added
    # the log restored from a backup: the next run goes on where it was
    shutil.move(tmp_path / "log-backup", log)
    assert extract_topic(kafka_settings, lake, ExtractConfig(topic=topic)).messages == 0
    # a first run killed after writing files had created the (empty) table first:
    # its files are no one's rows, and the rerun reads everything once
    fresh = Lake(tmp_path / "fresh")

    def crash(stage: str) -> None:
        if stage == "files_written":
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        extract_topic(kafka_settings, fresh, ExtractConfig(topic=topic), fault_hook=crash)
    assert fresh.list_files(tables.RAW_EVENTS.name, ".parquet")
    again = extract_topic(kafka_settings, fresh, ExtractConfig(topic=topic))
    assert again.messages == total
    assert read_raw_events(fresh).height == read_raw_events(lake).height


def test_offsets_beyond_the_topic_are_an_error_not_a_silent_skip(kafka_settings, topic, lake):
    from churn_platform.events.contract import RAW_EVENTS_SCHEMA

    produce_round(kafka_settings, topic, seed=71, bad_fraction=0.0)
    tables.create(lake, tables.RAW_EVENTS, RAW_EVENTS_SCHEMA)
    tables.commit(
        lake,
        tables.RAW_EVENTS,
        [],
        schema=RAW_EVENTS_SCHEMA,
        transactions={
            tables.offsets_app_id(topic, p): o for p, o in {0: 10_000_000, 1: 0, 2: 0}.items()
        },
    )
    with pytest.raises(ExtractError, match="reset-offsets"):
        extract_topic(kafka_settings, lake, ExtractConfig(topic=topic, stall_timeout=2))


@pytest.mark.parametrize(
    "arrival", ["in runs of a day", "in runs, two offsets swapped", "in offset order", "shuffled"]
)
def test_rows_are_grouped_into_a_file_per_day_in_partition_and_offset_order(arrival):
    """The flush's one-key stable sort (or the slices of its runs, when they are long) gives
    what sorting on the three columns gives, and falls back to that sort when rows of a
    partition did not arrive in offset order; each event day is one file, with each
    partition's offset range and rows."""
    rng = random.Random(16)
    start = date(2026, 9, 1)
    if arrival.startswith("in runs"):  # a backlog: each partition's events in time order
        rows = [
            (p, start + timedelta(days=offset // 150), offset)
            for block in range(0, 600, 200)
            for p in (2, 0, 5)  # a fetch brings one partition's block, then the next
            for offset in range(block, block + 200)
        ]
    else:
        rows = [
            (p, start + timedelta(days=rng.randrange(5)), offset)
            for offset in range(300)
            for p in (2, 0, 5)  # partitions interleave, as chunks of several partitions do
        ]
    if arrival == "shuffled":
        rng.shuffle(rows)
    if arrival == "in runs, two offsets swapped":  # not expected of Kafka; sorted all the same
        rows[10], rows[11] = rows[11], rows[10]
    table = pa.table(
        {
            "_partition": pa.array([r[0] for r in rows], pa.int32()),
            "event_date": pa.array([r[1] for r in rows], pa.date32()),
            "_offset": pa.array([r[2] for r in rows], pa.int64()),
            "row": pa.array(range(len(rows)), pa.int64()),
        }
    )
    ordered, groups = _by_day(table)
    sliced = ordered.column("row").num_chunks > 1  # runs sliced, not taken
    assert sliced == (arrival == "in runs of a day")
    keys = ["event_date", "_partition", "_offset"]
    assert ordered.equals(table.sort_by([(k, "ascending") for k in keys]))
    assert [g.day for g in groups] == sorted({day for _, day, _ in rows})
    assert sum(g.rows for g in groups) == len(rows)
    for group in groups:
        piece = ordered.slice(group.start, group.rows)
        assert set(piece.column("event_date").to_pylist()) == {group.day}
        assert sorted(group.offsets) == sorted(set(piece.column("_partition").to_pylist()))
        for p, (first, last, count) in group.offsets.items():
            offsets = [
                o
                for q, o in zip(
                    piece["_partition"].to_pylist(), piece["_offset"].to_pylist(), strict=True
                )
                if q == p
            ]
            assert (first, last, count) == (offsets[0], offsets[-1], len(offsets))
            assert offsets == sorted(offsets)


def test_a_run_writes_one_raw_file_per_event_day_whatever_partitions_it_read(
    kafka_settings, topic, lake
):
    """A live extract reads a few seconds of every partition: its rows of a day are one file
    (a file per partition and day made the lake's small files several times as many)."""
    produce_round(kafka_settings, topic, seed=41, bad_fraction=0.0)
    result = extract_topic(kafka_settings, lake, ExtractConfig(topic=topic, workers=1))
    events = read_raw_events(lake, [topic])
    days = events["event_date"].n_unique()
    assert events["_partition"].n_unique() > 1
    assert len(result.files) == days == len(set(result.files))
    assert result.rows == events.height == sum(o.rows for o in result.partitions.values())
    assert {p: o.rows for p, o in result.partitions.items()} == dict(
        events.group_by("_partition").len().rows()
    )


def test_large_messages_flush_by_bytes_and_every_row_lands_once(kafka_settings, topic, tmp_path):
    """The rows a worker buffers are bounded by their bytes, not only by their count:
    a team's events with large attributes must not hold flush_rows of them in memory."""
    import json
    import time

    from churn_platform.kafka.producer import EventProducer

    now_ms = time.time_ns() // 1_000_000
    with EventProducer(kafka_settings) as producer:
        for i in range(600):
            event = {
                "event_id": f"big-{i}",
                "customer_id": f"c{i % 37}",
                "event_type": "page_view",
                "ts": now_ms - i,
                "attributes": {"note": "x" * 1000, "more": "y" * 1000, "rest": "z" * 1000},
            }
            producer.send(topic, json.dumps(event).encode(), f"c{i % 37}")
    small = ExtractConfig(
        topic=topic, workers=1, chunk_size=50, flush_rows=10**6, flush_bytes=256 * 1024
    )
    by_bytes = extract_topic(kafka_settings, Lake(tmp_path / "by-bytes"), small)
    whole = extract_topic(
        kafka_settings, Lake(tmp_path / "default"), ExtractConfig(topic=topic, workers=1)
    )
    days = {part for f in whole.files for part in f.split("/") if part.startswith("event_date=")}
    assert days  # one or two (a run across midnight), each one file in one flush
    # ~3 KB a row: 256 KiB is ~85 rows, so 600 rows make several flushes a day
    assert len(by_bytes.files) >= 4 * len(days)
    assert len(whole.files) == len(days)
    for lake_dir in ("by-bytes", "default"):
        events = read_raw_events(Lake(tmp_path / lake_dir), [topic])
        assert sorted(events["event_id"].to_list()) == sorted(f"big-{i}" for i in range(600))


@pytest.mark.parametrize(
    "field, value",
    [("flush_bytes", 0), ("flush_rows", 0), ("chunk_size", 1.5), ("workers", 0)],
)
def test_a_bad_extract_setting_is_named(field, value):
    with pytest.raises(ValueError, match=f"extract setting {field} must be an integer >= 1"):
        ExtractConfig(**{field: value})


_WORKER_EXIT = """
import atexit, sys
from pathlib import Path
from churn_platform.ingestion import extract
atexit.register(lambda: Path(sys.argv[1]).write_text("torn down"))
extract._init_worker(None)
extract._worker_done = sys.argv[2] == "done"
sys.exit(3)
"""


@pytest.mark.parametrize("done", [True, False])
def test_a_worker_skips_its_teardown_only_once_its_job_returned(tmp_path, done):
    """A finished worker exits 0 before the interpreter's teardown; a failed one exits as it would."""
    import subprocess
    import sys

    marker = tmp_path / "teardown"
    state = "done" if done else "failed"
    ended = subprocess.run([sys.executable, "-c", _WORKER_EXIT, str(marker), state], timeout=60)
    assert ended.returncode == (0 if done else 3)
    assert marker.exists() is not done


def test_only_a_job_that_returned_marks_its_worker_done(monkeypatch):
    from churn_platform.ingestion import extract

    def fail(*args, **kwargs):
        raise RuntimeError("the broker went away")

    monkeypatch.setattr(extract, "_worker_done", False)
    monkeypatch.setattr(extract, "extract_partitions", fail)
    with pytest.raises(RuntimeError):
        extract._extract_job((), 1)
    assert extract._worker_done is False
    monkeypatch.setattr(extract, "extract_partitions", lambda *args, **kwargs: {})
    assert extract._extract_job((), 1) == {}
    assert extract._worker_done is True

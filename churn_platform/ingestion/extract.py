"""The exactly-once extract: Kafka offset ranges → the raw event and quarantine tables.

1. read how far each partition is extracted: the raw table's commits record it
   (a Delta application transaction per topic partition, `lake.raw`);
2. read every partition with `assign()` from there to partition EOF (or a cap),
   validate in chunks, buffer valid rows and rejects in bounded memory;
3. write the data files (nobody references them yet), then commit them with
   the partitions' new offsets in one atomic commit per table: the commit point;
4. then commit the same offsets to the consumer group, for standard lag tools.

A crash before step 3's commit leaves files no commit references (readers never
see them; `lake maintain` vacuums them); a crash after it skips nothing.
Partitions are split across worker processes when the backlog is large
(validation is CPU-bound Python; two cores read faster than one).

While it runs, `progress` hears at most every few seconds how far each
partition is (workers write their positions to shared memory after each chunk;
the calling process reports them). After the run, the result holds the lag:
what the topic holds beyond the lake, from the high watermarks the broker
reports (the embedded broker reports the last batch's base offset, so there
the lag under-counts by up to that batch).
"""

from __future__ import annotations

import atexit
import gc
import multiprocessing
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import wait as wait_for_futures
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import pyarrow as pa

from churn_platform.cores import available_cores
from churn_platform.events.contract import (
    DEFAULT_MAX_MESSAGE_BYTES,
    EVENTS_TOPIC,
    QuarantineRow,
    quarantine_table,
)
from churn_platform.events.validation import now_ms, validate_batch
from churn_platform.kafka.admin import ensure_topic, partitions_of
from churn_platform.kafka.config import KafkaSettings
from churn_platform.kafka.producer import EventProducer
from churn_platform.kafka.reader import Chunk, OffsetRangeReader, ReadError, fast_consumer
from churn_platform.lake import raw as raw_table
from churn_platform.lake import tables
from churn_platform.lake.store import Lake
from churn_platform.lake.tables import DataFile

# Below this backlog one process is faster than paying for worker start-up.
PARALLEL_BACKLOG = 400_000
# at most one progress line this often (a run shorter than this prints none)
PROGRESS_EVERY_S = 5.0


class ExtractError(RuntimeError):
    """The extract could not run; nothing was committed."""


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract and how; every field has a default that suits the demo."""

    topic: str = EVENTS_TOPIC
    group_id: str = "churn-platform-extract"
    max_messages_per_partition: int | None = None
    workers: int | None = None  # None: one, or one per core when the backlog is large
    # Small chunks keep the freshly allocated objects in cache and memory reused:
    # 20k read+validated faster than 100k, with less system time (docs/benchmarks.md).
    chunk_size: int = 20_000
    # What a flush writes, whichever bound comes first: rows, or their Arrow bytes
    # (one raw row is ~120 bytes for a ~140-byte JSON event, so the rows bind first
    # on such events; the bytes keep a worker's memory bounded when messages are
    # large). With at most one flush in flight a worker holds about two flushes'
    # worth. A flush writes a file per event day it holds, and each file costs
    # ~1 ms of CPU whatever its rows: 1M rows instead of 250k made a 2M backlog
    # 182 files instead of 508 and the extract 9% faster, for ~100 MiB more at
    # its peak per worker (~390 MiB; docs/benchmarks.md, Extract).
    flush_rows: int = 1_000_000
    flush_bytes: int = 128 * 2**20
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    dead_letter_topic: str | None = None
    stall_timeout: float = 30.0

    @classmethod
    def with_overrides(cls, **settings: object) -> ExtractConfig:
        """The defaults, with every setting given that is not None (a CLI flag, a run config)."""
        return cls(**{k: v for k, v in settings.items() if v is not None})

    def __post_init__(self) -> None:
        checks = [
            ("max_messages_per_partition", self.max_messages_per_partition, 1, True),
            ("workers", self.workers, 1, True),
            ("chunk_size", self.chunk_size, 1, False),
            ("flush_rows", self.flush_rows, 1, False),
            ("flush_bytes", self.flush_bytes, 1, False),
            ("max_message_bytes", self.max_message_bytes, 1, False),
        ]
        for name, value, minimum, optional in checks:
            if value is None and optional:
                continue
            if not isinstance(value, int) or value < minimum:
                raise ValueError(
                    f"extract setting {name} must be an integer >= {minimum}, got {value!r}"
                )
        if not self.topic:
            raise ValueError("extract setting topic must not be empty")


@dataclass
class PartitionOutcome:
    """What one partition contributed to a run.

    A raw data file holds one event day of the partitions one worker read, so
    `files`, `bytes` and `raw_files` count each file once, under the lowest
    partition in it; `rows` counts this partition's own rows.
    """

    partition: int
    start: int
    end: int  # next offset to read
    rows: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    raw_files: list[DataFile] = field(default_factory=list)
    quarantine_files: list[DataFile] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return self.end - self.start


def lag_behind(highs: dict[int, int], next_offsets: Mapping[int, int]) -> dict[int, int]:
    """partition → messages the topic holds beyond `next_offsets` (the lake's, or a run's ends).

    From reported high watermarks (negative: not reported, left out): the embedded
    broker reports the last batch's base offset, so there this under-counts by up to
    that batch, never below 0.
    """
    return {
        p: max(0, high - next_offsets.get(p, 0)) for p, high in sorted(highs.items()) if high >= 0
    }


def format_lag(lag: dict[int, int]) -> str:
    """`p0=120, p1=0`; "unknown" when the broker did not report."""
    return ", ".join(f"p{p}={n}" for p, n in sorted(lag.items())) or "unknown"


@dataclass(frozen=True)
class ExtractProgress:
    """How far a running extract is: what `extract_topic(progress=...)` hears."""

    topic: str
    seconds: float
    messages: int
    rows: int
    rejected: int
    positions: dict[int, int]  # partition → next offset to read
    high_watermarks: dict[int, int]  # reported before the run: a hint of where it ends

    def describe(self) -> str:
        """One line: messages and rows per second, and each partition's position."""
        seconds = max(self.seconds, 1e-9)
        where = ", ".join(
            f"p{p} {offset:,}"
            # a snapshot from before the run, and on the embedded broker one batch short
            + (f"/≈{self.high_watermarks[p]:,}" if self.high_watermarks.get(p, -1) > 0 else "")
            for p, offset in sorted(self.positions.items())
        )
        return (
            f"extract {self.topic}: {self.messages:,} messages in {self.seconds:.0f} s "
            f"({self.messages / seconds:,.0f}/s), {self.rows:,} rows ({self.rows / seconds:,.0f} "
            f"rows/s), {self.rejected:,} quarantined; next offset/high watermark {where}"
        )


@dataclass
class ExtractResult:
    topic: str
    run_id: str
    partitions: dict[int, PartitionOutcome]
    seconds: float
    workers: int
    group_committed: bool = False
    group_commit_error: str | None = None
    # reported by the broker after the run; empty when it did not answer
    high_watermarks: dict[int, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions.values())

    @property
    def messages(self) -> int:
        return sum(p.messages for p in self.partitions.values())

    @property
    def rejected_by_reason(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for p in self.partitions.values():
            total.update(p.rejected)
        return dict(sorted(total.items()))

    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def files(self) -> list[str]:
        return sorted(f for p in self.partitions.values() for f in p.files)

    @property
    def bytes(self) -> int:
        return sum(p.bytes for p in self.partitions.values())

    @property
    def messages_per_second(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    @property
    def rejected_rate(self) -> float:
        return self.rejected / self.messages if self.messages else 0.0

    @property
    def lag(self) -> dict[int, int]:
        """partition → messages the topic holds beyond the lake, after this run.

        From the reported high watermark: the embedded broker reports the last
        batch's base offset, so there it under-counts by up to that batch
        (never below 0). Empty when the broker did not report.
        """
        ends = {p: o.end for p, o in self.partitions.items()}
        return lag_behind({p: h for p, h in self.high_watermarks.items() if p in ends}, ends)

    def offsets(self) -> dict[int, tuple[int, int]]:
        """partition → (start, end) offsets of this run."""
        return {p: (o.start, o.end) for p, o in sorted(self.partitions.items())}

    def as_dict(self) -> dict:
        return {
            "topic": self.topic,
            "run_id": self.run_id,
            "messages": self.messages,
            "rows": self.rows,
            "rejected": self.rejected,
            "rejected_by_reason": self.rejected_by_reason,
            "rejected_rate": self.rejected_rate,
            "files": len(self.files),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
            "messages_per_second": round(self.messages_per_second, 1),
            "workers": self.workers,
            "group_committed": self.group_committed,
            "offsets": {str(p): {"start": s, "end": e} for p, (s, e) in self.offsets().items()},
            "lag": {str(p): n for p, n in self.lag.items()},
        }


def extract_topic(
    settings: KafkaSettings,
    lake: Lake,
    config: ExtractConfig | None = None,
    *,
    run_id: str | None = None,
    fault_hook: Callable[[str], None] | None = None,
    progress: Callable[[ExtractProgress], None] | None = None,
    progress_every_s: float = PROGRESS_EVERY_S,
) -> ExtractResult:
    """Extract everything new in `config.topic` into `lake`, exactly once.

    `progress` is called in this process (this thread) at most every
    `progress_every_s` while partitions are read. `fault_hook(stage)` is called
    at "files_written" and "committed"; tests raise from it to prove a
    crash at either point loses and duplicates nothing.
    """
    config = config or ExtractConfig()
    run_id = run_id or uuid.uuid4().hex[:12]
    started = time.perf_counter()
    try:
        partitions = partitions_of(settings, config.topic)
    except KeyError as exc:
        raise ExtractError(
            f"topic {config.topic!r} does not exist on {settings.bootstrap_servers}: produce "
            "events first (`churn-platform simulate`) or set the topic name"
        ) from exc
    if config.dead_letter_topic:
        ensure_topic(settings, config.dead_letter_topic, partitions=len(partitions))
    raw_table.ensure_tables(lake)  # before any data file: files without a log are refused
    # temporary files of a killed run (extracts of a lake run one at a time); its
    # finished data files no commit references stay invisible until vacuumed
    for spec in (tables.RAW_EVENTS, tables.QUARANTINE):
        for path in lake.temp_files(spec.name):
            lake.remove(path)
    starts = raw_table.extracted_offsets(lake, config.topic, partitions)
    quarantined = raw_table.quarantined_offsets(lake, config.topic, partitions)
    skip = {p: q for p, q in quarantined.items() if q > starts[p]}

    highs = _high_watermarks(settings, config, starts)
    backlog = sum(_pending(config, starts[p], high) for p, high in highs.items())
    workers = _worker_count(config, len(partitions), backlog)
    reporter = _Reporter(config.topic, starts, highs, workers, progress, progress_every_s)
    try:
        outcomes = _run_workers(settings, lake, config, starts, workers, reporter, skip)
    except ReadError as exc:
        beyond = {p: (starts[p], h) for p, h in highs.items() if starts[p] > h}
        hint = ""
        if beyond:
            hint = (
                " The lake is past what Kafka reports for partitions "
                + ", ".join(f"{p} (lake {s}, high watermark {h})" for p, (s, h) in beyond.items())
                + ": if the topic was recreated (the embedded broker starts empty), reset with "
                "`churn-platform extract --reset-offsets`."
            )
        raise ExtractError(f"{exc}{hint}") from exc

    if fault_hook:
        fault_hook("files_written")
    ends = {p: o.end for p, o in outcomes.items()}
    raw_table.commit_extract(
        lake,
        config.topic,
        starts,
        ends,
        [f for o in outcomes.values() for f in o.raw_files],
        [f for o in outcomes.values() for f in o.quarantine_files],
        run_id=run_id,
        fault_hook=fault_hook,
    )
    if fault_hook:
        fault_hook("committed")
    result = ExtractResult(
        topic=config.topic,
        run_id=run_id,
        partitions=outcomes,
        seconds=time.perf_counter() - started,
        workers=workers,
    )
    _commit_group(settings, config, ends, result)
    # what arrived while this run read, or beyond its cap: the next run's backlog
    result.high_watermarks = _high_watermarks(settings, config, ends)
    return result


def _high_watermarks(
    settings: KafkaSettings, config: ExtractConfig, starts: dict[int, int]
) -> dict[int, int]:
    """Reported high watermarks: a sizing hint and a diagnosis, never the read's end.

    The embedded broker reports them from the last batch's base offset.
    """
    from confluent_kafka import TopicPartition

    consumer = fast_consumer(settings, config.group_id)
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(config.topic, p), timeout=10)[1]
            for p in starts
        }
    except Exception:  # only a hint; the read itself reports real failures
        return {}
    finally:
        consumer.close()


def _pending(config: ExtractConfig, start: int, high: int) -> int:
    pending = max(0, high - start)
    if config.max_messages_per_partition is not None:
        pending = min(pending, config.max_messages_per_partition)
    return pending


def _worker_count(config: ExtractConfig, n_partitions: int, backlog: int) -> int:
    if config.workers is not None:
        return max(1, min(config.workers, n_partitions))
    if backlog < PARALLEL_BACKLOG:
        return 1
    return max(1, min(available_cores(), n_partitions))


def _run_workers(
    settings: KafkaSettings,
    lake: Lake,
    config: ExtractConfig,
    starts: dict[int, int],
    workers: int,
    reporter: _Reporter,
    skip: dict[int, int] | None = None,
) -> dict[int, PartitionOutcome]:
    ordered = sorted(starts)
    shares = [ordered[i::workers] for i in range(workers)]
    skip = skip or {}
    jobs = [
        (
            settings,
            lake.uri,
            config,
            {p: starts[p] for p in share},
            {p: skip[p] for p in share if p in skip},
        )
        for share in shares
        if share
    ]
    outcomes: dict[int, PartitionOutcome] = {}
    board = reporter.board
    if len(jobs) <= 1:
        for job in jobs:
            outcomes.update(extract_partitions(*job, board=board, on_chunk=reporter.tick))
        return outcomes
    # The children are spawned, not forked (librdkafka threads must not be
    # forked); while they start, this process already works on its own share.
    # They write their progress to `board` (shared memory), this process reports it.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=len(jobs) - 1,
        mp_context=context,
        initializer=_init_worker,
        initargs=(board,),
    ) as pool:
        children = [
            pool.submit(_extract_job, job, worker) for worker, job in enumerate(jobs) if worker
        ]
        outcomes.update(extract_partitions(*jobs[0], board=board, on_chunk=reporter.tick))
        running = set(children)
        while running:
            _done, running = wait_for_futures(
                running, timeout=max(reporter.every_s, 0.1), return_when=FIRST_COMPLETED
            )
            reporter.tick()
        for child in children:
            outcomes.update(child.result())
    return outcomes


_worker_board: _Board | None = None  # in a worker process: where its progress goes
_worker_done = False  # in a worker process: its job returned (its files are written)


def _init_worker(board: _Board) -> None:
    global _worker_board
    _worker_board = board
    atexit.register(_exit_when_done)


def _extract_job(job: tuple, worker: int) -> dict[int, PartitionOutcome]:
    global _worker_done
    outcome = extract_partitions(*job, board=_worker_board, worker=worker)
    _worker_done = True
    return outcome


def _exit_when_done() -> None:
    """A worker whose job returned skips the interpreter's teardown when the pool stops it.

    By then its files are written and fsynced, its clients closed and its
    result sent; freeing every module and object one by one (and a last
    collection) took ~0.1 s of CPU that the parent waited for before its
    commit (docs/benchmarks.md, Extract). A worker whose job failed exits
    the normal way, with its exit code.
    """
    if _worker_done:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def extract_partitions(
    settings: KafkaSettings,
    lake_uri: str,
    config: ExtractConfig,
    starts: dict[int, int],
    skip_rejects_below: dict[int, int] | None = None,
    *,
    board: _Board | None = None,
    worker: int = 0,
    on_chunk: Callable[[], None] | None = None,
) -> dict[int, PartitionOutcome]:
    """Read `starts`' partitions to EOF and write their data files; the commit is the caller's.

    Rejects below `skip_rejects_below[p]` are already in the quarantine table
    (a run that crashed between the quarantine's commit and the raw table's).
    After each chunk its progress goes to `board` (slot `worker`) and
    `on_chunk` is called: a few assignments per 20k messages.
    """
    lake = Lake(lake_uri)
    reader = OffsetRangeReader(
        settings,
        config.topic,
        starts,
        group_id=config.group_id,
        max_per_partition=config.max_messages_per_partition,
        chunk_size=config.chunk_size,
        stall_timeout=config.stall_timeout,
    )
    sink = _Sink(
        lake,
        config.topic,
        {p: PartitionOutcome(p, s, s) for p, s in starts.items()},
        EventProducer(settings) if config.dead_letter_topic else None,
        config.dead_letter_topic,
        skip_rejects_below,
    )
    now = now_ms()
    with _gc_paused():
        try:
            for chunk in reader.chunks():
                sink.add(chunk, config.max_message_bytes, now)
                if (
                    sink.buffered_rows >= config.flush_rows
                    or sink.buffered_bytes >= config.flush_bytes
                ):
                    sink.flush()
                if board is not None:
                    board.record(worker, reader.next_offsets, sink.rows_added, sink.rejects_added)
                if on_chunk is not None:
                    on_chunk()
            sink.close()
        except BaseException:
            sink.abort()
            raise
    for p, outcome in sink.outcomes.items():
        outcome.end = reader.next_offsets[p]
    return sink.outcomes


class _Board:
    """A run's progress, one slot per partition (next offset) and per worker (rows, rejects).

    Each slot has one writer. With worker processes it lives in shared memory
    (passed to them when they are spawned); readers may see a chunk's worth late.
    """

    def __init__(self, starts: dict[int, int], workers: int, shared: bool) -> None:
        self.partitions = sorted(starts)
        self.slots = {p: i for i, p in enumerate(self.partitions)}
        size = len(self.partitions) + 2 * workers
        if shared:
            self.values = multiprocessing.get_context("spawn").RawArray("q", size)
        else:
            self.values = [0] * size
        for p, offset in starts.items():
            self.values[self.slots[p]] = offset
        self.workers = workers

    def record(self, worker: int, positions: dict[int, int], rows: int, rejected: int) -> None:
        values, slots = self.values, self.slots
        for p, offset in positions.items():
            values[slots[p]] = offset
        base = len(self.partitions) + 2 * worker
        values[base], values[base + 1] = rows, rejected

    def read(self) -> tuple[dict[int, int], int, int]:
        """(partition → next offset, rows, rejected) as last recorded."""
        values = list(self.values)
        n = len(self.partitions)
        counts = values[n:]
        return (
            dict(zip(self.partitions, values[:n], strict=True)),
            sum(counts[::2]),
            sum(counts[1::2]),
        )


class _Reporter:
    """Calls `progress` with what the board says, at most every `every_s` (in this process)."""

    def __init__(
        self,
        topic: str,
        starts: dict[int, int],
        highs: dict[int, int],
        workers: int,
        progress: Callable[[ExtractProgress], None] | None,
        every_s: float,
    ) -> None:
        self.topic, self.starts, self.highs = topic, starts, highs
        self.progress, self.every_s = progress, every_s
        self.board = _Board(starts, workers, shared=workers > 1) if progress else None
        self.started = time.monotonic()
        self._due = self.started + every_s

    def tick(self) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if now < self._due:
            return
        self._due = now + self.every_s
        positions, rows, rejected = self.board.read()
        self.progress(
            ExtractProgress(
                topic=self.topic,
                seconds=now - self.started,
                messages=sum(positions[p] - s for p, s in self.starts.items()),
                rows=rows,
                rejected=rejected,
                positions=positions,
                high_watermarks=self.highs,
            )
        )


@contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector while reading.

    A chunk keeps ~100k Message objects and decoded events alive; every
    collection the allocations trigger walks all of them, which halved the
    reader's speed. Nothing here forms reference cycles, so plain reference
    counting frees it all; the collector resumes (and catches up) afterwards.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True)
class _DayGroup:
    """The rows of one event day in a flush: one raw data file."""

    day: date
    start: int  # first row in the ordered table
    rows: int
    offsets: dict[int, tuple[int, int, int]]  # partition → (first offset, last offset, rows)


# Below this many rows a run on average, a flush is reordered by a sort and a take.
_MIN_MEAN_RUN_ROWS = 64


def _runs_in_key_order(key: np.ndarray) -> list[tuple[int, int]] | None:
    """The (start, end) runs of equal `key` in arrival order, sorted by key then arrival.

    A partition's events mostly arrive in time order, so a flush's rows come
    in long runs of one (day, partition); None when the runs are too short
    for slicing them to beat a take.
    """
    breaks = np.flatnonzero(key[1:] != key[:-1]) + 1
    if (len(breaks) + 1) * _MIN_MEAN_RUN_ROWS > len(key):
        return None
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [len(key)]))
    by_key = np.lexsort((starts, key[starts]))
    return list(zip(starts[by_key].tolist(), ends[by_key].tolist(), strict=True))


def _by_day(table: pa.Table) -> tuple[pa.Table, list[_DayGroup]]:
    """`table`'s rows ordered by (event date, partition, offset), and its files' groups.

    A partition's messages arrive in offset order, so a stable sort on one
    integer key (day, partition) orders them by offset within each partition:
    cheaper than sorting on the three columns (a check falls back to that).
    """
    partitions = table.column("_partition").to_numpy().astype(np.int64)
    days = table.column("event_date").cast(pa.int32()).to_numpy().astype(np.int64)
    offsets = table.column("_offset").to_numpy()
    low_part = partitions.min()
    group_key = (days - days.min()) * (partitions.max() - low_part + 1) + (partitions - low_part)
    runs = _runs_in_key_order(group_key)
    if runs is None:
        order = np.argsort(group_key, kind="stable")
    else:  # the same order as the stable sort, from the runs
        order = np.concatenate([np.arange(start, end) for start, end in runs])
    key, in_order = group_key[order], offsets[order]
    same = key[1:] == key[:-1]
    if (in_order[1:][same] <= in_order[:-1][same]).any():  # not expected
        runs = None
        order = np.lexsort((offsets, group_key))
        key, in_order = group_key[order], offsets[order]
    if runs is None:
        table = table.take(pa.array(order))
    else:  # slices of the table, no copy (a take of every column was most of this function)
        table = pa.concat_tables([table.slice(start, end - start) for start, end in runs])
    day_of, part_of = days[order], partitions[order]
    # runs of one (day, partition); a day's file is its consecutive runs
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1]))).tolist()
    ends = starts[1:] + [len(key)]
    by_day: dict[int, list[tuple[int, int]]] = {}
    for start, end in zip(starts, ends, strict=True):
        by_day.setdefault(int(day_of[start]), []).append((start, end))
    day_column = table.column("event_date")
    groups = []
    for day_runs in by_day.values():
        first_row, last_row = day_runs[0][0], day_runs[-1][1]
        spans = {
            int(part_of[start]): (int(in_order[start]), int(in_order[end - 1]), end - start)
            for start, end in day_runs
        }
        groups.append(
            _DayGroup(day_column[first_row].as_py(), first_row, last_row - first_row, spans)
        )
    return table, groups


class _Sink:
    """Buffers validated rows and rejects; `flush` writes them as range files.

    Files are written by a small thread pool while the reader goes on: Parquet
    encoding, compression and fsync release the GIL. At most one flush is in
    flight, which bounds memory at about two flushes' worth of rows.
    """

    def __init__(
        self,
        lake: Lake,
        topic: str,
        outcomes: dict[int, PartitionOutcome],
        dead_letters: EventProducer | None = None,
        dead_letter_topic: str | None = None,
        skip_rejects_below: dict[int, int] | None = None,
    ) -> None:
        self.lake = lake
        self.skip_rejects_below = skip_rejects_below or {}
        self.topic = topic
        self.outcomes = outcomes
        self.tables: list[pa.Table] = []
        self.rejects: list[QuarantineRow] = []
        self.buffered_rows = 0
        self.buffered_bytes = 0  # the buffered rows' Arrow bytes and the rejects' values
        self.rows_added = 0  # valid rows and rejects seen so far (for progress)
        self.rejects_added = 0
        self.dead_letters = dead_letters
        self.dead_letter_topic = dead_letter_topic
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lake-writer")
        # (write in flight, what it writes: owning partition, rows per partition, rejects)
        self._pending: list[
            tuple[Future, tuple[tables.TableSpec, int, dict[int, int], Counter]]
        ] = []

    def add(self, chunk: Chunk, max_bytes: int, now: int) -> None:
        batch = validate_batch(chunk.values, now=now, max_bytes=max_bytes)
        if batch.events.num_rows:
            partitions = pa.array(chunk.partitions, pa.int32())
            offsets = pa.array(chunk.offsets, pa.int64())
            if batch.rejects:  # otherwise every message is a row, in order
                partitions = partitions.take(batch.indices)
                offsets = offsets.take(batch.indices)
            n = batch.events.num_rows
            table = (
                batch.events.append_column("_topic", pa.repeat(pa.scalar(self.topic), n))
                .append_column("_partition", partitions)
                .append_column("_offset", offsets)
            )
            self.tables.append(table)
            self.buffered_rows += n
            self.buffered_bytes += table.nbytes
            self.rows_added += n
        for reject in batch.rejects:
            position = reject.position
            partition, offset = int(chunk.partitions[position]), int(chunk.offsets[position])
            if offset < self.skip_rejects_below.get(partition, 0):
                continue  # committed to the quarantine by a run that crashed before its raw commit
            self.rejects.append(
                QuarantineRow(
                    topic=self.topic,
                    partition=partition,
                    offset=offset,
                    key=chunk.messages[position].key(),
                    value=chunk.values[position],
                    reason=reject.reason,
                    detail=reject.detail,
                    quarantined_at=now,
                )
            )
        self.buffered_rows += len(batch.rejects)
        self.buffered_bytes += sum(len(chunk.values[r.position] or b"") for r in batch.rejects)
        self.rejects_added += len(batch.rejects)

    def flush(self) -> None:
        """Hand the buffered rows to the writers (after the previous flush finished)."""
        self._collect()
        if self.tables:
            # one file per event day, holding every partition this worker read: on a
            # backlog a day's rows of one partition alone made files of a few
            # thousand rows, where Parquet's cost per file outweighs the rows'
            table, groups = _by_day(pa.concat_tables(self.tables))
            self.tables = []
            for group in groups:
                first = min(group.offsets)
                name = "_".join(map(str, sorted(group.offsets)))
                self._submit(
                    tables.RAW_EVENTS,
                    first,
                    {"event_date": group.day},
                    f"{self.topic}-p{name}-{group.offsets[first][0]:020d}-"
                    f"{group.offsets[first][1]:020d}",
                    table.slice(group.start, group.rows),
                    {p: rows for p, (_, _, rows) in group.offsets.items()},
                    {},
                )
        if self.rejects:
            by_partition: dict[int, list[QuarantineRow]] = {}
            for row in self.rejects:
                by_partition.setdefault(row.partition, []).append(row)
            self.rejects = []
            for partition, rows in by_partition.items():
                offsets = [row.offset for row in rows]
                first, last = min(offsets), max(offsets)
                self._submit(
                    tables.QUARANTINE,
                    partition,
                    {},
                    f"{self.topic}-p{partition}-{first:020d}-{last:020d}",
                    quarantine_table(rows),
                    {},
                    Counter(row.reason for row in rows),
                )
                if self.dead_letters is not None:
                    for row in rows:
                        self.dead_letters.send(
                            self.dead_letter_topic,
                            row.value,
                            row.key,
                            headers=[
                                ("reason", row.reason.encode()),
                                ("detail", row.detail.encode()[:1000]),
                                ("source", f"{row.topic}/{row.partition}/{row.offset}".encode()),
                            ],
                        )
        self.buffered_rows = 0
        self.buffered_bytes = 0

    def _submit(
        self,
        spec: tables.TableSpec,
        partition: int,
        partition_values: dict,
        name_hint: str,
        table: pa.Table,
        rows: dict[int, int],
        rejected: Counter,
    ) -> None:
        future = self._pool.submit(
            tables.write_file, self.lake, spec, table, partition_values, name_hint
        )
        self._pending.append((future, (spec, partition, rows, rejected)))

    def _collect(self) -> None:
        pending, self._pending = self._pending, []
        for future, (spec, partition, rows, rejected) in pending:
            written = future.result()  # a failed write fails the run before anything commits
            outcome = self.outcomes[partition]
            outcome.files.append(tables.file_path(spec, written))
            (outcome.raw_files if spec is tables.RAW_EVENTS else outcome.quarantine_files).append(
                written
            )
            outcome.bytes += written.size
            for p, count in rows.items():
                self.outcomes[p].rows += count
            for reason, count in rejected.items():
                outcome.rejected[reason] = outcome.rejected.get(reason, 0) + count

    def close(self) -> None:
        """Flush what is buffered and wait until every file (and dead letter) is written."""
        self.flush()
        self._collect()
        self._pool.shutdown(wait=True)
        if self.dead_letters is not None:
            self.dead_letters.close()

    def abort(self) -> None:
        """Stop writing: what was written is referenced by no commit, for `lake maintain` to vacuum."""
        self._pool.shutdown(wait=True, cancel_futures=True)


def _commit_group(
    settings: KafkaSettings, config: ExtractConfig, ends: dict[int, int], result: ExtractResult
) -> None:
    """Mirror the lake into the consumer group so lag tools see progress (best effort)."""
    from confluent_kafka import TopicPartition

    consumer = fast_consumer(settings, config.group_id)
    try:
        consumer.commit(
            offsets=[TopicPartition(config.topic, p, o) for p, o in sorted(ends.items())],
            asynchronous=False,
        )
        result.group_committed = True
    except Exception as exc:  # the lake already committed; lag tools are a convenience
        result.group_commit_error = f"{type(exc).__name__}: {exc}"
    finally:
        consumer.close()

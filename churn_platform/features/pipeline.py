"""The Beam feature pipeline: `compute_features` for every customer as of a date, at scale.

    python -m churn_platform.features.pipeline --lake var/lake --as_of 2026-11-20 \\
        [--shards 8] [--read_tasks 8] \\
        [--churn_definition cancellation|inactivity] [--churn_horizon_days N] \\
        [--churn_qualifying_events purchase,login] \\
        [--runner DirectRunner] [--direct_num_workers 1] [--direct_running_mode in_memory]

(`--runner` and the other runner options go through `BeamRunnerSettings`;
cluster runners take their own options, see `churn_platform.features.options`.)
The lake is read and written through its fsspec filesystem, so the root may
be a local path or a URI (s3://, gs://, memory://). Steps:

1. `ReadEventShards`: the files an as-of date needs (`feature_inputs`) are cut
   into read tasks (runs of files in lake order); a task reads its files into
   one polars frame (history files: lifecycle rows only), drops anything after
   the as-of date, and splits the rows by customer shard (a hash of
   customer_id). Elements are `FrameBatch`es, one per task and shard, never
   single events. A customer's events may sit in files of any Kafka
   partition, so a shard is a set of customers, not a set of files.
2. `DiscoverActivityTypes`: the tasks' activity types are merged over all
   tasks (`merge_specs`) into a side input, so every shard has the same columns.
3. `ComputeShardFeatures`: a GroupByKey brings a shard's batches together, in
   lake order (so "the first of a repeated event_id" is the reference's
   first), and `compute_features` runs on the shard.
4. `WriteFeatureTable`: every shard writes one data file of the features
   table (`lake.tables.write_file`, a name no other run uses, even when empty,
   so the set of files is fixed), its footer carrying the exact spec, the
   churn definition and the inputs; the files are not visible yet. A last step
   records them (`DataFile`s) and the run's counts as a pending commit.
5. The launching process, once the pipeline finished, commits every file in
   one Delta commit that replaces the as-of partition (`commit_features`): a
   reader sees the previous table or the new one, never a mix, and a rerun
   replaces, never duplicates. A run that dies before the commit leaves files
   no commit references (vacuum removes them).

Many as-of dates in one run (`run_feature_pipeline_range`, what training uses
for its weekly dates): the union of the dates' files is read once (a file is
cut to lifecycle rows only when it is history for every date), each row
tagged with its file, and shuffled once; a shard then rebuilds each date's
rows exactly as a one-date run holds them (`inputs.events_as_of`: that date's
history lifecycle rows, then its window rows, in lake order) and computes
every date. Each date's files, footers, counts and commit are those of a
one-date run; the dates are committed one by one after the pipeline.

Two specs, for exactness: task specs are found before repeated event_ids are
dropped, so a type seen only in a repeat could be in them but not in
`compute_features` over everything. Shards compute with the merged task
spec; each shard also reports its types after dropping repeats, and the
writer keeps the columns of that exact spec. Repeats that are retries of the
same event (the contract's case) make both specs equal.

Exactness also assumes what the event contract says: an event_id names one
event of one customer (a retry repeats that customer's event), so dropping
repeats within a customer's shard is dropping them globally.

Speed against the polars reference is measured by benchmarks/features.py
(docs/benchmarks.md, Features): Beam's start-up weighs more on small inputs,
and peak memory stays below the reference's, as shards are computed one by one.
Beam's data plane copies each encoded byte several times between stages, so
the shuffle is bound by bytes: a `FrameBatch` ships compressed Arrow IPC.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date

import polars as pl

from churn_platform.cores import available_cores
from churn_platform.features.churn import CANCELLATION, ChurnDefinition
from churn_platform.features.definitions import (
    EVENT_SCHEMA,
    KEY_COLUMNS,
    FeatureSpec,
    as_of_end,
    categorical_keys,
    compute_features,
    discover_spec,
    merge_specs,
)
from churn_platform.features.inputs import (
    FILE_COLUMN,
    FeatureInputs,
    RangeInputs,
    events_as_of,
    events_read_as_of,
    feature_inputs,
    range_inputs,
    read_file,
    read_tagged,
)
from churn_platform.features.many_dates import features_of_dates
from churn_platform.features.materialize import (
    commit_features,
    create_feature_table,
    feature_file_metadata,
)
from churn_platform.features.options import BeamRunnerSettings, quiet_beam_import
from churn_platform.lake import tables
from churn_platform.lake.pending import discard_pending, read_pending, write_pending
from churn_platform.lake.store import DEFAULT_LAKE_ROOT, Lake

with quiet_beam_import():
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.pvalue import AsSingleton, TaggedOutput
    from apache_beam.runners.runner import PipelineState
    from apache_beam.transforms.window import GlobalWindows

# Measured at 2M and 10M events on 2 cores: 8 to 16 shards and 8 to 16 read
# tasks were equally fast within noise, 32 shards slower (per-batch overhead:
# read tasks x shards batches). A cluster wants more of both (at least its
# parallelism).
DEFAULT_SHARDS = 8
DEFAULT_READ_TASKS = 8
# Seed of the customer → shard hash. polars' hash is stable within a polars
# version, which is all a run needs: every worker of one job runs one image.
SHARD_SEED = 20261120
METRICS_NAMESPACE = "customer_features"


_LOGGER = logging.getLogger(__name__)


def empty_events() -> pl.DataFrame:
    return pl.DataFrame(schema=EVENT_SCHEMA)


# --- options and results ------------------------------------------------------


class FeaturePipelineOptions(PipelineOptions):
    """The feature pipeline's own options (runner options come from `BeamRunnerSettings`)."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        # not required=True: Beam parses every options class for every pipeline
        # in the process, and a missing required option would exit it
        parser.add_argument(
            "--lake", default=DEFAULT_LAKE_ROOT, help="lake root: a directory or an fsspec URI"
        )
        parser.add_argument("--as_of", default=None, help="as-of date, YYYY-MM-DD")
        parser.add_argument(
            "--shards",
            type=int,
            default=DEFAULT_SHARDS,
            help="customer shards: units of parallel computation, one output file each",
        )
        parser.add_argument(
            "--read_tasks",
            type=int,
            default=DEFAULT_READ_TASKS,
            help="read tasks: units of parallel reading (runs of raw files)",
        )
        parser.add_argument(
            "--churn_definition",
            default=CANCELLATION.kind,
            help="who is active at the as-of date: cancellation (default) or inactivity",
        )
        parser.add_argument(
            "--churn_horizon_days",
            type=int,
            default=None,
            help="the churn horizon (inactivity: N, the days without activity that mean churn)",
        )
        parser.add_argument(
            "--churn_qualifying_events",
            default="",
            help="inactivity only: event types that count as activity, comma-separated "
            "(default: every activity type)",
        )

    def churn(self) -> ChurnDefinition:
        """The churn definition these options name (see `features.churn`)."""
        from churn_platform.features.churn import definition_from_env

        environ = {"CHURN_DEFINITION": self.churn_definition or ""}
        if self.churn_horizon_days is not None:
            environ["CHURN_HORIZON_DAYS"] = str(self.churn_horizon_days)
        environ["CHURN_QUALIFYING_EVENTS"] = self.churn_qualifying_events or ""
        return definition_from_env(environ)


@dataclass(frozen=True)
class FeatureRunResult:
    """What a pipeline run wrote."""

    as_of: date
    rows: int  # customers active at the as-of date (feature rows written)
    customers: int  # distinct customers in the events read
    events_read: int  # rows read from raw files
    spec: FeatureSpec
    output_files: tuple[str, ...]  # lake-relative paths of the committed data files
    seconds: float
    version: int | None = None  # the features table's version the run committed
    # Beam counters by name (skipped rows, duplicates, ...), where the runner reports them
    counters: dict[str, int] = field(default_factory=dict)


class FeaturePipelineError(RuntimeError):
    """The pipeline was misconfigured or did not finish; the message says which."""


# --- batches on the wire ---------------------------------------------------------


class FrameBatch:
    """A polars frame as a pipeline element: it pickles as zstd-compressed Arrow IPC.

    Beam's data plane copies every encoded byte several times between stages,
    and the FnApiRunner decodes and re-encodes values when it groups them, so
    the shuffle is bound by bytes and by codec work. A batch is compressed
    once, when made, and decompressed at most once, however often Beam
    re-encodes it. Plainly pickled frames are several times larger and made
    the pipeline much slower (docs/benchmarks.md, Features).

    Compressing when the batch is made, not while Beam writes it, matters in
    `multi_threading` mode: there (Beam 2.77) a timer flushes the worker's
    output stream without waiting for the element being written, and a slow
    encoding let it cut elements in two. Pickling (Beam's fallback coder)
    rather than a custom coder keeps batches working on every runner.
    """

    __slots__ = ("_encoded", "_frame", "index")

    def __init__(
        self, index: int, frame: pl.DataFrame | None = None, encoded: bytes | None = None
    ) -> None:
        self.index = index  # for event batches, the read task: the batch's place in lake order
        self._frame = frame
        self._encoded = encoded if encoded is not None else _compress(frame)

    @property
    def frame(self) -> pl.DataFrame:
        if self._frame is None:
            self._frame = pl.read_ipc_stream(self._encoded)
        return self._frame

    def __reduce__(self):
        return FrameBatch, (self.index, None, self._encoded)


def _compress(frame: pl.DataFrame) -> bytes:
    sink = io.BytesIO()
    frame.write_ipc_stream(sink, compression="zstd", compat_level=pl.CompatLevel.newest())
    return sink.getvalue()


def frame_batches(index: int, frames: Sequence[pl.DataFrame]) -> list[FrameBatch]:
    """`FrameBatch(index, frame)` of each frame, compressed side by side.

    Compressing is most of what a read task or a shard spends in Python (at 10M
    events, ~3.5 s of a one-date run), on one core of a runner that runs one
    bundle at a time; polars lets go of the GIL while it writes, so the batches
    are compressed on every core this process may use, to the same bytes.
    """
    if len(frames) < 2:
        return [FrameBatch(index, frame) for frame in frames]
    encoded = list(_codec_pool().map(_compress, frames))
    return [FrameBatch(index, frame, blob) for frame, blob in zip(frames, encoded, strict=True)]


def batch_frames(batches: Sequence[FrameBatch]) -> list[pl.DataFrame]:
    """The frames of `batches`, in order, decompressed side by side (as `frame_batches`)."""
    if len(batches) < 2:
        return [b.frame for b in batches]
    return list(_codec_pool().map(lambda b: b.frame, batches))


@functools.cache
def _codec_pool() -> ThreadPoolExecutor:
    """Threads for `frame_batches` and `WriteAhead`: one per core, started when first needed."""
    return ThreadPoolExecutor(max_workers=available_cores(), thread_name_prefix="frame-codec")


class WriteAhead:
    """A write stage's data files, written on `_codec_pool`'s threads while the bundle goes on.

    The stage that writes feature files does nothing else: its tables (96 for
    a training range) were decompressed and written one after another on one
    core. Here up to one write per core is in flight; Parquet's encoding,
    zstd and polars' decompression let go of the GIL. Results come back in
    the order the writes were submitted: `submit` hands back those beyond the
    limit, `drain` the rest (from `finish_bundle`, which puts them in their
    window). A failed write raises where its result is taken, failing the
    bundle; its file, if any, is referenced by no commit (`lake maintain`
    vacuums it).
    """

    def __init__(self, ahead: int | None = None) -> None:
        self._ahead = max(1, ahead or available_cores())
        self._pending: deque[Future] = deque()

    def submit(self, write: Callable[[], object]) -> Iterator:
        """Start `write`; yields the results of earlier writes while too many are in flight."""
        self._pending.append(_codec_pool().submit(write))
        while len(self._pending) > self._ahead:
            yield self._pending.popleft().result()

    def drain(self) -> Iterator:
        """The remaining results, in submission order."""
        while self._pending:
            yield self._pending.popleft().result()

    def cancel(self) -> None:
        """Drop what has not started (a bundle that failed); running writes finish."""
        while self._pending:
            self._pending.popleft().cancel()


class _WritingFn(beam.DoFn):
    """A DoFn whose `process` submits file writes to a `WriteAhead` of its bundle.

    `_write` returns (output, columns dropped); the output leaves in the order
    the writes were submitted, and the drop is counted on the bundle's thread
    (Beam's metrics belong to it).
    """

    columns_dropped: object  # a Beam counter, made in the subclass's __init__
    _lake: Lake | None  # set in the subclass's setup
    _shards: int

    def start_bundle(self) -> None:
        self._writes = WriteAhead()

    def _submit(self, write: Callable[[], tuple[object, int]]) -> Iterator:
        for written in self._writes.submit(write):
            yield self._taken(written)

    def finish_bundle(self) -> Iterator:
        for written in self._writes.drain():
            yield GlobalWindows.windowed_value(self._taken(written))

    def teardown(self) -> None:
        if hasattr(self, "_writes"):
            self._writes.cancel()

    def _taken(self, written: tuple[object, int]) -> object:
        output, dropped = written
        if dropped:
            self.columns_dropped.inc(dropped)
        return output

    def _write_features(
        self, as_of: date, shard: int, batch: FrameBatch, columns: list[str], metadata: dict
    ) -> tuple[tables.DataFile, int]:
        """A shard's feature table of `as_of` as a data file (not yet committed), and how
        many columns it had beyond `columns` (computed only from a duplicate's events)."""
        features = batch.frame
        dropped = features.width - len(columns)
        if dropped:
            features = features.select(columns)
        return tables.write_file(
            self._lake,
            tables.FEATURES,
            features.to_arrow(),
            {"as_of": as_of},
            name_hint=f"part-{shard:05d}-of-{self._shards:05d}",
            metadata=metadata,
        ), dropped


# --- reading -------------------------------------------------------------------


@dataclass(frozen=True)
class ReadTask:
    """Raw files read together, in lake order; `index` orders tasks the same way."""

    index: int
    files: tuple[tuple[str, bool], ...]  # (lake-relative path, lifecycle rows only)


def plan_read_tasks(inputs: FeatureInputs, tasks: int) -> list[ReadTask]:
    """Split the input files into at most `tasks` contiguous runs, keeping lake order.

    The order is `read_inputs`' (history files, then window files), so
    concatenating a shard's batches by task index sees rows in the reference's order.
    """
    files = [(p, True) for p in inputs.history_files] + [(p, False) for p in inputs.window_files]
    if not files:
        return []
    count = max(1, min(tasks, len(files)))
    size, extra = divmod(len(files), count)
    planned, start = [], 0
    for index in range(count):
        stop = start + size + (1 if index < extra else 0)
        planned.append(ReadTask(index, tuple(files[start:stop])))
        start = stop
    return planned


def read_events(lake: Lake, path: str) -> pl.DataFrame:
    """One raw file's event columns, through the lake's filesystem (the reference's reader)."""
    return read_file(lake, path)


def shard_of(customer_id: pl.Expr, shards: int) -> pl.Expr:
    """The shard of each customer: the same on every worker of a run."""
    return (customer_id.hash(seed=SHARD_SEED) % shards).cast(pl.Int32)


def _shard_batches(index: int, by_shard: pl.DataFrame) -> list[tuple[int, FrameBatch]]:
    """(shard, batch) of each shard's rows of `by_shard` (shard in column `_s`)."""
    parts = by_shard.partition_by("_s", as_dict=True, include_key=False)
    batches = frame_batches(index, list(parts.values()))
    return [(int(shard), batch) for (shard,), batch in zip(parts, batches, strict=True)]


class ReadEventShardsFn(beam.DoFn):
    """A read task → (shard, FrameBatch) pairs; tagged: the task's spec and rows read."""

    SPECS = "specs"
    EVENTS_READ = "events_read"

    def __init__(self, lake_uri: str, as_of: date, shards: int) -> None:
        self._lake_uri = lake_uri
        self._as_of = as_of
        self._shards = shards
        self._lake: Lake | None = None
        self.events_read = Metrics.counter(METRICS_NAMESPACE, "events_read")
        self.files_read = Metrics.counter(METRICS_NAMESPACE, "files_read")
        self.history_activity_skipped = Metrics.counter(
            METRICS_NAMESPACE, "history_activity_rows_skipped"
        )
        self.after_as_of_skipped = Metrics.counter(METRICS_NAMESPACE, "events_after_as_of_skipped")

    def setup(self) -> None:
        self._lake = Lake(self._lake_uri)

    def process(self, task: ReadTask) -> Iterator:
        tagged = [(i, path, lifecycle_only) for i, (path, lifecycle_only) in enumerate(task.files)]
        frame, heights = read_tagged(self._lake, tagged)
        read = sum(heights.values())
        self.history_activity_skipped.inc(read - frame.height)
        self.files_read.inc(len(task.files))
        self.events_read.inc(read)
        events = frame.drop(FILE_COLUMN)
        # files are chosen by event date, so this drops nothing unless a file
        # holds later rows; the guard is what makes "no lookahead" local
        visible = events.filter(pl.col("ts") < as_of_end(self._as_of))
        self.after_as_of_skipped.inc(events.height - visible.height)
        yield TaggedOutput(self.SPECS, discover_spec(visible, self._as_of))
        yield TaggedOutput(self.EVENTS_READ, read)
        by_shard = visible.with_columns(shard_of(pl.col("customer_id"), self._shards).alias("_s"))
        yield from _shard_batches(task.index, by_shard)


class ReadEventShards(beam.PTransform):
    """Raw event files of an as-of date → batches keyed by customer shard.

    Outputs `events` ((shard, FrameBatch)), `specs` (one `FeatureSpec` per
    task) and `events_read` (rows read per task).
    """

    def __init__(
        self, lake_uri: str, as_of: date, inputs: FeatureInputs, shards: int, tasks: int
    ) -> None:
        super().__init__()
        self._lake_uri = lake_uri
        self._as_of = as_of
        self._inputs = inputs
        self._shards = shards
        self._tasks = tasks

    def expand(self, pbegin):
        return (
            pbegin
            | "PlanReadTasks" >> beam.Create(plan_read_tasks(self._inputs, self._tasks))
            | "ReadEventShardsFn"
            >> beam.ParDo(
                ReadEventShardsFn(self._lake_uri, self._as_of, self._shards)
            ).with_outputs(ReadEventShardsFn.SPECS, ReadEventShardsFn.EVENTS_READ, main="events")
        )


# --- computing -----------------------------------------------------------------


def _shard_marker(shard: int) -> tuple[int, FrameBatch]:
    return shard, FrameBatch(-1, empty_events())


def assemble_shard(batches: Iterable[FrameBatch]) -> pl.DataFrame:
    """A shard's event batches as one frame, in task (lake) order."""
    ordered = sorted(batches, key=lambda b: b.index)
    return pl.concat(batch_frames(ordered), how="vertical_relaxed")


class ComputeShardFeaturesFn(beam.DoFn):
    """(shard, batches) → (shard, feature table batch); tagged: the shard's exact spec, customers."""

    SPECS = "specs"
    CUSTOMERS = "customers"

    def __init__(self, as_of: date, churn: ChurnDefinition = CANCELLATION) -> None:
        self._as_of = as_of
        self._churn = churn
        self.duplicates = Metrics.counter(METRICS_NAMESPACE, "duplicate_events_dropped")
        self.customers = Metrics.counter(METRICS_NAMESPACE, "customers")
        self.rows = Metrics.counter(METRICS_NAMESPACE, "feature_rows")

    def process(self, element: tuple[int, Iterable], spec: FeatureSpec) -> Iterator:
        shard, batches = element
        events = assemble_shard(batches)
        # equal ids have equal hashes, so distinct hashes prove there are no
        # repeats (and cost half of counting distinct strings); otherwise drop
        # repeats as compute_features does, to see which types remain
        first = events
        if events["event_id"].hash().n_unique() < events.height:
            first = events.unique(subset="event_id", keep="first", maintain_order=True)
            self.duplicates.inc(events.height - first.height)
        yield TaggedOutput(self.SPECS, discover_spec(first, self._as_of))
        customers = events["customer_id"].n_unique()
        self.customers.inc(customers)
        yield TaggedOutput(self.CUSTOMERS, customers)
        features = compute_features(events, self._as_of, spec, self._churn)
        self.rows.inc(features.height)
        yield shard, FrameBatch(shard, features)


class ComputeShardFeatures(beam.PTransform):
    """(shard, batch) pairs → one feature table per shard (every shard, even an empty one).

    Outputs `features` ((shard, table)), `specs` (each shard's activity types
    after de-duplication) and `customers` (distinct customers per shard).
    """

    def __init__(
        self, as_of: date, shards: int, spec, churn: ChurnDefinition = CANCELLATION
    ) -> None:
        super().__init__()
        self._as_of = as_of
        self._shards = shards
        self._spec = spec  # a PCollection holding one FeatureSpec
        self._churn = churn

    def expand(self, batches):
        # one marker per shard, so a shard without events still writes its
        # (empty) part and the set of output files is always the same
        markers = (
            batches.pipeline
            | "ShardMarkers" >> beam.Create(list(range(self._shards)))
            | "MarkShard" >> beam.Map(_shard_marker)
        )
        return (
            (batches, markers)
            | "WithMarkers" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "ComputeShardFeaturesFn"
            >> beam.ParDo(
                ComputeShardFeaturesFn(self._as_of, self._churn), spec=AsSingleton(self._spec)
            ).with_outputs(
                ComputeShardFeaturesFn.SPECS, ComputeShardFeaturesFn.CUSTOMERS, main="features"
            )
        )


# --- writing -------------------------------------------------------------------


class WriteShardFn(_WritingFn):
    """(shard, feature table) → a data file of the features table (not yet committed)."""

    def __init__(
        self,
        lake_uri: str,
        as_of: date,
        shards: int,
        inputs: FeatureInputs | None = None,
        churn: ChurnDefinition = CANCELLATION,
    ) -> None:
        self._lake_uri = lake_uri
        self._as_of = as_of
        self._shards = shards
        self._inputs = inputs
        self._churn = churn
        self._lake: Lake | None = None
        self.columns_dropped = Metrics.counter(METRICS_NAMESPACE, "columns_only_in_duplicates")

    def setup(self) -> None:
        self._lake = Lake(self._lake_uri)

    def process(
        self, element: tuple[int, FrameBatch], spec: FeatureSpec
    ) -> Iterator[tables.DataFile]:
        shard, batch = element
        metadata = feature_file_metadata(self._as_of, spec, self._churn, self._inputs)
        columns = [*KEY_COLUMNS, *spec.columns()]
        yield from self._submit(
            functools.partial(self._write_features, self._as_of, shard, batch, columns, metadata)
        )


class StageFeaturesFn(beam.DoFn):
    """All files written → one pending commit (the files and the run's counts)."""

    def __init__(self, lake_uri: str, as_of: date, shards: int, pending: str) -> None:
        self._lake_uri = lake_uri
        self._as_of = as_of
        self._shards = shards
        self._pending = pending
        self._lake: Lake | None = None

    def setup(self) -> None:
        self._lake = Lake(self._lake_uri)

    def process(
        self, written: list[tables.DataFile], spec: FeatureSpec, events_read: int, customers: int
    ) -> Iterator[dict]:
        files = sorted(written, key=lambda f: f.path)
        info = {
            **spec.to_dict(),
            "as_of": self._as_of.isoformat(),
            "rows": sum(f.rows or 0 for f in files),
            "customers": customers,
            "events_read": events_read,
            "shards": self._shards,
        }
        write_pending(self._lake, tables.FEATURES, self._pending, files, info)
        yield info


class WriteFeatureTable(beam.PTransform):
    """(shard, feature table) → data files of the as-of partition and a pending commit.

    Side inputs (one-element PCollections): the exact spec, events read,
    customers. Outputs the pending commit's info (spec and counts); the
    launching process commits it (`commit_pending_features`).
    """

    def __init__(
        self,
        lake_uri: str,
        as_of: date,
        shards: int,
        spec,
        events_read,
        customers,
        pending: str,
        inputs: FeatureInputs | None = None,
        churn: ChurnDefinition = CANCELLATION,
    ) -> None:
        super().__init__()
        self._lake_uri = lake_uri
        self._as_of = as_of
        self._shards = shards
        self._spec = spec
        self._events_read = events_read
        self._customers = customers
        self._pending = pending
        self._inputs = inputs
        self._churn = churn

    def expand(self, features):
        return (
            features
            | "WriteShardFn"
            >> beam.ParDo(
                WriteShardFn(self._lake_uri, self._as_of, self._shards, self._inputs, self._churn),
                spec=AsSingleton(self._spec),
            )
            | "CollectWritten" >> beam.combiners.ToList()
            | "StageFeaturesFn"
            >> beam.ParDo(
                StageFeaturesFn(self._lake_uri, self._as_of, self._shards, self._pending),
                spec=AsSingleton(self._spec),
                events_read=AsSingleton(self._events_read),
                customers=AsSingleton(self._customers),
            )
        )


def commit_pending_features(lake: Lake, as_of: date, pending: str) -> tuple[int, dict]:
    """Commit what a finished run staged under `pending`; returns (version, the run's info)."""
    files, info = read_pending(lake, tables.FEATURES, pending)
    version = commit_features(lake, as_of, files, FeatureSpec.from_dict(info), info)
    discard_pending(lake, tables.FEATURES, pending)
    return version, {**info, "files": [tables.file_path(tables.FEATURES, f) for f in files]}


# --- the whole pipeline ----------------------------------------------------------


class CustomerFeatures(beam.PTransform):
    """Lake → `features/customer_features/as_of=D/`: every active customer's features at D.

    Lists the files to read when the pipeline is built (`feature_inputs`).
    Outputs one element: the info of the pending commit named `pending`.
    """

    def __init__(
        self,
        lake_uri: str,
        as_of: date,
        shards: int = DEFAULT_SHARDS,
        read_tasks: int = DEFAULT_READ_TASKS,
        churn: ChurnDefinition = CANCELLATION,
        pending: str = "",
    ) -> None:
        super().__init__()
        for name, value in (("shards", shards), ("read_tasks", read_tasks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FeaturePipelineError(f"{name} must be an integer >= 1, got {value!r}")
        self._lake_uri = lake_uri
        self._as_of = as_of
        self._shards = shards
        self._tasks = read_tasks
        self._churn = churn
        self._pending = pending or f"{as_of.isoformat()}-{uuid.uuid4().hex}"

    def expand(self, pbegin):
        inputs = feature_inputs(Lake(self._lake_uri), self._as_of)
        read = pbegin | "ReadEventShards" >> ReadEventShards(
            self._lake_uri, self._as_of, inputs, self._shards, self._tasks
        )
        task_spec = read.specs | "DiscoverActivityTypes" >> beam.CombineGlobally(merge_specs)
        events_read = read.events_read | "CountEventsRead" >> beam.CombineGlobally(sum)
        computed = read.events | "ComputeShardFeatures" >> ComputeShardFeatures(
            self._as_of, self._shards, task_spec, self._churn
        )
        spec = computed.specs | "MergeShardSpecs" >> beam.CombineGlobally(merge_specs)
        customers = computed.customers | "CountCustomers" >> beam.CombineGlobally(sum)
        return computed.features | "WriteFeatureTable" >> WriteFeatureTable(
            self._lake_uri,
            self._as_of,
            self._shards,
            spec,
            events_read,
            customers,
            self._pending,
            inputs,
            self._churn,
        )


# --- many as-of dates in one pass ---------------------------------------------------


@dataclass(frozen=True)
class RangeReadTask:
    """Files of a `RangeInputs` read together: (index in `files`, path, lifecycle rows only)."""

    index: int
    files: tuple[tuple[int, str, bool], ...]


def plan_range_tasks(inputs: RangeInputs, tasks: int) -> list[RangeReadTask]:
    """The union of the dates' files cut into at most `tasks` contiguous runs, in file order."""
    files = [
        (i, path, lifecycle)
        for i, (path, lifecycle) in enumerate(zip(inputs.files, inputs.lifecycle_only, strict=True))
    ]
    if not files:
        return []
    count = max(1, min(tasks, len(files)))
    size, extra = divmod(len(files), count)
    planned, start = [], 0
    for index in range(count):
        stop = start + size + (1 if index < extra else 0)
        planned.append(RangeReadTask(index, tuple(files[start:stop])))
        start = stop
    return planned


class ReadRangeShardsFn(beam.DoFn):
    """A range read task → (shard, FrameBatch) pairs, rows tagged with their file; tagged
    outputs: each date's spec of the task's rows, and each file's row count."""

    SPECS = "specs"
    HEIGHTS = "heights"

    def __init__(self, lake_uri: str, inputs: RangeInputs, shards: int) -> None:
        self._lake_uri = lake_uri
        self._inputs = inputs
        self._shards = shards
        self._lake: Lake | None = None
        self.events_read = Metrics.counter(METRICS_NAMESPACE, "events_read")
        self.files_read = Metrics.counter(METRICS_NAMESPACE, "files_read")

    def setup(self) -> None:
        self._lake = Lake(self._lake_uri)

    def process(self, task: RangeReadTask) -> Iterator:
        read, heights = read_tagged(self._lake, task.files)
        self.files_read.inc(len(task.files))
        self.events_read.inc(sum(heights.values()))
        yield TaggedOutput(self.HEIGHTS, heights)
        if not task.files:
            return
        events = read.filter(pl.col("ts") < as_of_end(self._inputs.dates[-1]))
        yield TaggedOutput(
            self.SPECS,
            {
                d: discover_spec(events_as_of(events, self._inputs, d, lazy=True), d)
                for d in self._inputs.dates
            },
        )
        by_shard = events.with_columns(shard_of(pl.col("customer_id"), self._shards).alias("_s"))
        yield from _shard_batches(task.index, by_shard)


def _merge_date_specs(found: Iterable[dict]) -> dict:
    """Specs by date from many tasks or shards → one merged spec per date."""
    merged: dict = {}
    for by_date in found:
        for as_of, spec in by_date.items():
            merged.setdefault(as_of, []).append(spec)
    return {as_of: merge_specs(specs) for as_of, specs in merged.items()}


def _spec_of(specs: dict, as_of: date) -> FeatureSpec:
    """A date's merged spec; a date without events has none (as a one-date run's empty merge)."""
    return specs[as_of] if as_of in specs else merge_specs([])


def _merge_date_counts(found: Iterable[dict]) -> dict:
    total: dict = {}
    for by_key in found:
        for key, value in by_key.items():
            total[key] = total.get(key, 0) + value
    return total


def _range_marker(shard: int) -> tuple[int, FrameBatch]:
    frame = empty_events().with_columns(pl.lit(0, dtype=pl.Int32).alias(FILE_COLUMN))
    return shard, FrameBatch(-1, frame)


class ComputeRangeFeaturesFn(beam.DoFn):
    """(shard, batches) → ((as_of, shard), table) for every date; tagged: each date's exact
    spec and customers of the shard."""

    SPECS = "specs"
    CUSTOMERS = "customers"

    def __init__(self, inputs: RangeInputs, churn: ChurnDefinition = CANCELLATION) -> None:
        self._inputs = inputs
        self._churn = churn
        self.duplicates = Metrics.counter(METRICS_NAMESPACE, "duplicate_events_dropped")
        self.rows = Metrics.counter(METRICS_NAMESPACE, "feature_rows")

    def process(self, element: tuple[int, Iterable], specs: dict) -> Iterator:
        shard, batches = element
        everything = categorical_keys(assemble_shard(batches))  # cast once for every date
        # distinct hashes over the shard's rows prove that no date of it has repeats
        distinct = everything["event_id"].hash().n_unique() == everything.height
        exact, customers, computed = {}, {}, []
        tables = features_of_dates(
            everything,
            self._inputs,
            {as_of: _spec_of(specs, as_of) for as_of in self._inputs.dates},
            self._churn,
            distinct=distinct,
        )
        for as_of in self._inputs.dates:
            # exactly what a one-date run's shard holds: that date's rows, in its order
            events = events_as_of(everything, self._inputs, as_of)
            events = events.filter(pl.col("ts") < as_of_end(as_of)).drop(FILE_COLUMN)
            first = events
            if not distinct and events["event_id"].hash().n_unique() < events.height:
                first = events.unique(subset="event_id", keep="first", maintain_order=True)
                self.duplicates.inc(events.height - first.height)
            exact[as_of] = discover_spec(first, as_of)
            customers[as_of] = events["customer_id"].n_unique()
            features = tables.pop(as_of)
            self.rows.inc(features.height)
            computed.append(features)
        batches = frame_batches(shard, computed)  # compressed side by side
        for as_of, batch in zip(self._inputs.dates, batches, strict=True):
            yield (as_of, shard), batch
        yield TaggedOutput(self.SPECS, exact)
        yield TaggedOutput(self.CUSTOMERS, customers)


class WriteRangeShardFn(_WritingFn):
    """((as_of, shard), table) → a data file of that date's partition (not yet committed)."""

    def __init__(
        self, lake_uri: str, inputs: RangeInputs, shards: int, churn: ChurnDefinition
    ) -> None:
        self._lake_uri = lake_uri
        self._inputs = inputs
        self._shards = shards
        self._churn = churn
        self._lake: Lake | None = None
        self.columns_dropped = Metrics.counter(METRICS_NAMESPACE, "columns_only_in_duplicates")

    def setup(self) -> None:
        self._lake = Lake(self._lake_uri)

    def process(self, element: tuple, specs: dict) -> Iterator:
        (as_of, shard), batch = element
        spec = _spec_of(specs, as_of)
        metadata = feature_file_metadata(as_of, spec, self._churn, self._inputs.inputs(as_of))
        yield from self._submit(
            functools.partial(
                self._write, as_of, shard, batch, [*KEY_COLUMNS, *spec.columns()], metadata
            )
        )

    def _write(
        self, as_of: date, shard: int, batch: FrameBatch, columns: list[str], metadata: dict
    ) -> tuple[tuple[str, tables.DataFile], int]:
        written, dropped = self._write_features(as_of, shard, batch, columns, metadata)
        # keyed by text: Beam groups only by keys it encodes deterministically
        return (as_of.isoformat(), written), dropped


class StageRangeFn(beam.DoFn):
    """(as_of, files written) → that date's pending commit (its files and counts)."""

    def __init__(self, lake_uri: str, inputs: RangeInputs, shards: int, pending: dict) -> None:
        self._lake_uri = lake_uri
        self._inputs = inputs
        self._shards = shards
        self._pending = pending
        self._lake: Lake | None = None

    def setup(self) -> None:
        self._lake = Lake(self._lake_uri)

    def process(self, element: tuple, specs: dict, heights: dict, customers: dict) -> Iterator:
        as_of, written = date.fromisoformat(element[0]), element[1]
        files = sorted(written, key=lambda f: f.path)
        ordered = [heights.get(i, 0) for i in range(len(self._inputs.files))]
        info = {
            **_spec_of(specs, as_of).to_dict(),
            "as_of": as_of.isoformat(),
            "rows": sum(f.rows or 0 for f in files),
            "customers": customers.get(as_of, 0),
            "events_read": events_read_as_of(self._inputs, ordered, as_of),
            "shards": self._shards,
        }
        write_pending(self._lake, tables.FEATURES, self._pending[as_of], files, info)
        yield info


class CustomerFeaturesRange(beam.PTransform):
    """Lake → `features/customer_features/as_of=D/` for every D of `inputs`, reading each raw
    file once: each date's files, rows and footers are those of a one-date run.

    Outputs one element per date: the info of its pending commit (`pending[D]`).
    """

    def __init__(
        self,
        lake_uri: str,
        inputs: RangeInputs,
        pending: dict,
        shards: int = DEFAULT_SHARDS,
        read_tasks: int = DEFAULT_READ_TASKS,
        churn: ChurnDefinition = CANCELLATION,
    ) -> None:
        super().__init__()
        for name, value in (("shards", shards), ("read_tasks", read_tasks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise FeaturePipelineError(f"{name} must be an integer >= 1, got {value!r}")
        self._lake_uri = lake_uri
        self._inputs = inputs
        self._pending = pending
        self._shards = shards
        self._tasks = read_tasks
        self._churn = churn

    def expand(self, pbegin):
        read = (
            pbegin
            | "PlanRangeTasks" >> beam.Create(plan_range_tasks(self._inputs, self._tasks))
            | "ReadRangeShardsFn"
            >> beam.ParDo(
                ReadRangeShardsFn(self._lake_uri, self._inputs, self._shards)
            ).with_outputs(ReadRangeShardsFn.SPECS, ReadRangeShardsFn.HEIGHTS, main="events")
        )
        task_specs = read.specs | "DiscoverActivityTypes" >> beam.CombineGlobally(_merge_date_specs)
        heights = read.heights | "CountFileRows" >> beam.CombineGlobally(_merge_date_counts)
        markers = (
            pbegin
            | "ShardMarkers" >> beam.Create(list(range(self._shards)))
            | "MarkShard" >> beam.Map(_range_marker)
        )
        computed = (
            (read.events, markers)
            | "WithMarkers" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "ComputeRangeFeaturesFn"
            >> beam.ParDo(
                ComputeRangeFeaturesFn(self._inputs, self._churn), specs=AsSingleton(task_specs)
            ).with_outputs(
                ComputeRangeFeaturesFn.SPECS, ComputeRangeFeaturesFn.CUSTOMERS, main="features"
            )
        )
        specs = computed.specs | "MergeShardSpecs" >> beam.CombineGlobally(_merge_date_specs)
        customers = computed.customers | "CountCustomers" >> beam.CombineGlobally(
            _merge_date_counts
        )
        return (
            computed.features
            | "WriteRangeShardFn"
            >> beam.ParDo(
                WriteRangeShardFn(self._lake_uri, self._inputs, self._shards, self._churn),
                specs=AsSingleton(specs),
            )
            | "GroupByDate" >> beam.GroupByKey()
            | "StageRangeFn"
            >> beam.ParDo(
                StageRangeFn(self._lake_uri, self._inputs, self._shards, self._pending),
                specs=AsSingleton(specs),
                heights=AsSingleton(heights),
                customers=AsSingleton(customers),
            )
        )


def run_feature_pipeline_range(
    lake_uri: str,
    dates: Sequence[date],
    runner: BeamRunnerSettings | None = None,
    shards: int = DEFAULT_SHARDS,
    read_tasks: int = DEFAULT_READ_TASKS,
    churn: ChurnDefinition = CANCELLATION,
) -> list[FeatureRunResult]:
    """The feature tables of every date of `dates` in one Beam pipeline (one read of the
    events, one shuffle); each date is committed on its own, as a one-date run commits it.
    Sorted by date; `seconds` is the whole run's."""
    started = time.perf_counter()
    lake = Lake(lake_uri)
    inputs = range_inputs(lake, dates)
    if not inputs.dates:
        return []
    create_feature_table(lake)
    run_id = uuid.uuid4().hex
    pending = {d: f"{d.isoformat()}-{run_id}" for d in inputs.dates}
    options = (runner or BeamRunnerSettings()).to_pipeline_options()
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "CustomerFeaturesRange" >> CustomerFeaturesRange(
        lake.uri, inputs, pending, shards, read_tasks, churn
    )
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise FeaturePipelineError(
            f"the feature pipeline for {inputs.dates[0]} .. {inputs.dates[-1]} ended in state "
            f"{state}"
        )
    counters = _counters(result)
    done = []
    for as_of in inputs.dates:
        version, info = commit_pending_features(lake, as_of, pending[as_of])
        _LOGGER.info("features as of %s (version %d): %s", as_of, version, info)
        done.append(
            FeatureRunResult(
                as_of=as_of,
                rows=info["rows"],
                customers=info["customers"],
                events_read=info["events_read"],
                spec=FeatureSpec.from_dict(info),
                output_files=tuple(info["files"]),
                seconds=time.perf_counter() - started,
                counters=counters,
                version=version,
            )
        )
    return done


def _parse_as_of(text: str | None) -> date:
    if not text:
        raise FeaturePipelineError("--as_of is required (YYYY-MM-DD)")
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise FeaturePipelineError(f"--as_of must be a date YYYY-MM-DD, got {text!r}") from exc


def _run(options: PipelineOptions) -> FeatureRunResult:
    started = time.perf_counter()
    own = options.view_as(FeaturePipelineOptions)
    as_of = _parse_as_of(own.as_of)
    lake = Lake(own.lake)
    try:
        churn = own.churn()
    except ValueError as exc:
        raise FeaturePipelineError(str(exc)) from exc
    # the table exists before any worker writes a file: data files without a
    # transaction log would make the directory unreadable
    create_feature_table(lake)
    pending = f"{as_of.isoformat()}-{uuid.uuid4().hex}"
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "CustomerFeatures" >> CustomerFeatures(
        lake.uri, as_of, own.shards, own.read_tasks, churn, pending
    )
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise FeaturePipelineError(f"the feature pipeline for {as_of} ended in state {state}")
    version, info = commit_pending_features(lake, as_of, pending)
    _LOGGER.info("features as of %s (version %d): %s", as_of, version, info)
    return FeatureRunResult(
        as_of=as_of,
        rows=info["rows"],
        customers=info["customers"],
        events_read=info["events_read"],
        spec=FeatureSpec.from_dict(info),
        output_files=tuple(info["files"]),
        seconds=time.perf_counter() - started,
        counters=_counters(result),
        version=version,
    )


def _counters(result) -> dict[str, int]:
    """This pipeline's counters summed by name; empty where a runner does not report them."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    except (NotImplementedError, AttributeError):
        return {}
    totals: dict[str, int] = {}
    for counter in found["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (value or 0)
    return totals


def run_feature_pipeline(
    lake_uri: str,
    as_of: date,
    runner: BeamRunnerSettings | None = None,
    shards: int = DEFAULT_SHARDS,
    read_tasks: int = DEFAULT_READ_TASKS,
    churn: ChurnDefinition = CANCELLATION,
) -> FeatureRunResult:
    """Compute and write the feature table as of `as_of` with Beam; what the asset calls."""
    settings = runner or BeamRunnerSettings()
    options = settings.to_pipeline_options(
        f"--lake={lake_uri}",
        f"--as_of={as_of.isoformat()}",
        f"--shards={shards}",
        f"--read_tasks={read_tasks}",
        f"--churn_definition={churn.kind}",
        f"--churn_horizon_days={churn.horizon_days}",
        f"--churn_qualifying_events={','.join(churn.qualifying_types)}",
    )
    return _run(options)


def run(argv: Sequence[str] | None = None) -> FeatureRunResult:
    """Command-line entry point (see the module docstring for the options)."""
    settings = BeamRunnerSettings.from_argv(sys.argv[1:] if argv is None else argv)
    result = _run(settings.to_pipeline_options())
    print(
        json.dumps(
            {
                "as_of": result.as_of.isoformat(),
                "rows": result.rows,
                "customers": result.customers,
                "events_read": result.events_read,
                "activity_types": list(result.spec.activity_types),
                "files": len(result.output_files),
                "seconds": round(result.seconds, 2),
            }
        )
    )
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    run()

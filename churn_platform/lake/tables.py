"""The lake's tables: names, schemas, reads, writes and commits, in one place.

Every table is a Delta Lake table (delta-rs through `deltalake`: no JVM, local
paths and object stores), so Spark, Trino, DuckDB, polars and pyarrow read it
correctly without knowing this project: a row is visible once a commit in the
table's `_delta_log` references its file, and never before.

Writers here write a data file first (`write_file`: zstd Parquet with a CRC per
page, under a name no other write uses) and then reference it in one commit
(`commit`), together with whatever else must become visible at the same
instant: the files a partition replaces, and the extract's per-partition
offsets as Delta application transactions (`txn` actions). A writer killed
before its commit leaves files no commit references: invisible to every
reader, and removed by `vacuum` once older than the retention. Files that
workers elsewhere wrote (Beam) reach the committing process through
`lake.pending`.

Errors follow one policy: a failed read or write raises `LakeError`, one line
naming the path and the fix.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import json
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from churn_platform.events.contract import (
    QUARANTINE_SCHEMA,
    RAW_EVENTS_DICTIONARY_COLUMNS,
    RAW_EVENTS_SCHEMA,
    RAW_EVENTS_STATISTICS_COLUMNS,
)
from churn_platform.lake.store import PARQUET_COMPRESSION, Lake, LakeError, write_hint

if TYPE_CHECKING:
    import polars as pl
    from deltalake import DeltaTable

LOG_DIR = "_delta_log"
# how often a commit that lost a race with another writer is retried (each time
# against the table's newest version; appends and compactions never conflict)
COMMIT_RETRIES = 20
# Delta's own defaults: deleted files and log entries are kept a week, so readers
# that started before a compaction and time travel over the last week keep working
DEFAULT_RETENTION_HOURS = 168
TABLE_CONFIGURATION = {
    "delta.logRetentionDuration": "interval 7 days",
    "delta.deletedFileRetentionDuration": "interval 7 days",
    "delta.checkpointInterval": "50",
}


@dataclass(frozen=True)
class TableSpec:
    """A lake table: where it lives (relative to the lake root) and its shape.

    `schema` is what readers get (None: the writer's schema, for tables whose
    columns follow the data, like features); `partition_by` columns are kept in
    the commit (Hive-style directories), not in the data files.
    """

    name: str
    partition_by: tuple[str, ...] = ()
    schema: pa.Schema | None = None
    dictionary_columns: tuple[str, ...] | None = None
    statistics_columns: tuple[str, ...] | None = None
    description: str = ""

    @property
    def log_dir(self) -> str:
        return f"{self.name}/{LOG_DIR}"


RAW_EVENTS = TableSpec(
    "raw/customer_events",
    partition_by=("event_date",),
    schema=RAW_EVENTS_SCHEMA,
    dictionary_columns=tuple(RAW_EVENTS_DICTIONARY_COLUMNS),
    statistics_columns=tuple(RAW_EVENTS_STATISTICS_COLUMNS),
    description="every valid event once, with its topic, partition and offset",
)
QUARANTINE = TableSpec(
    "quarantine/customer_events",
    schema=QUARANTINE_SCHEMA,
    description="every rejected message once, with its raw bytes and the reason",
)
FEATURES = TableSpec(
    "features/customer_features",
    partition_by=("as_of",),
    description="one row per active customer per as-of date",
)
LABELS_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string()),
        pa.field("as_of", pa.date32()),
        pa.field("churned", pa.bool_()),
        pa.field("horizon_days", pa.int64()),
        pa.field("churn_definition", pa.string()),
    ]
)
SCORES_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string()),
        pa.field("as_of", pa.date32()),
        pa.field("churn_probability", pa.float64()),
        pa.field("risk_band", pa.string()),
        pa.field("model_version", pa.string()),
        # Delta stores microseconds; readers get the milliseconds the scores were made with
        pa.field("scored_at", pa.timestamp("ms", tz="UTC")),
        # each score's top reasons (ml.reasons); null: scored without them
        pa.field(
            "reasons",
            pa.list_(
                pa.struct(
                    [
                        pa.field("feature", pa.string()),
                        pa.field("text", pa.string()),
                        pa.field("value", pa.float64()),
                        pa.field("typical", pa.float64()),
                        pa.field("contribution", pa.float64()),
                    ]
                )
            ),
        ),
    ]
)
LABELS = TableSpec(
    "labels/churn_labels",
    partition_by=("as_of",),
    schema=LABELS_SCHEMA,
    description="whether each customer active at the as-of date churned within the horizon",
)
TRAINING_SET = TableSpec(
    "ml/training_set",
    description="the point-in-time join of features and labels the champion was trained on",
)
SCORES = TableSpec(
    "scores/churn_scores",
    partition_by=("as_of",),
    schema=SCORES_SCHEMA,
    # few distinct values: dictionaries pay off; min/max statistics help range reads
    dictionary_columns=("risk_band", "model_version", "scored_at"),
    statistics_columns=("churn_probability",),
    description="the churn score of every active customer as of a date",
)
SCORER_QUARANTINE = TableSpec(
    "quarantine/scorer",
    partition_by=("group_id",),
    schema=pa.schema([*QUARANTINE_SCHEMA, pa.field("group_id", pa.string(), nullable=False)]),
    description="every message the streaming scorer rejected, with its raw bytes and the reason",
)
TABLES = (RAW_EVENTS, QUARANTINE, FEATURES, LABELS, TRAINING_SET, SCORES, SCORER_QUARANTINE)


@dataclass(frozen=True)
class DataFile:
    """A data file of a table: its path relative to the table, partition values, size, rows."""

    path: str
    partition: Mapping[str, str | None]
    size: int
    rows: int | None = None
    stats: str = field(default="", compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "partition": dict(self.partition),
            "size": self.size,
            "rows": self.rows,
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> DataFile:
        return cls(
            path=body["path"],
            partition=dict(body["partition"]),
            size=int(body["size"]),
            rows=body.get("rows"),
            stats=body.get("stats", ""),
        )


# opening ------------------------------------------------------------------------
def storage_options(lake: Lake) -> dict[str, str] | None:
    """What delta-rs needs beyond the URI to reach the lake's store (from the environment).

    S3-compatible stores are reached as with the AWS tools (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL); delta-rs also needs
    to be told that a plain-http endpoint is intended, and how commits are kept
    atomic (conditional writes, which S3 and its look-alikes support).
    """
    if lake.is_local:
        return None
    import os

    options: dict[str, str] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
        if endpoint.startswith("http://"):
            options["AWS_ALLOW_HTTP"] = "true"
    options.setdefault("AWS_CONDITIONAL_PUT", os.environ.get("AWS_CONDITIONAL_PUT", "etag"))
    return options


def table_uri(lake: Lake, spec: TableSpec) -> str:
    uri = lake.url(spec.name)
    if uri.startswith("memory://"):
        raise LakeError(
            f"CHURN_LAKE={lake.uri} cannot hold the lake's Delta tables (delta-rs does not see "
            "fsspec's in-process memory): set it to a directory or an object-store URI "
            "(s3://bucket/lake)"
        )
    return uri


def has_log(lake: Lake, spec: TableSpec) -> bool:
    """Whether the table has a transaction log (cheap: no listing of a long log)."""
    log = spec.log_dir
    if lake.exists(f"{log}/_last_checkpoint") or lake.exists(f"{log}/{0:020d}.json"):
        return True
    return lake.exists(log) and bool(lake.list_files(log, ".json"))


def _data_files_on_disk(lake: Lake, spec: TableSpec) -> list[str]:
    return [p for p in lake.list_files(spec.name, ".parquet") if f"/{LOG_DIR}/" not in p]


# tables `open_table` opened inside `reusing_opened_tables`, by (table URI, version)
_OPENED: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "churn_platform_opened_tables", default=None
)


@contextlib.contextmanager
def reusing_opened_tables() -> Iterator[None]:
    """Inside the block, `open_table` opens each table (and version) once.

    Later calls for the newest version bring the opened table up to date
    (delta-rs's `update_incremental`: the commits since, one log listing)
    instead of replaying the whole log: the feature table of a 10M-event lake
    took 34 ms to open and 3.7 ms to bring up to date. A given version is
    immutable and is reused as it is. Per thread (a context variable) and only
    for the block, which a step's work should be: a table restored to an older
    version from a backup while the block runs would not be noticed. Nested
    blocks share the outer one's tables.
    """
    if _OPENED.get() is not None:
        yield
        return
    token = _OPENED.set({})
    try:
        yield
    finally:
        _OPENED.reset(token)


def reuses_opened_tables(function: Callable) -> Callable:
    """`function` run inside `reusing_opened_tables`."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with reusing_opened_tables():
            return function(*args, **kwargs)

    return wrapper


def open_table(lake: Lake, spec: TableSpec, version: int | None = None) -> DeltaTable | None:
    """The table (at `version`, else the newest), or None when it was never written.

    A directory holding data files but no transaction log is refused: the log
    was lost, and treating the table as new would hide (and later vacuum) its
    history. Inside `reusing_opened_tables`, a table opened before is reused.
    """
    opened = _OPENED.get()
    key = (table_uri(lake, spec), version)  # refuses a store delta-rs cannot reach
    if opened is not None and key in opened:
        table = opened[key]
        if version is None:
            try:
                table.update_incremental()
            except Exception:  # opened afresh below, which names what is wrong
                del opened[key]
                return open_table(lake, spec, version)
        return table
    table = _open_table(lake, spec, version)
    if opened is not None and table is not None:
        opened[key] = table
    return table


def _open_table(lake: Lake, spec: TableSpec, version: int | None) -> DeltaTable | None:
    from deltalake import DeltaTable

    if not has_log(lake, spec):
        found = _data_files_on_disk(lake, spec)
        if found:
            raise LakeError(
                f"the table {table_uri(lake, spec)} holds {len(found)} data files (e.g. "
                f"{lake.url(found[0])}) but no transaction log ({lake.url(spec.log_dir)}): "
                "restore _delta_log from a backup; a lake written before Delta tables is "
                "converted with `churn-platform lake migrate`"
            )
        return None
    try:
        return DeltaTable(
            table_uri(lake, spec), version=version, storage_options=storage_options(lake)
        )
    except Exception as exc:  # deltalake raises several types; each is a damaged or missing log
        raise _log_error(lake, spec, exc, version) from exc


def _log_error(lake: Lake, spec: TableSpec, exc: Exception, version: int | None) -> LakeError:
    detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if len(detail) > 200:  # delta-rs puts whole listings into some messages
        detail = detail[:200] + "…"
    if version is not None:
        newest = _readable_newest(lake, spec)
        if newest is not None and version > newest:
            return LakeError(
                f"{table_uri(lake, spec)} has no version {version} (its newest is {newest}): "
                "the version was recorded against another lake, or this table was restored "
                "from an older backup; point --lake / CHURN_LAKE at the lake it came from"
            )
        if newest is not None or "version" in detail.lower():
            return _retention_error(lake, spec, version, detail)
    return LakeError(
        f"could not read the transaction log {lake.url(spec.log_dir)}: {detail}; restore "
        "_delta_log from a backup (a damaged newest commit file can be moved aside to fall "
        "back to the version before it)"
    )


def _retention_error(lake: Lake, spec: TableSpec, version: int, detail: str) -> LakeError:
    return LakeError(
        f"could not read {table_uri(lake, spec)} as of version {version}: {detail}; the "
        "version's log entries or files were removed by vacuum (`churn-platform lake "
        f"maintain`), which keeps old versions {DEFAULT_RETENTION_HOURS} h by default: raise "
        "CHURN_LAKE_RETENTION_HOURS to keep versions longer, or restore the table from a backup"
    )


def _readable_newest(lake: Lake, spec: TableSpec) -> int | None:
    """The newest version when the table's newest state reads, else None."""
    from deltalake import DeltaTable

    try:
        return DeltaTable(table_uri(lake, spec), storage_options=storage_options(lake)).version()
    except Exception:
        return None


def version(lake: Lake, spec: TableSpec) -> int | None:
    """The table's newest version, or None when it was never written."""
    table = open_table(lake, spec)
    return None if table is None else table.version()


# reading ------------------------------------------------------------------------
def _partition_filters(where: Mapping[str, Any] | None) -> list[tuple[str, str, Any]] | None:
    if not where:
        return None
    filters = []
    for column, wanted in where.items():
        if isinstance(wanted, tuple) and len(wanted) == 2:  # an inclusive range
            low, high = wanted
            if low is not None:
                filters.append((column, ">=", _partition_text(low)))
            if high is not None:
                filters.append((column, "<=", _partition_text(high)))
        elif isinstance(wanted, list | set | frozenset):
            filters.append((column, "in", [_partition_text(v) for v in wanted]))
        else:
            filters.append((column, "=", _partition_text(wanted)))
    return filters


def _partition_text(value: Any) -> str:
    return value.isoformat() if isinstance(value, date) else str(value)


def data_files(
    lake: Lake,
    spec: TableSpec,
    where: Mapping[str, Any] | None = None,
    version: int | None = None,
    table: DeltaTable | None = None,
) -> list[DataFile]:
    """The data files of the table's version (newest by default), pruned by partition.

    `where` maps a partition column to a value, a list of values, or an
    inclusive (low, high) range (either may be None).
    """
    table = table if table is not None else open_table(lake, spec, version)
    if table is None:
        return []
    actions = pa.table(table.get_add_actions(flatten=True))
    keys = [f"partition.{c}" for c in spec.partition_by if f"partition.{c}" in actions.column_names]
    columns = {
        name: actions.column(name).to_pylist()
        for name in ["path", "size_bytes", "num_records", *keys]
    }
    wanted = _partition_filters(where)
    files = []
    for i, path in enumerate(columns["path"]):
        partition = {
            key.removeprefix("partition."): _partition_value(columns[key][i]) for key in keys
        }
        if wanted and not all(_keeps(partition.get(c), op, v) for c, op, v in wanted):
            continue
        files.append(
            DataFile(
                path=path,
                partition=partition,
                size=int(columns["size_bytes"][i]),
                rows=columns["num_records"][i],
            )
        )
    files.sort(key=lambda f: (tuple(sorted((k, v or "") for k, v in f.partition.items())), f.path))
    return files


def partition_files(
    lake: Lake,
    spec: TableSpec,
    partition: Mapping[str, Any],
    missing: Callable[[str], Exception],
    *,
    what: str,
    producer: str,
    version: int | None = None,
) -> list[DataFile]:
    """The data files of one partition (at `version`, else the newest), or `missing` raised.

    An empty partition is an error the reader names: `missing(message)` is raised
    with "no `what` for <partition> in <table>: materialize `producer` for <partition>
    first", so each stage keeps its own error type (`FeaturesMissing`, ...).
    """
    files = data_files(lake, spec, partition, version)
    if not files:
        which = ", ".join(_partition_text(v) for v in partition.values())
        at = f" at version {version}" if version is not None else ""
        raise missing(
            f"no {what} for {which} in {table_uri(lake, spec)}{at}: "
            f"materialize {producer} for {which} first"
        )
    return files


def _partition_value(value: Any) -> str | None:
    return None if value is None else _partition_text(value)


def _keeps(value: str | None, op: str, wanted: Any) -> bool:
    if value is None:
        return False
    if op == "=":
        return value == wanted
    if op == "in":
        return value in wanted
    if op == ">=":
        return value >= wanted
    return value <= wanted  # "<="


def unreferenced_files(lake: Lake, spec: TableSpec) -> list[str]:
    """Lake-relative data files in the table's directory that its newest version does not
    reference: a killed writer's files, or files a compaction replaced (until vacuumed)."""
    referenced = {file_path(spec, f) for f in data_files(lake, spec)}
    return [p for p in _data_files_on_disk(lake, spec) if p not in referenced]


def file_path(spec: TableSpec, data_file: DataFile) -> str:
    """The lake-relative path of a table's data file."""
    from urllib.parse import unquote

    return f"{spec.name}/{unquote(data_file.path)}"


def _missing(lake: Lake, spec: TableSpec, relative: str, version: int | None) -> LakeError:
    if version is not None:  # an old version's file is gone: vacuum, not damage
        return _retention_error(lake, spec, version, f"{lake.url(relative)} is missing")
    return LakeError(
        f"{lake.url(relative)} is missing but the table {table_uri(lake, spec)} references "
        "it: restore the file from a backup (or, to give up its rows, "
        "`churn-platform lake repair` drops it from the table)"
    )


def read_file(
    lake: Lake,
    spec: TableSpec,
    data_file: DataFile,
    columns: Sequence[str] | None = None,
    version: int | None = None,
) -> pa.Table:
    """One committed data file as Arrow, with its partition columns, checksums verified.

    `version`: the table version the file was listed at, when not the newest
    (a missing file is then explained by vacuum).
    """
    relative = file_path(spec, data_file)
    stored = [c for c in columns if c not in spec.partition_by] if columns is not None else None
    try:
        with lake.fs.open(lake.path(relative), "rb") as handle:
            table = pq.read_table(handle, columns=stored, page_checksum_verification=True)
    except FileNotFoundError as exc:
        raise _missing(lake, spec, relative, version) from exc
    except Exception as exc:  # a damaged file must be named, never read as empty
        raise LakeError(
            f"could not read {lake.url(relative)}: {exc}; restore the file from a backup "
            "(or, to give up its rows, delete it and run `churn-platform lake repair`)"
        ) from exc
    for column in spec.partition_by:
        if columns is None or column in columns:
            table = table.append_column(
                column, pa.repeat(pa.scalar(data_file.partition.get(column)), table.num_rows)
            )
    return table


def read_frame(
    lake: Lake, spec: TableSpec, relative: str, columns: Sequence[str] | None = None
) -> pl.DataFrame:
    """One data file (lake-relative path) as polars, in the spec's column types.

    polars' own Parquet reader: faster than pyarrow + from_arrow on raw event
    files (docs/benchmarks.md, Extract). Partition columns are not read (they are
    in the path).
    """
    import polars as pl
    from polars.exceptions import PanicException

    try:
        with lake.fs.open(lake.path(relative), "rb") as handle:
            frame = pl.read_parquet(handle, columns=list(columns) if columns is not None else None)
    except FileNotFoundError as exc:
        raise LakeError(
            f"{lake.url(relative)} is missing but the table {table_uri(lake, spec)} references "
            "it: restore the file from a backup"
        ) from exc
    except (Exception, PanicException) as exc:  # a damaged file is named, never read as empty
        # (polars panics, a BaseException, on some damaged pages)
        raise LakeError(
            f"could not read {lake.url(relative)}: {exc}; restore the file from a backup"
        ) from exc
    return _in_spec_types(frame, spec)


def read_frames(
    lake: Lake,
    spec: TableSpec,
    relatives: Sequence[str],
    columns: Sequence[str],
) -> pl.DataFrame | None:
    """Data files (lake-relative paths) as one polars frame in their order: `read_frame` of
    each, concatenated, in one scan; None where one scan cannot read them (a lake that is
    not local, files whose column types differ, a damaged or missing file): read them
    with `read_frame` one by one then, which names the file at fault.

    One scan of the 900 small files an hour of live extracts leaves took 0.15-0.21 s
    against 1.26 s file by file (docs/benchmarks.md, Freshness).
    """
    import polars as pl
    from polars.exceptions import PanicException

    if not lake.is_local or not relatives:
        return None
    try:
        frame = (
            pl.scan_parquet([lake.path(r) for r in relatives], hive_partitioning=False)
            .select(list(columns))
            .collect()
        )
    except (Exception, PanicException):  # one by one: the error names the file
        return None
    return _in_spec_types(frame, spec)


def read_frames_counted(
    lake: Lake,
    spec: TableSpec,
    relatives: Sequence[str],
    columns: Sequence[str],
) -> tuple[pl.DataFrame, list[int]] | None:
    """`read_frames`, and how many of the frame's rows came from each file, in order.

    The counts are the files' own (their Parquet footers), and must add up to the
    frame's rows; None whenever `read_frames` gives None or they do not.
    """
    import pyarrow.parquet as pq

    frame = read_frames(lake, spec, relatives, columns)
    if frame is None:
        return None
    try:
        heights = [pq.read_metadata(lake.path(r)).num_rows for r in relatives]
    except Exception:  # one by one: the error names the file
        return None
    if sum(heights) != frame.height:
        return None
    return frame, heights


def _in_spec_types(frame: pl.DataFrame, spec: TableSpec) -> pl.DataFrame:
    import polars as pl

    if spec.schema is None:
        return frame
    wanted = _polars_schema(spec)
    casts = [
        pl.col(name).cast(wanted[name])
        for name, kind in frame.schema.items()
        if name in wanted and kind != wanted[name]
    ]
    return frame.with_columns(casts) if casts else frame


@functools.cache
def _polars_schema(spec: TableSpec) -> dict:
    import polars as pl

    return dict(pl.from_arrow(spec.schema.empty_table()).schema)


def read_arrow(
    lake: Lake,
    spec: TableSpec,
    columns: Sequence[str] | None = None,
    where: Mapping[str, Any] | None = None,
    version: int | None = None,
    files: list[DataFile] | None = None,
) -> pa.Table:
    """The committed rows (of partitions `where`, at `version`) as one Arrow table.

    Columns and types are the spec's schema, or for a table whose columns
    follow the data (features, the training set) the table's own schema at
    that version: partition values come back typed, and a column a file lacks
    (added by a later write) is null there. `files` (from `data_files` of the
    same version) skips listing them again.
    """
    table = None
    if files is None or spec.schema is None:
        table = open_table(lake, spec, version)
    if files is None:
        files = [] if table is None else data_files(lake, spec, where, table=table)
    if spec.schema is not None:
        schema = _read_schema(spec.schema, columns)
    elif table is not None:
        schema = _read_schema(pa.schema(table.schema().to_arrow()), columns)
    else:
        return pa.table({})
    tables = [read_file(lake, spec, f, columns, version) for f in files]
    if not tables:
        return schema.empty_table()
    return pa.concat_tables([conform(t, schema) for t in tables])


def read(
    lake: Lake,
    spec: TableSpec,
    columns: Sequence[str] | None = None,
    where: Mapping[str, Any] | None = None,
    version: int | None = None,
) -> pl.DataFrame:
    """The committed rows as a polars frame (see `read_arrow`)."""
    import polars as pl

    return pl.from_arrow(read_arrow(lake, spec, columns, where, version))


def _read_schema(schema: pa.Schema, columns: Sequence[str] | None) -> pa.Schema:
    if columns is None:
        return schema
    return pa.schema([schema.field(c) for c in columns])


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table`'s columns in `schema`'s order and types (partition values come as strings).

    A column `table` lacks is all null (a file written before the column existed).
    """
    arrays = []
    for f in schema:
        if f.name not in table.column_names:
            arrays.append(pa.nulls(table.num_rows, f.type))
            continue
        column = table.column(f.name)
        if column.type != f.type:
            if pa.types.is_string(column.type) and pa.types.is_date(f.type):
                column = pc.cast(pc.strptime(column, "%Y-%m-%d", "s"), f.type)
            else:
                column = column.cast(f.type)
        arrays.append(column)
    return pa.Table.from_arrays(arrays, schema=schema)


def file_metadata(
    lake: Lake, spec: TableSpec, data_file: DataFile, version: int | None = None
) -> dict[str, str]:
    """The key-value metadata `write_file` put into a data file's footer (Arrow's own left out).

    `version` as in `read_file`.
    """
    relative = file_path(spec, data_file)
    try:
        with lake.fs.open(lake.path(relative), "rb") as handle:
            found = pq.read_metadata(handle).metadata or {}
    except FileNotFoundError as exc:
        raise _missing(lake, spec, relative, version) from exc
    except Exception as exc:
        raise LakeError(
            f"could not read the footer of {lake.url(relative)}: {exc}; restore the file from "
            "a backup (or, to give up its rows, delete it and run `churn-platform lake repair`)"
        ) from exc
    return {k.decode(): v.decode() for k, v in found.items() if not k.startswith(b"ARROW:")}


# writing ------------------------------------------------------------------------
def _delta_schema(schema: pa.Schema) -> pa.Schema:
    """`schema` as Delta stores it: timestamps in microseconds (Delta's precision)."""
    fields = []
    for f in schema:
        if pa.types.is_timestamp(f.type) and f.type.unit != "us":
            f = f.with_type(pa.timestamp("us", tz=f.type.tz))
        fields.append(f)
    return pa.schema(fields)


def _stored(table: pa.Table, spec: TableSpec) -> pa.Table:
    """What goes into a data file: no partition columns, Delta's timestamp precision."""
    table = table.drop_columns([c for c in spec.partition_by if c in table.column_names])
    target = _delta_schema(table.schema)
    return table if target == table.schema else table.cast(target)


def file_name(hint: str | None = None) -> str:
    """A data file name no other write uses (a hint first, for people reading listings)."""
    unique = uuid.uuid4().hex
    return f"{hint}-{unique[:16]}.parquet" if hint else f"part-{unique}.parquet"


def partition_dir(spec: TableSpec, partition: Mapping[str, Any]) -> str:
    return "/".join(f"{c}={_partition_text(partition[c])}" for c in spec.partition_by)


def write_file(
    lake: Lake,
    spec: TableSpec,
    table: pa.Table,
    partition: Mapping[str, Any] | None = None,
    name_hint: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> DataFile:
    """Write `table` as a new data file of `spec` (not yet visible: `commit` makes it so).

    `metadata` (text → text) goes into the file's Parquet footer: what a
    reader needs to interpret exactly these rows (a feature table's spec),
    so it can never disagree with them, at any version (`file_metadata`).
    """
    partition = dict(partition or {})
    missing = [c for c in spec.partition_by if c not in partition]
    if missing:
        raise ValueError(f"write_file to {spec.name} needs partition values for {missing}")
    stored = _stored(table, spec)
    if metadata:
        stored = stored.replace_schema_metadata(
            {
                **(stored.schema.metadata or {}),
                **{k.encode(): v.encode() for k, v in metadata.items()},
            }
        )
    directory = partition_dir(spec, partition)
    relative = f"{directory}/{file_name(name_hint)}" if directory else file_name(name_hint)
    sink = io.BytesIO()
    pq.write_table(
        stored,
        sink,
        compression=PARQUET_COMPRESSION,
        use_dictionary=True if spec.dictionary_columns is None else list(spec.dictionary_columns),
        write_statistics=True if spec.statistics_columns is None else list(spec.statistics_columns),
        # a CRC per page (free to write): a reader that verifies it turns a garbled
        # file into an error; without it 8% of garbled data pages read as wrong values
        write_page_checksum=True,
    )
    size = lake.write_bytes(f"{spec.name}/{relative}", sink.getvalue())
    return DataFile(
        path=relative,
        partition={c: _partition_text(partition[c]) for c in spec.partition_by},
        size=size,
        rows=stored.num_rows,
        stats=_stats(stored, spec),
    )


def _stats(table: pa.Table, spec: TableSpec) -> str:
    """Delta file statistics (row count, min/max/nulls of the statistics columns)."""
    columns = spec.statistics_columns
    names = [
        c
        for c in (columns if columns is not None else table.column_names)
        if c in table.column_names
    ]
    low: dict[str, Any] = {}
    high: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for name in names:
        column = table.column(name)
        kind = column.type
        if not (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_timestamp(kind)
            or pa.types.is_date(kind)
            or pa.types.is_string(kind)
        ):
            continue
        nulls[name] = column.null_count
        if column.null_count == len(column):
            continue
        bounds = pc.min_max(column)
        low[name] = _json_value(bounds["min"].as_py())
        high[name] = _json_value(bounds["max"].as_py())
    return json.dumps(
        {"numRecords": table.num_rows, "minValues": low, "maxValues": high, "nullCount": nulls}
    )


def _json_value(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        text = value.isoformat()
        return text.replace("+00:00", "Z") if "+00:00" in text else text
    if isinstance(value, float) and value != value:  # NaN has no JSON form
        return None
    return value


class CommitConflict(LakeError):
    """Another writer kept committing first, `COMMIT_RETRIES` times in a row."""


def commit(
    lake: Lake,
    spec: TableSpec,
    files: Sequence[DataFile],
    *,
    schema: pa.Schema,
    replace: Mapping[str, Any] | None = None,
    replace_all: bool = False,
    transactions: Mapping[str, int] | None = None,
    metadata: Mapping[str, Any] | None = None,
    expect_transactions: Mapping[str, int] | None = None,
) -> int:
    """Make `files` visible in one atomic commit; returns the table's new version.

    `replace` (partition values) or `replace_all` removes what those partitions
    (or the whole table) held in the same commit. `transactions` (app id →
    version) are recorded in the commit as Delta application transactions.
    With `expect_transactions`, the commit is refused when the table's
    transactions moved since (another writer consumed the same offsets).
    """
    from deltalake import CommitProperties, Transaction
    from deltalake.exceptions import CommitFailedError
    from deltalake.transaction import AddAction, create_table_with_add_actions

    now = int(time.time() * 1000)
    adds = [
        AddAction(
            f.path,
            f.size,
            dict(f.partition),
            now,
            True,
            f.stats or json.dumps({"numRecords": f.rows or 0}),
        )
        for f in files
    ]
    properties = CommitProperties(
        custom_metadata={
            k: json.dumps(v) if not isinstance(v, str) else v for k, v in (metadata or {}).items()
        }
        or None,
        app_transactions=[Transaction(app, v) for app, v in (transactions or {}).items()] or None,
        max_commit_retries=COMMIT_RETRIES,
    )
    full_schema = _delta_schema(schema)
    partition_by = list(spec.partition_by) or None
    for attempt in range(COMMIT_RETRIES):
        table = open_table(lake, spec)
        try:
            if table is None:
                from deltalake import Schema

                create_table_with_add_actions(
                    table_uri(lake, spec),
                    Schema.from_arrow(full_schema),
                    adds,
                    mode="error",
                    partition_by=partition_by,
                    configuration=TABLE_CONFIGURATION,
                    storage_options=storage_options(lake),
                    commit_properties=properties,
                )
            else:
                if expect_transactions is not None:
                    moved = {
                        app: (want, table.transaction_version(app))
                        for app, want in expect_transactions.items()
                        if (table.transaction_version(app) or 0) != (want or 0)
                    }
                    if moved:
                        raise CommitConflict(
                            f"another writer committed to {table_uri(lake, spec)} first "
                            + ", ".join(
                                f"{a}: expected {w}, found {f}" for a, (w, f) in moved.items()
                            )
                            + "; nothing of this run was committed, rerun it"
                        )
                mode = "overwrite" if (replace is not None or replace_all) else "append"
                table.create_write_transaction(
                    adds,
                    mode=mode,
                    schema=_merged_schema(table, full_schema),
                    partition_by=partition_by,
                    partition_filters=_partition_filters(replace) if replace is not None else None,
                    commit_properties=properties,
                )
        except CommitFailedError as exc:
            if attempt + 1 == COMMIT_RETRIES:
                raise CommitConflict(
                    f"could not commit to {table_uri(lake, spec)}: {exc}; other writers kept "
                    "committing first, rerun"
                ) from exc
            time.sleep(min(0.05 * (attempt + 1), 0.5))
            continue
        except LakeError:
            raise
        except Exception as exc:
            if table is None and "already exists" in str(exc).lower():
                continue  # another writer created it first: commit against theirs
            raise _commit_failure(lake, spec, exc, len(files)) from exc
        if table is None:
            return _newest_version(lake, spec)
        table.update_incremental()
        return table.version()
    raise CommitConflict(
        f"could not commit to {table_uri(lake, spec)}: other writers kept committing first, rerun"
    )


def _commit_failure(lake: Lake, spec: TableSpec, exc: Exception, files: int) -> LakeError:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    hint = write_hint(detail) or ("nothing of this write became visible; fix the cause and rerun")
    return LakeError(
        f"could not write {lake.url(spec.log_dir)} (the commit of {files} data files): "
        f"{detail}; {hint}"
    )


def _merged_schema(table: DeltaTable, schema: pa.Schema) -> pa.Schema:
    """The table's schema plus `schema`'s new columns (a new event type adds feature columns)."""
    current = pa.schema(table.schema().to_arrow())
    have = set(current.names)
    extra = [f for f in schema if f.name not in have]
    return pa.schema(list(current) + extra) if extra else current


def _newest_version(lake: Lake, spec: TableSpec) -> int:
    table = open_table(lake, spec)
    assert table is not None
    return table.version()


def create(lake: Lake, spec: TableSpec, schema: pa.Schema) -> int | None:
    """Create the table empty unless it has a log already; returns its version (None: it had)."""
    if has_log(lake, spec):
        return None
    return commit(lake, spec, [], schema=schema)


def write(
    lake: Lake,
    spec: TableSpec,
    table: pa.Table,
    *,
    replace: Mapping[str, Any] | None = None,
    replace_all: bool = False,
    metadata: Mapping[str, Any] | None = None,
    name_hint: str | None = None,
    file_metadata: Mapping[str, str] | None = None,
    keep_empty: bool = False,
) -> int:
    """Write `table` into one partition (`replace` names it) or the whole table, atomically.

    The rows of a partitioned table must all belong to the `replace`d partition.
    `metadata` goes into the commit (operators see it in the table's history),
    `file_metadata` into the data file's footer (see `write_file`). An empty
    partition gets no file unless `keep_empty`: then an empty file records
    that the partition was computed and holds no rows (and its footer).
    Returns the new version.
    """
    partition = dict(replace or {})
    schema = table.schema
    for column in spec.partition_by:
        if column not in schema.names:
            kind = pa.date32() if isinstance(partition.get(column), date) else pa.string()
            schema = schema.append(pa.field(column, kind))
    create(lake, spec, schema)  # before any file: files without a log are refused
    written = (
        [write_file(lake, spec, table, partition, name_hint, file_metadata)]
        if table.num_rows or not spec.partition_by or keep_empty
        else []
    )
    return commit(
        lake,
        spec,
        written,
        schema=schema,
        replace=replace,
        replace_all=replace_all,
        metadata=metadata,
    )


# application transactions (the extract's offsets) --------------------------------
def offsets_app_id(topic: str, partition: int) -> str:
    """The application transaction id under which a table records a topic partition's offset."""
    return f"churn-platform-extract/{topic}/{partition}"


def committed_offsets(
    lake: Lake, spec: TableSpec, topic: str, partitions: Iterable[int] | None = None
) -> dict[int, int]:
    """partition → the next offset the table holds for `topic` (what its commits recorded).

    Without `partitions`, every partition the commits name (the extract records
    all of a topic's partitions, so they are 0..n-1).
    """
    table = open_table(lake, spec)
    if table is None:
        return {}
    return offsets_in(table, topic, partitions)


def offsets_in(
    table: DeltaTable, topic: str, partitions: Iterable[int] | None = None
) -> dict[int, int]:
    found: dict[int, int] = {}
    if partitions is not None:
        for p in partitions:
            v = table.transaction_version(offsets_app_id(topic, p))
            if v is not None:
                found[p] = v
        return found
    p = 0
    while (v := table.transaction_version(offsets_app_id(topic, p))) is not None:
        found[p] = v
        p += 1
    return found


__all__ = [
    "DEFAULT_RETENTION_HOURS",
    "FEATURES",
    "LABELS",
    "QUARANTINE",
    "RAW_EVENTS",
    "SCORES",
    "TABLES",
    "TRAINING_SET",
    "CommitConflict",
    "DataFile",
    "TableSpec",
    "commit",
    "committed_offsets",
    "create",
    "data_files",
    "file_metadata",
    "open_table",
    "partition_files",
    "read",
    "read_arrow",
    "read_file",
    "version",
    "write",
    "write_file",
]

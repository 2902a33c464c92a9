"""The raw event table and its quarantine: what the extract committed, and how far.

Both are Delta tables (`tables.RAW_EVENTS`, `tables.QUARANTINE`). How far a
topic partition is extracted is recorded in the raw table's commits as a Delta
application transaction per partition (`tables.offsets_app_id`), in the same
commit that adds the rows: the next offset to read. The quarantine table
records its own in the same way; it commits first, so it is never behind the
raw table, and a rerun after a crash between the two commits skips the rejects
it already holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING

import pyarrow as pa

from churn_platform.events.contract import QUARANTINE_SCHEMA, RAW_EVENTS_SCHEMA
from churn_platform.lake import tables
from churn_platform.lake.store import Lake, LakeError
from churn_platform.lake.tables import QUARANTINE, RAW_EVENTS, DataFile

if TYPE_CHECKING:
    import polars as pl

LEGACY_LEDGER_DIR = "raw/_ledger"
MIGRATION_MARKER = "_legacy/MIGRATING"  # lake.migrate.MARKER


class LegacyLake(LakeError):
    """The lake was written before its tables were Delta tables: it must be migrated first."""


def refuse_legacy(lake: Lake) -> None:
    """Raise LegacyLake while the lake holds a ledger of the old layout (until migrated)."""
    ledgers = lake.list_files(LEGACY_LEDGER_DIR, ".json")
    if not ledgers and lake.exists(MIGRATION_MARKER):
        raise LegacyLake(
            f"the lake {lake.uri} is being migrated to Delta tables ({lake.url(MIGRATION_MARKER)} "
            "exists): run `churn-platform lake migrate` again to finish it"
        )
    if ledgers:
        raise LegacyLake(
            f"the lake {lake.uri} was written before its tables were Delta tables (ledger "
            f"{lake.url(ledgers[0])}): convert it once with `churn-platform lake migrate`, "
            "which keeps every row once"
        )


def ensure_tables(lake: Lake) -> None:
    """Create the raw and quarantine tables (empty) unless they exist: before any data file."""
    refuse_legacy(lake)
    tables.create(lake, RAW_EVENTS, RAW_EVENTS_SCHEMA)
    tables.create(lake, QUARANTINE, QUARANTINE_SCHEMA)


def extracted_offsets(
    lake: Lake, topic: str, partitions: Iterable[int] | None = None
) -> dict[int, int]:
    """partition → the next offset of `topic` the raw table holds (0 when never extracted)."""
    refuse_legacy(lake)
    found = tables.committed_offsets(lake, RAW_EVENTS, topic, partitions)
    if partitions is None:
        return found
    return {p: found.get(p, 0) for p in partitions}


def quarantined_offsets(lake: Lake, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    """partition → the next offset of `topic` the quarantine table holds rejects up to."""
    found = tables.committed_offsets(lake, QUARANTINE, topic, partitions)
    return {p: found.get(p, 0) for p in partitions}


def commit_extract(
    lake: Lake,
    topic: str,
    starts: Mapping[int, int],
    ends: Mapping[int, int],
    raw_files: Sequence[DataFile],
    quarantine_files: Sequence[DataFile],
    run_id: str | None = None,
    fault_hook: Callable[[str], None] | None = None,
) -> int | None:
    """Make an extract's files visible and record how far it read, atomically per table.

    The quarantine commit comes first (when there is anything to add); the raw
    commit then adds the rows and moves every partition's offset from `starts`
    to `ends` in one commit, refused when another writer moved them since
    (`tables.CommitConflict`: nothing of this run becomes visible). Returns the
    raw table's new version, or None when nothing moved.
    """
    # every partition 0..n-1 is recorded, so the partitions are known without Kafka
    top = max([*ends, *starts], default=-1)
    starts = {p: starts.get(p, 0) for p in range(top + 1)}
    ends = {p: ends.get(p, starts[p]) for p in range(top + 1)}
    if ends == starts and not raw_files and not quarantine_files:
        return None
    offsets = {tables.offsets_app_id(topic, p): end for p, end in ends.items()}
    metadata = {"churn_platform.operation": "extract", "churn_platform.topic": topic}
    if run_id:
        metadata["churn_platform.run_id"] = run_id
    if quarantine_files:
        tables.commit(
            lake,
            QUARANTINE,
            quarantine_files,
            schema=QUARANTINE_SCHEMA,
            transactions=offsets,
            metadata=metadata,
        )
    if fault_hook:
        fault_hook("quarantine_committed")
    expected = {tables.offsets_app_id(topic, p): s for p, s in starts.items()}
    return tables.commit(
        lake,
        RAW_EVENTS,
        raw_files,
        schema=RAW_EVENTS_SCHEMA,
        transactions=offsets,
        metadata=metadata,
        expect_transactions=expected,
    )


def raw_files(
    lake: Lake, start: date | None = None, end: date | None = None, version: int | None = None
) -> list[DataFile]:
    """The raw table's data files of event dates in [start, end] (all when unbounded)."""
    refuse_legacy(lake)
    where = {"event_date": (start, end)} if (start or end) else None
    return tables.data_files(lake, RAW_EVENTS, where, version)


def snapshot(
    lake: Lake, topic: str, partitions: Iterable[int]
) -> tuple[list[DataFile], dict[int, int]]:
    """The raw table's data files and `topic`'s next offsets, both of one version."""
    refuse_legacy(lake)
    table = tables.open_table(lake, RAW_EVENTS)
    if table is None:
        return [], {p: 0 for p in partitions}
    found = tables.offsets_in(table, topic, partitions)
    files = tables.data_files(lake, RAW_EVENTS, table=table)
    return files, {p: found.get(p, 0) for p in partitions}


def raw_path(f: DataFile) -> str:
    """The lake-relative path of a raw data file (what read tasks pass around)."""
    return tables.file_path(RAW_EVENTS, f)


def event_date_of(path: str) -> date | None:
    """The event date of a raw data file, from its partition directory."""
    for part in path.split("/"):
        if part.startswith("event_date="):
            return date.fromisoformat(part.removeprefix("event_date="))
    return None


def event_days(lake: Lake) -> list[date]:
    """The event dates the raw table holds rows of, sorted (from the commit log alone)."""
    days = {f.partition.get("event_date") for f in raw_files(lake)}
    return sorted(date.fromisoformat(d) for d in days if d)


def read_raw_file(lake: Lake, path: str, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """One raw data file's columns (lake-relative path), in the contract's types."""
    return tables.read_frame(lake, RAW_EVENTS, path, columns)


def read_raw_events(
    lake: Lake,
    topics: Iterable[str] | None = None,
    start: date | None = None,
    end: date | None = None,
) -> pl.DataFrame:
    """All committed raw events (of `topics`; of event dates in [start, end])."""
    import polars as pl

    refuse_legacy(lake)
    where = {"event_date": (start, end)} if (start or end) else None
    frame = pl.from_arrow(tables.read_arrow(lake, RAW_EVENTS, where=where))
    if topics is not None:
        frame = frame.filter(pl.col("_topic").is_in(list(topics)))
    return frame


def read_quarantine(lake: Lake, topics: Iterable[str] | None = None) -> pl.DataFrame:
    """All committed quarantined messages with their reasons."""
    import polars as pl

    refuse_legacy(lake)
    frame = pl.from_arrow(tables.read_arrow(lake, QUARANTINE))
    if topics is not None:
        frame = frame.filter(pl.col("topic").is_in(list(topics)))
    return frame


def forget_topic(lake: Lake, topic: str) -> int:
    """Remove `topic`'s rows from the raw and quarantine tables and reset its offsets to 0.

    Each table in one commit (rows and offsets together); the raw table first,
    so a crash between the two leaves the quarantine ahead, which the next
    extract already handles. The removed files stay until `lake maintain`
    vacuums them (time travel reaches them until then). Returns the rows removed.
    """
    from deltalake import CommitProperties, Transaction

    removed = 0
    for spec, column in ((RAW_EVENTS, "_topic"), (QUARANTINE, "topic")):
        table = tables.open_table(lake, spec)
        if table is None:
            continue
        offsets = tables.offsets_in(table, topic)
        quoted = topic.replace("'", "''")
        try:
            metrics = table.delete(
                f"{column} = '{quoted}'",
                commit_properties=CommitProperties(
                    app_transactions=[
                        Transaction(tables.offsets_app_id(topic, p), 0) for p in offsets
                    ]
                    or None,
                    custom_metadata={
                        "churn_platform.operation": "forget_topic",
                        "churn_platform.topic": topic,
                    },
                ),
            )
        except Exception as exc:
            raise LakeError(
                f"could not remove {topic!r} from {tables.table_uri(lake, spec)}: {exc}"
            ) from exc
        if spec is RAW_EVENTS:
            removed += int(metrics.get("num_deleted_rows", 0) or 0)
    return removed


def append_rows(
    lake: Lake,
    topic: str,
    rows: pa.Table,
    quarantine: pa.Table | None = None,
    ends: Mapping[int, int] | None = None,
    run_id: str | None = None,
) -> int | None:
    """Commit `rows` (RAW_EVENTS_SCHEMA, offsets past the table's) as the extract would.

    One data file per (partition, event date); every partition's offset moves to
    `ends` (default: one past its last row) in the same commit. For tools that
    bring rows from elsewhere: the migration, replays into a test lake.
    """
    import pyarrow.compute as pc

    ensure_tables(lake)
    rows = rows.select(RAW_EVENTS_SCHEMA.names).cast(RAW_EVENTS_SCHEMA)
    partitions = sorted(set(pc.unique(rows["_partition"]).to_pylist()) | set(ends or {}))
    held = extracted_offsets(lake, topic)  # one read of the table's offsets
    starts = {p: held.get(p, 0) for p in sorted(set(partitions) | set(held))}
    files = []
    if rows.num_rows:
        rows = rows.sort_by(
            [("_partition", "ascending"), ("event_date", "ascending"), ("_offset", "ascending")]
        )
        keys = (
            rows.group_by(["_partition", "event_date"], use_threads=False)
            .aggregate([("_offset", "min"), ("_offset", "max"), ("_offset", "count")])
            .sort_by([("_partition", "ascending"), ("event_date", "ascending")])
        )
        start = 0
        for partition, day, first, last, count in zip(
            *(
                keys.column(n).to_pylist()
                for n in ("_partition", "event_date", "_offset_min", "_offset_max", "_offset_count")
            ),
            strict=True,
        ):
            if first < starts.get(partition, 0):
                raise ValueError(f"offset {first} of partition {partition} is already in the lake")
            files.append(
                tables.write_file(
                    lake,
                    RAW_EVENTS,
                    rows.slice(start, count),
                    {"event_date": day},
                    f"{topic}-p{partition}-{first:020d}-{last:020d}",
                )
            )
            start += count
    moved = dict(starts)
    if ends is not None:
        moved.update(ends)
    elif rows.num_rows:
        last_rows = rows.group_by("_partition").aggregate([("_offset", "max")])
        for partition, last in zip(
            *(last_rows.column(n).to_pylist() for n in ("_partition", "_offset_max")), strict=True
        ):
            moved[partition] = max(moved.get(partition, 0), last + 1)
    quarantine_files = []
    if quarantine is not None and quarantine.num_rows:
        quarantine_files.append(
            tables.write_file(
                lake, QUARANTINE, quarantine.cast(QUARANTINE_SCHEMA), {}, f"{topic}-quarantine"
            )
        )
    return commit_extract(lake, topic, starts, moved, files, quarantine_files, run_id=run_id)

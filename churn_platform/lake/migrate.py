"""Converting a lake written before Delta tables (range files + a JSON ledger) in place.

First the old layout's files (range files, ledgers, a crashed run's leftovers,
derived tables) move under `_legacy/`, so the tables' directories hold only
what their logs reference; a marker (`_legacy/MIGRATING`) keeps every reader
and the extract refusing until the migration finished. Then, for each topic
with a ledger, the files the ledger committed (never a crashed run's files
beyond it) are rewritten as data files of the raw and quarantine tables and
referenced in one commit per table, with the ledger's offsets as the tables'
application transactions, so the extract goes on exactly where the ledger
was; the set of (partition, offset) is checked against what the ledger
committed. Nothing is deleted: remove `_legacy/` once satisfied. Derived
tables (features, labels, scores, training set) are recomputed by the
platform from the raw events.

Running it again is safe: a topic whose offsets the raw table already holds is
not converted twice, and an interrupted run goes on where it stopped.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from churn_platform.events.contract import QUARANTINE_SCHEMA, RAW_EVENTS_SCHEMA
from churn_platform.lake import legacy, raw, tables
from churn_platform.lake.ledger import read_ledger
from churn_platform.lake.paths import LEDGER_DIR, QUARANTINE_DIR, RAW_EVENTS_DIR
from churn_platform.lake.store import Lake, LakeError

LEGACY_DIR = "_legacy"
MARKER = raw.MIGRATION_MARKER
# old derived tables: recomputed from the raw events after the migration
DERIVED_DIRS = (
    "features/customer_features",
    "labels/churn_labels",
    "ml/training_set",
    "scores/churn_scores",
)
# rows per rewritten data file batch (bounded memory on large lakes)
BATCH_ROWS = 2_000_000


@dataclass
class TopicMigration:
    topic: str
    offsets: dict[int, int]
    rows: int = 0
    quarantined: int = 0
    files_read: int = 0
    files_written: int = 0
    already: bool = False

    def as_dict(self) -> dict:
        return {
            "topic": self.topic,
            "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
            "rows": self.rows,
            "quarantined": self.quarantined,
            "files_read": self.files_read,
            "files_written": self.files_written,
            "already_migrated": self.already,
        }


@dataclass
class Migration:
    lake: str
    topics: list[TopicMigration] = field(default_factory=list)
    moved: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        return {
            "lake": self.lake,
            "topics": [t.as_dict() for t in self.topics],
            "legacy_files_moved": self.moved,
            "legacy_dir": LEGACY_DIR,
            "seconds": round(self.seconds, 2),
        }

    def describe(self) -> str:
        if not self.topics and not self.moved:
            return f"{self.lake}: nothing to migrate (no ledger of the old layout)"
        parts = [
            f"{t.topic!r}: "
            + (
                "already migrated"
                if t.already
                else f"{t.rows:,} rows and {t.quarantined:,} quarantined from {t.files_read} "
                f"files into {t.files_written}"
            )
            + f", offsets {dict(sorted(t.offsets.items()))}"
            for t in self.topics
        ]
        return (
            f"migrated {self.lake} to Delta tables in {self.seconds:.1f} s: "
            + "; ".join(parts)
            + f"; {self.moved} old files moved under {LEGACY_DIR}/ (remove it once satisfied)"
        )


def migrate(lake: Lake) -> Migration:
    """Convert every topic of the old layout; see the module docstring."""
    started = time.perf_counter()
    result = Migration(lake=lake.uri)
    if not legacy.ledger_topics(lake) and not lake.exists(MARKER):
        result.seconds = time.perf_counter() - started
        return result
    lake.write_bytes(MARKER, b"churn-platform lake migrate is converting this lake\n")
    result.moved = _move_legacy(lake)
    old = legacy_lake(lake)
    topics = legacy.ledger_topics(old)
    tables.create(lake, tables.RAW_EVENTS, RAW_EVENTS_SCHEMA)
    tables.create(lake, tables.QUARANTINE, QUARANTINE_SCHEMA)
    for topic in topics:
        result.topics.append(_migrate_topic(lake, old, topic))
    lake.remove(MARKER)
    result.seconds = time.perf_counter() - started
    return result


def legacy_lake(lake: Lake) -> Lake:
    """The moved old layout, as a lake of its own (the old readers work on it unchanged)."""
    return Lake(f"{lake.uri.rstrip('/')}/{LEGACY_DIR}")


def _migrate_topic(lake: Lake, old: Lake, topic: str) -> TopicMigration:
    ledger = read_ledger(old, topic)
    outcome = TopicMigration(topic=topic, offsets=dict(ledger.offsets))
    found = tables.committed_offsets(lake, tables.RAW_EVENTS, topic, ledger.offsets)
    held = {p: found.get(p, 0) for p in ledger.offsets}
    if ledger.offsets and held == ledger.offsets:
        outcome.already = True  # committed by an earlier run that stopped before moving
        return outcome
    if any(held.values()):
        raise LakeError(
            f"the raw table {lake.url(tables.RAW_EVENTS.name)} already holds offsets "
            f"{held} of {topic!r}, which differ from the old ledger's {ledger.offsets}: both "
            "layouts were written to; move one of them away before migrating"
        )
    raw_files = legacy.committed(old, RAW_EVENTS_DIR, [topic])
    quarantine_files = legacy.committed(old, QUARANTINE_DIR, [topic])
    outcome.files_read = len(raw_files) + len(quarantine_files)

    written: list[tables.DataFile] = []
    expected_rows = 0
    by_day: dict[str, list] = defaultdict(list)
    for f in raw_files:
        by_day[str(raw.event_date_of(f.path))].append(f)
    for day in sorted(by_day):
        batch: list[pa.Table] = []
        rows = 0
        for f in by_day[day]:
            table = legacy.read_range_file(old, f, RAW_EVENTS_SCHEMA)
            batch.append(table)
            rows += table.num_rows
            if rows >= BATCH_ROWS:
                written += _write_raw(lake, topic, pa.concat_tables(batch))
                expected_rows += rows
                batch, rows = [], 0
        if batch:
            written += _write_raw(lake, topic, pa.concat_tables(batch))
            expected_rows += rows
    quarantined = [legacy.read_range_file(old, f, QUARANTINE_SCHEMA) for f in quarantine_files]
    q_written = []
    if quarantined:
        table = pa.concat_tables(quarantined)
        outcome.quarantined = table.num_rows
        q_written.append(tables.write_file(lake, tables.QUARANTINE, table, {}, f"{topic}-migrated"))
    outcome.files_written = len(written) + len(q_written)
    starts = {p: 0 for p in ledger.offsets}
    raw.commit_extract(lake, topic, starts, ledger.offsets, written, q_written, run_id="migration")
    outcome.rows = expected_rows
    _verify(lake, old, topic, raw_files)
    return outcome


def _write_raw(lake: Lake, topic: str, table: pa.Table) -> list[tables.DataFile]:
    """Data files of one event date's rows, a file per Kafka partition (as the extract writes)."""
    table = table.sort_by([("_partition", "ascending"), ("_offset", "ascending")])
    files = []
    for partition in sorted(set(table["_partition"].to_pylist())):
        part = table.filter(pc.equal(table["_partition"], partition))
        first, last = part["_offset"][0].as_py(), part["_offset"][-1].as_py()
        day = part["event_date"][0].as_py()
        files.append(
            tables.write_file(
                lake,
                tables.RAW_EVENTS,
                part,
                {"event_date": day},
                f"{topic}-p{partition}-{first:020d}-{last:020d}",
            )
        )
    return files


def _verify(lake: Lake, old: Lake, topic: str, legacy_files: list) -> None:
    """The table holds exactly the old committed rows of `topic`: same (partition, offset) set."""
    import polars as pl

    new = (
        pl.from_arrow(
            tables.read_arrow(lake, tables.RAW_EVENTS, ["_topic", "_partition", "_offset"])
        )
        .filter(pl.col("_topic") == topic)
        .select("_partition", "_offset")
    )
    held = legacy._read(old, legacy_files, RAW_EVENTS_SCHEMA).select("_partition", "_offset")
    if new.height != held.height or not new.sort(pl.all()).equals(held.sort(pl.all())):
        raise LakeError(
            f"the migrated raw table holds {new.height} rows of {topic!r} but the old layout "
            f"committed {held.height}: the old files are kept under {old.uri}; report this "
            "with the lake's listing"
        )


def _move_legacy(lake: Lake) -> int:
    """Move the old layout's files (data, ledgers, temp files, derived tables) under _legacy/."""
    moved = 0
    for directory in (RAW_EVENTS_DIR, QUARANTINE_DIR):
        for f in legacy.range_files(lake, directory):
            moved += _move(lake, f.path)
        for path in lake.temp_files(directory):
            if f"/{tables.LOG_DIR}/" not in path:
                moved += _move(lake, path)
    for path in lake.list_files(LEDGER_DIR) + lake.temp_files(LEDGER_DIR):
        moved += _move(lake, path)
    for directory in DERIVED_DIRS:
        spec = next(s for s in tables.TABLES if s.name == directory)
        if tables.has_log(lake, spec):
            continue  # already a Delta table
        for path in lake.list_files(directory) + lake.temp_files(directory):
            moved += _move(lake, path)
    return moved


def _move(lake: Lake, relative: str) -> int:
    target = f"{LEGACY_DIR}/{relative}"
    try:
        lake.fs.makedirs(lake.path(target).rpartition("/")[0], exist_ok=True)
        lake.fs.mv(lake.path(relative), lake.path(target))
    except OSError as exc:
        raise LakeError(
            f"could not move {lake.url(relative)} to {lake.url(target)}: {exc}; fix the cause "
            "and run `churn-platform lake migrate` again (it goes on where it stopped)"
        ) from exc
    return 1

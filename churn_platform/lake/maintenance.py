"""Compaction and retention of the lake's tables: few files to read, bounded storage and log.

The extract commits one small file per (Kafka partition, event date) every
~10 s: ~17,000 files a day in RAW_EVENTS, and a reader pays per file. Three
operations keep every table cheap to read, each a Delta commit that never
conflicts with an append (optimistic concurrency; `tables.commit` retries an
append that lost a race against the newest version):

1. `compact`: per partition holding more than `MIN_SMALL_FILES` files smaller
   than the target size, delta-rs bin-packs them into target-size files and
   commits with dataChange=false (the rows, and the extract's offsets in the
   table's application transactions, are unchanged). A partition another
   writer replaced meanwhile is skipped and compacted next time.
2. `vacuum`: deletes data files no commit of the last `retention_hours`
   references: files compaction replaced, and files of writers killed before
   their commit. It runs delta-rs's *full* vacuum: the default ("lite") mode
   only knows files the log removed, never a killed writer's. Both modes keep
   every file younger than the retention (its modification time), which
   protects what a running extract wrote but has not committed yet, and what a
   reader that started before a compaction still reads: the retention must be
   longer than the longest run (`check_retention`).
3. a checkpoint and log cleanup (`create_checkpoint`, `cleanup_metadata`):
   commit files older than the retention go, so `_delta_log` stays bounded;
   the table's `delta.logRetentionDuration` / `delta.deletedFileRetentionDuration`
   follow the retention used, so time travel reaches exactly as far back.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from churn_platform.lake import tables
from churn_platform.lake.store import Lake, LakeError

if TYPE_CHECKING:
    from deltalake import DeltaTable

RETENTION_ENV = "CHURN_LAKE_RETENTION_HOURS"
MIN_RETENTION_HOURS = 1
# Delta's own default target; a day of raw events (~17,000 files) is far below it
TARGET_FILE_BYTES = 100 * 1024 * 1024
# a partition with this many small files or fewer is left alone: rewriting it
# would cost more than its reader saves
MIN_SMALL_FILES = 8


@dataclass(frozen=True)
class PartitionCompaction:
    """What compaction did (or, in a dry run, would do) to one partition."""

    partition: Mapping[str, str | None]
    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    seconds: float
    skipped: str = ""  # why nothing was committed, when it was not

    def label(self) -> str:
        return "/".join(f"{k}={v}" for k, v in self.partition.items()) or "(unpartitioned)"


@dataclass(frozen=True)
class Compaction:
    """A table's compaction: the partitions rewritten and the table's files before and after."""

    table: str
    files_before: int
    files_after: int
    bytes_before: int
    bytes_after: int
    seconds: float
    partitions: tuple[PartitionCompaction, ...] = ()
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        found = asdict(self)
        found["partitions"] = [
            {**asdict(p), "partition": dict(p.partition)} for p in self.partitions
        ]
        return found


@dataclass(frozen=True)
class Vacuum:
    """A table's vacuum and log cleanup."""

    table: str
    retention_hours: int
    removed_files: int
    log_files_before: int
    log_files_after: int
    seconds: float
    removed: tuple[str, ...] = field(default=(), repr=False)  # the first few, for people
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"removed": list(self.removed)}


# settings -------------------------------------------------------------------------
def retention_from_env(environ: Mapping[str, str] | None = None) -> int:
    """`CHURN_LAKE_RETENTION_HOURS` as whole hours, else the default (a week)."""
    environ = os.environ if environ is None else environ
    configured = (environ.get(RETENTION_ENV) or "").strip()
    if not configured:
        return tables.DEFAULT_RETENTION_HOURS
    return parse_retention(configured, RETENTION_ENV)


def parse_retention(text: str, name: str = RETENTION_ENV) -> int:
    """`text` as whole hours of at least `MIN_RETENTION_HOURS`; a bad value names `name`."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value == int(value) and value >= MIN_RETENTION_HOURS):
        raise ValueError(
            f"{name}={text!r} is not a whole number of hours of at least "
            f"{MIN_RETENTION_HOURS}: set it to e.g. {tables.DEFAULT_RETENTION_HOURS} "
            f"(the default, a week), or {'leave it out' if name.startswith('-') else 'unset it'}"
        )
    return int(value)


def check_retention(hours: int, longest_run_hours: float = 0.0, name: str = RETENTION_ENV) -> int:
    """`hours`, refused when shorter than `MIN_RETENTION_HOURS` or than the longest run.

    A run that wrote files it has not committed yet, or that reads a snapshot
    a compaction replaced, loses them to a vacuum once they are older than the
    retention: the retention must outlast every run.
    """
    if hours < MIN_RETENTION_HOURS:
        raise ValueError(
            f"{name}={hours} is below {MIN_RETENTION_HOURS} h: files a running extract has "
            "written but not committed yet would be deleted; set it to e.g. "
            f"{tables.DEFAULT_RETENTION_HOURS} (the default, a week)"
        )
    if hours < longest_run_hours:
        raise ValueError(
            f"{name}={hours} is shorter than the longest run ({longest_run_hours:.1f} h): "
            "vacuum would delete files that run was writing or reading; set it to at least "
            f"{math.ceil(longest_run_hours)} (default {tables.DEFAULT_RETENTION_HOURS})"
        )
    return hours


def find_tables(names: Sequence[str] | None) -> tuple[tables.TableSpec, ...]:
    """The tables named (by `TableSpec.name`), or every table; an unknown name says which exist."""
    if not names:
        return tables.TABLES
    by_name = {spec.name: spec for spec in tables.TABLES}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(
            f"no lake table named {', '.join(map(repr, unknown))}: use one of " + ", ".join(by_name)
        )
    return tuple(by_name[n] for n in names)


# compaction -----------------------------------------------------------------------
def _key(data_file: tables.DataFile) -> tuple[tuple[str, str | None], ...]:
    return tuple(sorted(data_file.partition.items()))


def plan(
    files: Sequence[tables.DataFile],
    target_bytes: int = TARGET_FILE_BYTES,
    min_small_files: int = MIN_SMALL_FILES,
) -> dict[tuple[tuple[str, str | None], ...], list[tables.DataFile]]:
    """partition → its files, for the partitions with more than `min_small_files` small files."""
    by_partition: dict[tuple[tuple[str, str | None], ...], list[tables.DataFile]] = {}
    for f in files:
        by_partition.setdefault(_key(f), []).append(f)
    return {
        key: found
        for key, found in by_partition.items()
        if sum(f.size < target_bytes for f in found) > min_small_files
    }


def compact(
    lake: Lake,
    spec: tables.TableSpec,
    *,
    target_bytes: int = TARGET_FILE_BYTES,
    min_small_files: int = MIN_SMALL_FILES,
    dry_run: bool = False,
) -> Compaction:
    """Bin-pack the small files of each partition that has many into target-size files.

    Cheap when there is nothing to do: one read of the log, no data file opened.
    """
    from deltalake import WriterProperties
    from deltalake.exceptions import CommitFailedError

    started = time.monotonic()
    table = tables.open_table(lake, spec)
    if table is None:
        return Compaction(spec.name, 0, 0, 0, 0, time.monotonic() - started, dry_run=dry_run)
    files = tables.data_files(lake, spec, table=table)
    done = []
    for key, found in plan(files, target_bytes, min_small_files).items():
        partition = dict(key)
        size = sum(f.size for f in found)
        if dry_run or any(v is None for v in partition.values()):
            reason = "dry run" if dry_run else "a null partition value"
            done.append(_untouched(partition, found, 0.0, reason))
            continue
        began = time.monotonic()
        try:
            metrics = table.optimize.compact(
                partition_filters=[(c, "=", v) for c, v in partition.items()] or None,
                target_size=target_bytes,
                # the lake's codec (tables.write_file); delta-rs would write snappy
                writer_properties=WriterProperties(compression="ZSTD"),
                commit_properties=_commit_properties(),
            )
        except CommitFailedError as exc:  # the partition was replaced meanwhile
            reason = (
                f"another writer changed the partition first ({_first_line(exc)}); "
                "compacted next time"
            )
            done.append(_untouched(partition, found, time.monotonic() - began, reason))
            table = tables.open_table(lake, spec) or table
            continue
        except Exception as exc:  # deltalake raises several types; name the table and the fix
            raise LakeError(
                f"could not compact {tables.table_uri(lake, spec)} partition "
                f"{partition}: {_first_line(exc)}; nothing was committed, rerun "
                "`churn-platform lake maintain`"
            ) from exc
        added, removed = _file_stats(metrics, "filesAdded"), _file_stats(metrics, "filesRemoved")
        done.append(
            PartitionCompaction(
                partition,
                len(found),
                len(found) - removed["totalFiles"] + added["totalFiles"],
                size,
                size - removed["totalSize"] + added["totalSize"],
                time.monotonic() - began,
            )
        )
    after = files if dry_run or not done else tables.data_files(lake, spec)
    return Compaction(
        spec.name,
        files_before=len(files),
        files_after=len(after),
        bytes_before=sum(f.size for f in files),
        bytes_after=sum(f.size for f in after),
        seconds=time.monotonic() - started,
        partitions=tuple(done),
        dry_run=dry_run,
    )


def _untouched(
    partition: dict, found: Sequence[tables.DataFile], seconds: float, reason: str
) -> PartitionCompaction:
    """A partition planned for compaction and left as it was, with the reason."""
    size = sum(f.size for f in found)
    return PartitionCompaction(
        partition, len(found), len(found), size, size, seconds, skipped=reason
    )


def _commit_properties():
    from deltalake import CommitProperties

    return CommitProperties(max_commit_retries=tables.COMMIT_RETRIES)


def _file_stats(metrics: Mapping[str, Any], name: str) -> dict[str, int]:
    value = metrics.get(name) or {}
    if isinstance(value, str):
        value = json.loads(value)
    return {
        "totalFiles": int(value.get("totalFiles", 0)),
        "totalSize": int(value.get("totalSize", 0)),
    }


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# retention ------------------------------------------------------------------------
def vacuum(
    lake: Lake,
    spec: tables.TableSpec,
    retention_hours: int = tables.DEFAULT_RETENTION_HOURS,
    *,
    dry_run: bool = False,
) -> Vacuum:
    """Delete what no commit of the last `retention_hours` needs: data files, then log files."""
    started = time.monotonic()
    check_retention(retention_hours)
    table = tables.open_table(lake, spec)
    if table is None:
        return Vacuum(spec.name, retention_hours, 0, 0, 0, 0.0, dry_run=dry_run)
    log_before = _log_files(lake, spec)
    try:
        if not dry_run:
            _follow_retention(table, retention_hours)
        removed = table.vacuum(
            retention_hours=retention_hours,
            dry_run=dry_run,
            # the retention was checked above (check_retention); the table's own
            # setting is the one this function keeps in step
            enforce_retention_duration=False,
            full=True,
            commit_properties=_commit_properties(),
        )
        if not dry_run:
            table = tables.open_table(lake, spec) or table
            table.create_checkpoint()
            table.cleanup_metadata()
    except LakeError:
        raise
    except Exception as exc:  # deltalake raises several types; name the table and the fix
        raise LakeError(
            f"could not vacuum {tables.table_uri(lake, spec)}: {_first_line(exc)}; the table "
            "is unchanged where it failed, rerun `churn-platform lake maintain`"
        ) from exc
    return Vacuum(
        spec.name,
        retention_hours,
        removed_files=len(removed),
        log_files_before=log_before,
        log_files_after=_log_files(lake, spec),
        seconds=time.monotonic() - started,
        removed=tuple(sorted(removed)[:20]),
        dry_run=dry_run,
    )


def _follow_retention(table: DeltaTable, retention_hours: int) -> None:
    """Make the table's log and deleted-file retention `retention_hours` (a commit, if changed)."""
    wanted = f"interval {retention_hours} hours"
    configured = table.metadata().configuration
    keys = ("delta.logRetentionDuration", "delta.deletedFileRetentionDuration")
    if all(_hours(configured.get(k)) == retention_hours for k in keys):
        return
    table.alter.set_table_properties(
        {k: wanted for k in keys}, commit_properties=_commit_properties()
    )


def _hours(interval: str | None) -> float | None:
    """Hours of a Delta interval ('interval 7 days'), None when absent or unreadable."""
    words = (interval or "").lower().split()
    if len(words) != 3 or words[0] != "interval":
        return None
    units = {"hour": 1, "hours": 1, "day": 24, "days": 24, "week": 168, "weeks": 168}
    try:
        return float(words[1]) * units[words[2]]
    except (ValueError, KeyError):
        return None


def _log_files(lake: Lake, spec: tables.TableSpec) -> int:
    lake.fs.invalidate_cache(lake.path(spec.log_dir))
    return len(lake.list_files(spec.log_dir))


# both -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Maintenance:
    """One table's compaction and (when it ran) vacuum."""

    compaction: Compaction
    vacuum: Vacuum | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.compaction.table,
            "compaction": self.compaction.as_dict(),
            "vacuum": self.vacuum.as_dict() if self.vacuum else None,
        }


def maintain(
    lake: Lake,
    specs: Sequence[tables.TableSpec] = tables.TABLES,
    *,
    retention_hours: int = tables.DEFAULT_RETENTION_HOURS,
    vacuum_files: bool = True,
    dry_run: bool = False,
    target_bytes: int = TARGET_FILE_BYTES,
    min_small_files: int = MIN_SMALL_FILES,
) -> list[Maintenance]:
    """Compact each table, then (with `vacuum_files`) vacuum it."""
    check_retention(retention_hours)
    done = []
    for spec in specs:
        compaction = compact(
            lake, spec, target_bytes=target_bytes, min_small_files=min_small_files, dry_run=dry_run
        )
        cleaned = vacuum(lake, spec, retention_hours, dry_run=dry_run) if vacuum_files else None
        done.append(Maintenance(compaction, cleaned))
    return done


def describe(done: Sequence[Maintenance]) -> list[str]:
    """One line per table, for people."""
    lines = []
    for m in done:
        c = m.compaction
        rewritten = [p for p in c.partitions if not p.skipped]
        line = (
            f"{c.table}: {c.files_before} → {c.files_after} files, "
            f"{c.bytes_before:,} → {c.bytes_after:,} bytes, {len(rewritten)} partition(s) "
            f"compacted in {c.seconds:.2f} s"
        )
        skipped = [f"{p.label()} ({p.skipped})" for p in c.partitions if p.skipped]
        if skipped:
            line += "; not compacted: " + ", ".join(skipped)
        if m.vacuum is not None:
            v = m.vacuum
            verb = "would remove" if v.dry_run else "removed"
            line += (
                f"; vacuum ({v.retention_hours} h) {verb} {v.removed_files} file(s), log "
                f"{v.log_files_before} → {v.log_files_after} files"
            )
        lines.append(line)
    return lines

"""The lake's layout before Delta tables, read only by `churn-platform lake migrate`.

Reading the raw event lake: only what the ledgers have committed.

A data file counts when its last offset is below its partition's ledger offset;
anything else is the leftover of a run that crashed before committing and will
be replaced by the next extract.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.parquet as pq

from churn_platform.lake.ledger import Ledger, LedgerCorrupt, read_ledger
from churn_platform.lake.paths import (
    LEDGER_DIR,
    RangeFile,
    ledger_path,
    parse_range_file,
)
from churn_platform.lake.store import Lake, LakeError

if TYPE_CHECKING:
    import polars as pl


def ledger_topics(lake: Lake) -> list[str]:
    """Topics that have a ledger in this lake."""
    return [
        path.rpartition("/")[2][: -len(".json")] for path in lake.list_files(LEDGER_DIR, ".json")
    ]


def range_files(lake: Lake, directory: str) -> list[RangeFile]:
    files = []
    for path in lake.list_files(directory, ".parquet"):
        parsed = parse_range_file(path)
        if parsed is not None:
            files.append(parsed)
    return files


def check_ledger_against_files(lake: Lake, ledger: Ledger, files: Iterable[RangeFile]) -> None:
    """Raise LedgerCorrupt when a file of the ledger's topic straddles its offset.

    A run writes offsets [start, end) and then moves the ledger to end; a crashed
    run's files begin at or after the ledger. So no healthy file holds offsets on
    both sides of it: one that does means the ledger was damaged or rolled back,
    and trusting it would hide committed rows from readers and extract them twice.
    """
    for f in files:
        offset = ledger.next_offset(f.partition)
        if f.topic == ledger.topic and f.first < offset <= f.last:
            raise LedgerCorrupt(
                f"the ledger {lake.url(ledger_path(ledger.topic))} says partition {f.partition} "
                f"of {ledger.topic!r} is extracted up to offset {offset}, but "
                f"{lake.url(f.path)} holds offsets {f.first} to {f.last}: the ledger was damaged "
                "or rolled back; restore it from a backup, or re-extract the topic from the start "
                "(`churn-platform extract --reset-ledger`)"
            )


def committed(lake: Lake, directory: str, topics: Iterable[str] | None = None) -> list[RangeFile]:
    """Range files under `directory` that their topic's ledger has committed."""
    wanted = set(ledger_topics(lake) if topics is None else topics)
    ledgers = {topic: read_ledger(lake, topic) for topic in wanted}
    files = range_files(lake, directory)
    for ledger in ledgers.values():
        check_ledger_against_files(lake, ledger, files)
    return [
        f
        for f in files
        if f.topic in ledgers and f.last < ledgers[f.topic].next_offset(f.partition)
    ]


def read_range_file(lake: Lake, f: RangeFile, schema: pa.Schema) -> pa.Table:
    """One range file of the old layout, checksums verified; a damaged file is named."""
    try:
        with lake.fs.open(lake.path(f.path), "rb") as fh:
            return pq.read_table(fh, schema=schema, page_checksum_verification=True)
    except Exception as exc:  # a damaged file must be named, never read as empty
        raise LakeError(
            f"could not read {lake.url(f.path)}: {exc}; restore it from a backup and run "
            "`churn-platform lake migrate` again"
        ) from exc


def _read(lake: Lake, files: list[RangeFile], schema) -> pl.DataFrame:
    import polars as pl  # not at import: extract workers load this module but never read

    if not files:
        return pl.from_arrow(schema.empty_table())
    tables = []
    for f in files:
        try:
            with lake.fs.open(lake.path(f.path), "rb") as fh:
                tables.append(pq.read_table(fh, schema=schema, page_checksum_verification=True))
        except Exception as exc:  # a damaged file must be named, never read as empty
            raise LakeError(f"could not read {lake.url(f.path)}: {exc}") from exc
    return pl.from_arrow(pa.concat_tables(tables))

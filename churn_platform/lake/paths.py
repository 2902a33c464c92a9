"""Where raw events, their ledger and quarantine live in the lake, and how their files are named.

Raw and quarantine files are named by what they contain: topic, partition and
the first and last offset of their rows. Writing the same range twice replaces
the file instead of adding a second copy. The derived tables (features,
labels, training set, scores) are Delta tables owned by `lake.tables`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

RAW_EVENTS_DIR = "raw/customer_events"
LEDGER_DIR = "raw/_ledger"
QUARANTINE_DIR = "quarantine/customer_events"

_RANGE_FILE = re.compile(
    r"^(?P<topic>.+)-p(?P<partition>\d+)-(?P<first>\d+)-(?P<last>\d+)\.parquet$"
)


@dataclass(frozen=True, order=True)
class RangeFile:
    """A data file holding rows of one topic partition from offset `first` to `last`."""

    topic: str
    partition: int
    first: int
    last: int
    path: str


def ledger_path(topic: str) -> str:
    return f"{LEDGER_DIR}/{topic}.json"


def range_file_name(topic: str, partition: int, first: int, last: int) -> str:
    return f"{topic}-p{partition}-{first:020d}-{last:020d}.parquet"


def raw_events_path(event_date: date, topic: str, partition: int, first: int, last: int) -> str:
    return f"{RAW_EVENTS_DIR}/event_date={event_date.isoformat()}/{range_file_name(topic, partition, first, last)}"


def quarantine_path(topic: str, partition: int, first: int, last: int) -> str:
    return f"{QUARANTINE_DIR}/{range_file_name(topic, partition, first, last)}"


def parse_range_file(path: str) -> RangeFile | None:
    """The RangeFile for a lake path, or None when the name is not a range file."""
    match = _RANGE_FILE.match(path.rpartition("/")[2])
    if match is None:
        return None
    return RangeFile(
        topic=match["topic"],
        partition=int(match["partition"]),
        first=int(match["first"]),
        last=int(match["last"]),
        path=path,
    )

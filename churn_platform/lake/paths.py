"""Where things live in the lake, and how data files are named.

Raw and quarantine files are named by what they contain: topic, partition and
the first and last offset of their rows. Writing the same range twice replaces
the file instead of adding a second copy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

RAW_EVENTS_DIR = "raw/customer_events"
LEDGER_DIR = "raw/_ledger"
QUARANTINE_DIR = "quarantine/customer_events"
FEATURES_DIR = "features/customer_features"
FEATURE_SPEC_FILE = "_spec.json"
LABELS_DIR = "labels/churn_labels"
LABELS_FILE = "labels.parquet"

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


def features_dir(as_of: date) -> str:
    """The directory of the feature table as of `as_of` (parts + spec)."""
    return f"{FEATURES_DIR}/as_of={as_of.isoformat()}"


def feature_part_path(as_of: date, shard: int, shards: int) -> str:
    return f"{features_dir(as_of)}/part-{shard:05d}-of-{shards:05d}.parquet"


def feature_spec_path(as_of: date) -> str:
    return f"{features_dir(as_of)}/{FEATURE_SPEC_FILE}"


def labels_dir(as_of: date) -> str:
    return f"{LABELS_DIR}/as_of={as_of.isoformat()}"


def labels_path(as_of: date) -> str:
    return f"{labels_dir(as_of)}/{LABELS_FILE}"


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


SCORES_DIR = "scores/churn_scores"
SCORES_FILE = "part-0.parquet"


def scores_dir(as_of: date) -> str:
    """The directory of the churn scores of the feature table as of `as_of`."""
    return f"{SCORES_DIR}/as_of={as_of.isoformat()}"


def scores_path(as_of: date) -> str:
    return f"{scores_dir(as_of)}/{SCORES_FILE}"

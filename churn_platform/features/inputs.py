"""What the feature computation for an as-of date reads from the lake.

Activity features look back `LOOKBACK_DAYS` (365), so only raw files of event dates in the
window are read whole (partition pruning by `event_date`). Tenure and the
subscription state need each customer's lifecycle events from the start, so
older files are read for those rows only. Anything dated after the as-of date
is never opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import polars as pl

from churn_platform.events.contract import LIFECYCLE_EVENT_TYPES
from churn_platform.features.definitions import EVENT_COLUMNS, EVENT_SCHEMA, LOOKBACK_DAYS
from churn_platform.lake.raw import event_date_of, raw_files, raw_path, read_raw_file
from churn_platform.lake.store import Lake

_EMPTY = pl.DataFrame(schema=EVENT_SCHEMA)


@dataclass(frozen=True)
class FeatureInputs:
    """Lake paths (relative) to read for one as-of date."""

    as_of: date
    window_files: tuple[str, ...]  # read whole
    history_files: tuple[str, ...]  # read for lifecycle events only

    def to_dict(self) -> dict:
        return {"window": list(self.window_files), "history": list(self.history_files)}

    @classmethod
    def from_dict(cls, as_of: date, body: dict) -> FeatureInputs:
        return cls(as_of, tuple(body["window"]), tuple(body["history"]))

    @property
    def window_start(self) -> date:
        return self.as_of - timedelta(days=LOOKBACK_DAYS - 1)


def feature_inputs(lake: Lake, as_of: date) -> FeatureInputs:
    """The committed raw files an as-of date needs, split into window and history."""
    first = as_of - timedelta(days=LOOKBACK_DAYS - 1)
    window, history = [], []
    for f in raw_files(lake, end=as_of):
        path = raw_path(f)
        day = event_date_of(path)
        (window if day is not None and day >= first else history).append(path)
    return FeatureInputs(as_of, tuple(sorted(window)), tuple(sorted(history)))


def read_file(lake: Lake, path: str, lifecycle_only: bool = False) -> pl.DataFrame:
    """One raw file's event columns (only lifecycle rows when `lifecycle_only`)."""
    frame = read_raw_file(lake, path, EVENT_COLUMNS)
    if lifecycle_only:
        frame = frame.filter(pl.col("event_type").is_in(sorted(LIFECYCLE_EVENT_TYPES)))
    return frame


def read_inputs(lake: Lake, inputs: FeatureInputs) -> pl.DataFrame:
    """All events an as-of date needs, in lake order (history first, then the window)."""
    frames = [read_file(lake, p, lifecycle_only=True) for p in inputs.history_files]
    frames += [read_file(lake, p) for p in inputs.window_files]
    if not frames:
        return _EMPTY.clone()
    return pl.concat(frames, how="vertical_relaxed")

"""What the feature computation for an as-of date reads from the lake.

Activity features look back `LOOKBACK_DAYS` (365), so only raw files of event dates in the
window are read whole (partition pruning by `event_date`). Tenure and the
subscription state need each customer's lifecycle events from the start, so
older files are read for those rows only. Anything dated after the as-of date
is never opened.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np
import polars as pl

from churn_platform.events.contract import LIFECYCLE_EVENT_TYPES
from churn_platform.features.definitions import EVENT_COLUMNS, EVENT_SCHEMA, LOOKBACK_DAYS
from churn_platform.lake import tables
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


def read_file(
    lake: Lake, path: str, lifecycle_only: bool = False, columns: Sequence[str] = EVENT_COLUMNS
) -> pl.DataFrame:
    """One raw file's `columns` (only lifecycle rows when `lifecycle_only`)."""
    return _lifecycle(read_raw_file(lake, path, columns), lifecycle_only)


def read_files(
    lake: Lake,
    paths: Sequence[str],
    lifecycle_only: Sequence[bool],
    columns: Sequence[str] = EVENT_COLUMNS,
) -> pl.DataFrame | None:
    """`read_file` of each of `paths` (None when there are none), concatenated in order.

    One polars scan per run of files alike (`tables.read_frames`) where the lake allows
    it; else file by file, which names a damaged file.
    """
    if not paths:
        return None
    parts: list[pl.DataFrame] = []
    for only, run in itertools.groupby(zip(paths, lifecycle_only, strict=True), lambda x: x[1]):
        frame = tables.read_frames(lake, tables.RAW_EVENTS, [p for p, _ in run], columns)
        if frame is None:
            parts = [
                read_file(lake, p, old, columns)
                for p, old in zip(paths, lifecycle_only, strict=True)
            ]
            break
        parts.append(_lifecycle(frame, only))
    return pl.concat(parts, how="vertical_relaxed")


def _lifecycle(frame: pl.DataFrame, lifecycle_only: bool) -> pl.DataFrame:
    if not lifecycle_only:
        return frame
    return frame.filter(pl.col("event_type").is_in(sorted(LIFECYCLE_EVENT_TYPES)))


def read_inputs(
    lake: Lake, inputs: FeatureInputs, customers: pl.Series | None = None
) -> pl.DataFrame:
    """All events an as-of date needs, in lake order (history first, then the window).

    Only the rows of `customers` when given (a refresh of the customers new files touch).
    """
    frame = read_files(
        lake,
        [*inputs.history_files, *inputs.window_files],
        [True] * len(inputs.history_files) + [False] * len(inputs.window_files),
    )
    if frame is None:
        return _EMPTY.clone()
    if customers is not None:
        frame = frame.filter(pl.col("customer_id").is_in(customers.implode()))
    return frame


# --- many as-of dates, one read --------------------------------------------------------

FILE_COLUMN = "_file"  # a row's raw file: its index in `RangeInputs.files`


@dataclass(frozen=True)
class RangeInputs:
    """The raw files of several as-of dates, each read once for all of them.

    `files` is the union of every date's inputs in path order; a file is read
    for lifecycle rows only when it is history for every date
    (`lifecycle_only`). `events_as_of` rebuilds one date's input from rows read
    this way, exactly `read_inputs` of that date: its history files' lifecycle
    rows, then its window files' rows, each in path order.
    """

    dates: tuple[date, ...]
    per_date: tuple[FeatureInputs, ...]
    files: tuple[str, ...]
    lifecycle_only: tuple[bool, ...]

    def inputs(self, as_of: date) -> FeatureInputs:
        return self.per_date[self.dates.index(as_of)]

    def tagged(self) -> list[tuple[int, str, bool]]:
        """(index, path, lifecycle rows only) of each file, as `read_tagged` takes them."""
        return [
            (i, path, only)
            for i, (path, only) in enumerate(zip(self.files, self.lifecycle_only, strict=True))
        ]

    def indexes(self, paths: tuple[str, ...]) -> list[int]:
        position = {p: i for i, p in enumerate(self.files)}
        return [position[p] for p in paths]


def range_inputs(lake: Lake, dates: Sequence[date]) -> RangeInputs:
    """The inputs of each of `dates` (sorted, without repeats) and the files to read once."""
    return range_inputs_of([feature_inputs(lake, d) for d in sorted(set(dates))])


def range_inputs_of(inputs: Sequence[FeatureInputs]) -> RangeInputs:
    """Given inputs of distinct dates (say, as recorded with their tables) read together."""
    per_date = tuple(sorted(inputs, key=lambda i: i.as_of))
    ordered = tuple(i.as_of for i in per_date)
    whole = {p for i in per_date for p in i.window_files}
    files = tuple(sorted({p for i in per_date for p in (*i.history_files, *i.window_files)}))
    # every date names the same path objects as `files`, so that pickle writes each path
    # once: Beam pickles (and bzip2s) the DoFns that hold these several times a run, and
    # 12 dates' own copies of ~700 paths made that 0.24 s a time (docs/benchmarks.md)
    same = {p: p for p in files}
    per_date = tuple(
        FeatureInputs(
            i.as_of,
            tuple(same[p] for p in i.window_files),
            tuple(same[p] for p in i.history_files),
        )
        for i in per_date
    )
    return RangeInputs(ordered, per_date, files, tuple(p not in whole for p in files))


def events_as_of(
    frame: pl.DataFrame | pl.LazyFrame, inputs: RangeInputs, as_of: date, *, lazy: bool = False
) -> pl.DataFrame | pl.LazyFrame:
    """One date's input from rows of `inputs.files` (with `FILE_COLUMN`) in file order.

    The rows of any subset of the files, kept in file order, give that subset
    of the date's input in the same order, so a customer shard rebuilds its
    customers' rows of `read_inputs` exactly. `lazy`: as a query, so that what
    reads it copies only the columns it uses.
    """
    own = inputs.inputs(as_of)
    rows = frame.lazy()
    history = rows.filter(
        pl.col(FILE_COLUMN).is_in(inputs.indexes(own.history_files))
        & pl.col("event_type").is_in(sorted(LIFECYCLE_EVENT_TYPES))
    )
    window = rows.filter(pl.col(FILE_COLUMN).is_in(inputs.indexes(own.window_files)))
    query = pl.concat([history, window], how="vertical_relaxed")
    return query if lazy else query.collect()


def read_range(lake: Lake, inputs: RangeInputs) -> tuple[pl.DataFrame, list[int]]:
    """Every file of `inputs` once, in order, with `FILE_COLUMN`; and each file's row count."""
    frame, heights = read_tagged(lake, inputs.tagged())
    return frame, [heights[i] for i in range(len(inputs.files))]


def read_tagged(
    lake: Lake,
    files: Sequence[tuple[int, str, bool]],
    columns: Sequence[str] = EVENT_COLUMNS,
) -> tuple[pl.DataFrame, dict[int, int]]:
    """Files given as (index, path, lifecycle rows only), read in order: their rows
    (only the lifecycle rows of the files marked so), each with its file's index in
    `FILE_COLUMN`; and each file's row count before that filter, by index.

    One polars scan of them all where the lake allows it (`tables.read_frames_counted`:
    at 10M events, 924 raw files in 0.6-0.8 s against 2.2-2.6 s file by file); else
    file by file, which names a damaged file.
    """
    tag = pl.Int32
    if not files:
        return _EMPTY.select(columns).with_columns(pl.lit(0, dtype=tag).alias(FILE_COLUMN)), {}
    indexes = [index for index, _, _ in files]
    counted = tables.read_frames_counted(
        lake, tables.RAW_EVENTS, [path for _, path, _ in files], columns
    )
    if counted is None:
        frames, heights = [], {}
        for index, path, lifecycle_only in files:
            frame = read_raw_file(lake, path, columns)
            heights[index] = frame.height
            frame = _lifecycle(frame, lifecycle_only)
            frames.append(frame.with_columns(pl.lit(index, dtype=tag).alias(FILE_COLUMN)))
        return pl.concat(frames, how="vertical_relaxed"), heights
    frame, counts = counted
    tags = np.repeat(np.asarray(indexes, dtype=np.int32), counts)
    frame = frame.with_columns(pl.Series(FILE_COLUMN, tags, dtype=tag))
    history = [index for index, _, lifecycle_only in files if lifecycle_only]
    if history:
        frame = frame.filter(
            ~pl.col(FILE_COLUMN).is_in(history)
            | pl.col("event_type").is_in(sorted(LIFECYCLE_EVENT_TYPES))
        )
    return frame, dict(zip(indexes, counts, strict=True))


def events_read_as_of(inputs: RangeInputs, heights: Sequence[int], as_of: date) -> int:
    """Rows a one-date run reads for `as_of` (history files counted whole, as it does)."""
    own = inputs.inputs(as_of)
    return sum(heights[i] for i in inputs.indexes((*own.history_files, *own.window_files)))

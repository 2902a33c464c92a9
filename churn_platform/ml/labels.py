"""Churn labels: did a customer active at the end of as-of date d churn within the horizon?

What churn is comes from the business's `ChurnDefinition` (`features.churn`).
A customer in the feature table at d (the customers active at the end of d)
churned, under "cancellation", when a `subscription_cancelled` event has a ts
in (end of d, end of d + horizon], i.e. `as_of_end(d) <= ts < as_of_end(d +
horizon)`; under "inactivity", when no qualifying event has a ts in that
interval. Either way: exactly the events the features as of d never see, up
to the end of the horizon's last day. The definition's key is stored in every
label row, so labels of another definition are never taken for these.

A date is labelled only when the lake has observed its whole horizon. That is
judged by the data, not the wall clock: the lake is complete through the day
before its latest committed event date (the latest day may still be filling),
so d is labelable when d + horizon <= that day. Otherwise `NotYetLabelable`
says from which lake date on it will be.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta

import polars as pl

from churn_platform.events.contract import LIFECYCLE_EVENT_TYPES, SUBSCRIPTION_CANCELLED
from churn_platform.features.churn import (
    CANCELLATION,
    DEFAULT_CANCELLATION_HORIZON_DAYS,
    ChurnDefinition,
)
from churn_platform.features.definitions import as_of_end
from churn_platform.features.inputs import read_files
from churn_platform.lake import tables
from churn_platform.lake.raw import event_date_of, event_days, raw_files, raw_path
from churn_platform.lake.store import Lake

DEFAULT_HORIZON_DAYS = DEFAULT_CANCELLATION_HORIZON_DAYS
LABEL_SCHEMA = {
    "customer_id": pl.String(),
    "as_of": pl.Date(),
    "churned": pl.Boolean(),
    "horizon_days": pl.Int64(),
    "churn_definition": pl.String(),
}
_LABEL_EVENT_SCHEMA = {
    "event_id": pl.String,
    "customer_id": pl.String,
    "event_type": pl.String,
    "ts": pl.Datetime("ms", "UTC"),
}
_LABEL_EVENT_COLUMNS = list(_LABEL_EVENT_SCHEMA)


class NotYetLabelable(ValueError):
    """The lake has not yet observed the whole horizon after the as-of date."""

    def __init__(self, as_of: date, horizon_days: int, complete_through: date | None) -> None:
        self.as_of = as_of
        self.horizon_days = horizon_days
        self.complete_through = complete_through
        self.horizon_end = as_of + timedelta(days=horizon_days)
        # the first event date whose presence proves the horizon's last day complete
        self.labelable_from = self.horizon_end + timedelta(days=1)
        seen = (
            f"the lake is complete only through {complete_through.isoformat()}"
            if complete_through
            else "the lake holds no committed events"
        )
        super().__init__(
            f"churn labels as of {as_of.isoformat()} with a {horizon_days}-day horizon need every "
            f"event through {self.horizon_end.isoformat()}, but {seen}; the date becomes labelable "
            f"once the lake holds events dated {self.labelable_from.isoformat()} or later"
        )


@dataclass(frozen=True)
class LabelResult:
    """What `materialize_labels` wrote for one as-of date."""

    as_of: date
    horizon_days: int
    rows: int
    churned: int
    complete_through: date
    cancellations_read: int  # the events that decided labels (cancellations or activity)
    version: int  # the labels table's version that holds them
    seconds: float = 0.0
    churn: ChurnDefinition = CANCELLATION

    @property
    def churn_rate(self) -> float:
        return self.churned / self.rows if self.rows else 0.0


def complete_through(lake: Lake) -> date | None:
    """The last event date the lake has fully observed (the day before its latest one)."""
    days = event_days(lake)
    return max(days) - timedelta(days=1) if days else None


def ensure_labelable(as_of: date, horizon_days: int, through: date | None) -> None:
    """Raise `NotYetLabelable` unless the lake, complete `through` a date, covers the horizon."""
    if horizon_days < 1:
        raise ValueError(f"horizon_days must be at least 1 (got {horizon_days})")
    if through is None or as_of + timedelta(days=horizon_days) > through:
        raise NotYetLabelable(as_of, horizon_days, through)


def _label_event_filter(churn: ChurnDefinition) -> pl.Expr:
    """The filter for the events that decide labels under `churn`."""
    if not churn.is_inactivity:
        return pl.col("event_type") == SUBSCRIPTION_CANCELLED
    if churn.qualifying_types:
        return pl.col("event_type").is_in(list(churn.qualifying_types))
    return ~pl.col("event_type").is_in(sorted(LIFECYCLE_EVENT_TYPES))


def read_label_events(lake: Lake, as_of: date, churn: ChurnDefinition) -> pl.DataFrame:
    """The events in the horizon after `as_of` that decide labels (only its dates are read).

    Cancellation: `subscription_cancelled` events; inactivity: qualifying activity.
    """
    return _in_horizon(_read_label_events(lake, [as_of], churn), as_of, churn)


def _read_label_events(lake: Lake, dates: Sequence[date], churn: ChurnDefinition) -> pl.DataFrame:
    """The label-deciding events of every date's horizon, each raw file read once, in lake
    order (the raw table is partitioned by the UTC date of `ts`, so a date's horizon is
    its files and its rows alike)."""
    covered = {d + timedelta(days=k) for d in dates for k in range(1, churn.horizon_days + 1)}
    paths = [
        path
        for path in map(raw_path, raw_files(lake, start=min(covered), end=max(covered)))
        if event_date_of(path) in covered
    ]
    frame = read_files(lake, paths, [False] * len(paths), _LABEL_EVENT_COLUMNS)
    if frame is None:
        return pl.DataFrame(schema=_LABEL_EVENT_SCHEMA)
    return frame.filter(_label_event_filter(churn))


def _in_horizon(events: pl.DataFrame, as_of: date, churn: ChurnDefinition) -> pl.DataFrame:
    """The rows of `events` in `as_of`'s horizon, each event_id once (the first)."""
    start = as_of_end(as_of)
    end = as_of_end(as_of + timedelta(days=churn.horizon_days))
    return events.filter((pl.col("ts") >= start) & (pl.col("ts") < end)).unique(
        subset="event_id", maintain_order=True
    )


def read_cancellations(lake: Lake, as_of: date, horizon_days: int) -> pl.DataFrame:
    """`subscription_cancelled` events in the horizon after `as_of` (only its dates are read)."""
    return read_label_events(lake, as_of, ChurnDefinition("cancellation", horizon_days))


def _churn_of(churn: ChurnDefinition | int) -> ChurnDefinition:
    # a bare number of days is the cancellation definition with that horizon
    return churn if isinstance(churn, ChurnDefinition) else ChurnDefinition("cancellation", churn)


def compute_labels(
    customers: pl.Series | list[str],
    events: pl.DataFrame,
    as_of: date,
    churn: ChurnDefinition | int = CANCELLATION,
) -> pl.DataFrame:
    """One label row per active customer, sorted by customer_id.

    `customers` are the customers active at the end of `as_of` (the feature
    table's customer_id); `events` holds events with at least customer_id,
    event_type and ts (anything outside the horizon, or of a type the
    definition does not look at, is ignored).
    """
    churn = _churn_of(churn)
    start, end = as_of_end(as_of), as_of_end(as_of + timedelta(days=churn.horizon_days))
    in_horizon = (pl.col("ts") >= start) & (pl.col("ts") < end)
    if churn.is_inactivity:
        qualifying = (
            pl.col("event_type").is_in(list(churn.qualifying_types))
            if churn.qualifying_types
            else ~pl.col("event_type").is_in(sorted(LIFECYCLE_EVENT_TYPES))
        )
        # churned: nobody active is in the set of customers seen doing something
        seen = events.lazy().filter(qualifying & in_horizon).select("customer_id").unique()
        outcome = seen.with_columns(pl.lit(False).alias("churned"))
        missing = True
    else:
        cancelled = events.lazy().filter(
            (pl.col("event_type") == SUBSCRIPTION_CANCELLED) & in_horizon
        )
        outcome = (
            cancelled.select("customer_id").unique().with_columns(pl.lit(True).alias("churned"))
        )
        missing = False
    active = pl.LazyFrame({"customer_id": pl.Series(customers, dtype=pl.String)}).unique()
    return (
        active.join(outcome, on="customer_id", how="left")
        .select(
            pl.col("customer_id"),
            pl.lit(as_of, dtype=pl.Date).alias("as_of"),
            pl.col("churned").fill_null(missing),
            pl.lit(churn.horizon_days, dtype=pl.Int64).alias("horizon_days"),
            pl.lit(churn.key(), dtype=pl.String).alias("churn_definition"),
        )
        .sort("customer_id")
        .collect()
        .cast(LABEL_SCHEMA)
    )


class LabelsMissing(FileNotFoundError):
    """No labels in the lake for the as-of date (at the version read)."""


def write_labels(lake: Lake, labels: pl.DataFrame, as_of: date) -> int:
    """Replace the labels of `as_of` in one commit; returns the labels table's version.

    An as-of date without active customers keeps an empty file: labelled, no rows.
    """
    return tables.write(
        lake,
        tables.LABELS,
        labels.select(list(LABEL_SCHEMA)).to_arrow(),
        replace={"as_of": as_of},
        keep_empty=True,
    )


def read_labels(lake: Lake, as_of: date, version: int | None = None) -> pl.DataFrame:
    """The materialized labels of `as_of` (at the labels table's `version`, else the newest)."""
    files = tables.partition_files(
        lake,
        tables.LABELS,
        {"as_of": as_of},
        LabelsMissing,
        what="churn labels",
        producer="churn_labels",
        version=version,
    )
    table = tables.read_arrow(lake, tables.LABELS, version=version, files=files)
    return pl.from_arrow(table).cast(LABEL_SCHEMA).sort("customer_id")


def materialize_labels(
    lake: Lake,
    customers: pl.Series | list[str],
    as_of: date,
    churn: ChurnDefinition | int = CANCELLATION,
) -> LabelResult:
    """Label the active `customers` of `as_of` and write them; refuses incomplete horizons."""
    return materialize_labels_range(lake, {as_of: customers}, churn)[0]


def materialize_labels_range(
    lake: Lake,
    customers: Mapping[date, pl.Series | list[str]],
    churn: ChurnDefinition | int = CANCELLATION,
) -> list[LabelResult]:
    """`materialize_labels` of several as-of dates (their active customers), reading the
    raw files of all their horizons once; each date written in its own commit, by date.

    Refuses (`NotYetLabelable`) before anything is written when any date's horizon
    is incomplete.
    """
    churn = _churn_of(churn)
    started = time.perf_counter()
    dates = sorted(customers)
    if not dates:
        return []
    through = complete_through(lake)
    for as_of in dates:
        ensure_labelable(as_of, churn.horizon_days, through)
    read = _read_label_events(lake, dates, churn)
    done = []
    for as_of in dates:
        events = _in_horizon(read, as_of, churn)
        labels = compute_labels(customers[as_of], events, as_of, churn)
        version = write_labels(lake, labels, as_of)
        done.append(
            LabelResult(
                as_of=as_of,
                horizon_days=churn.horizon_days,
                rows=labels.height,
                churned=int(labels["churned"].sum()),
                complete_through=through,
                cancellations_read=events.height,
                version=version,
                seconds=time.perf_counter() - started,
                churn=churn,
            )
        )
    return done

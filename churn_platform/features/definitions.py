"""Per-customer churn features as of a date: the one definition every engine uses.

`compute_features(events, as_of)` turns a customer's (or many customers')
events into one row per customer active at the end of `as_of`. It is pure
polars and depends on nothing but its arguments, and each customer's row
depends only on that customer's events. So the Beam pipeline can run it per
customer shard, the polars reference on everything at once, and the streaming
scorer on one customer, and all three agree.

As of date d means: every event with ts before the end of day d (UTC); nothing
later is ever seen. Events whose `event_id` repeats (producer retries) count once.

Active at d is the business's churn definition (`features.churn`): under
"cancellation" (the default) the customer's latest lifecycle event at or before
d is a `subscription_started` or `subscription_changed`, and a customer with no
lifecycle events at all (replayed activity-only data) is active when it had
activity in the 90 days up to d; under "inactivity" a customer is active when
it had qualifying activity in the N days up to d.

Activity is read for the 365 days up to d (`LOOKBACK_DAYS`): per-type counts
look at 7, 28 and 90 days, the long-window measures at all of it. The long
window is there because of data no one here wrote: on the CDNOW purchases
(a retailer, 1997-98) a year's purchase count lifted the holdout ROC AUC to
the level of a recency-frequency rule, where 90-day windows could not see a
regular buyer from a one-off one (docs/own-data.md, which features carry;
benchmarks/results/feature_evidence.json).

Features (names are stable; `<type>` is each activity type found in the data;
the per-type windows are the spec's, `WINDOWS_DAYS` / `VALUE_WINDOW_DAYS` for a
new table, recorded with it and with every model trained on it):

| name | meaning | nulls |
|---|---|---|
| `<type>_count_7d`, `_28d`, `_90d` | events of the type in the 7/28/90 days up to d | never |
| `<type>_days_since_last` | days from the last event of the type to d (0 = on d), within 365 days | none in 365 days |
| `<type>_value_sum_28d`, `<type>_value_mean_28d` | sum / mean of `value` in 28 days (types that carry values; added smallest first) | mean: no event |
| `active_days_28d` | days with any activity in the 28 days up to d | never |
| `events_28d` | activity events in the 28 days up to d | never |
| `days_since_last_event` | days since the last activity event, within 365 days | none in 365 days |
| `trend_28d` | (events in the last 28 days + 1) / (events in the 28 before + 1) | never |
| `events_365d`, `active_days_365d` | activity events / days with activity in the 365 days up to d | never |
| `activity_rate_vs_365d` | events a day over the last 28 days ÷ events a day over the 365 (both counted from the first activity when that is later) | no activity in 365 days |
| `tenure_days` | days since the first `subscription_started` (else the first event in the 365 days, so at most 364) | never |
| `plan` | plan at d (`unknown` without lifecycle events) | never |
| `mrr` | monthly recurring revenue at d (0 when unknown) | never |
| `plan_changes` | `subscription_changed` events up to d | never |
| `days_since_subscription_change` | days since the last start or change | no lifecycle events |
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import TypeVar

import numpy as np
import polars as pl

from churn_platform.events.contract import (
    LIFECYCLE_EVENT_TYPES,
    SUBSCRIPTION_CANCELLED,
    SUBSCRIPTION_CHANGED,
    SUBSCRIPTION_STARTED,
)
from churn_platform.features.churn import CANCELLATION, RECENT_ACTIVITY_DAYS, ChurnDefinition

WINDOWS_DAYS = (7, 28, 90)
VALUE_WINDOW_DAYS = 28
TREND_WINDOW_DAYS = 28
LONG_WINDOW_DAYS = 365
# what every engine reads whole for an as-of date (older files: lifecycle rows only)
LOOKBACK_DAYS = LONG_WINDOW_DAYS
KEY_COLUMNS = ("customer_id", "as_of")
# the columns (and types) of an event frame; the raw lake has more, ignored here
EVENT_SCHEMA = {
    "event_id": pl.String,
    "customer_id": pl.String,
    "event_type": pl.String,
    "ts": pl.Datetime("ms", "UTC"),
    "value": pl.Float64,
    "attributes": pl.String,
}
EVENT_COLUMNS = tuple(EVENT_SCHEMA)

UNKNOWN_PLAN = "unknown"
# the windows of tables written before the spec recorded its own
_RECORDED_BEFORE_COUNT_WINDOWS = (7, 28, 90)
_RECORDED_BEFORE_VALUE_WINDOW = 28


class Kind(StrEnum):
    """What a feature column measures; its type, nulls, checks and fill follow from it."""

    COUNT = "count"  # events (or changes) in a window: whole, >= 0
    ACTIVE_DAYS = "active_days"  # days with activity in a window: whole, 0..window
    RECENCY = "recency"  # whole days since the last event of a kind (0 = on d)
    TENURE = "tenure"  # whole days since the customer began
    VALUE_SUM = "value_sum"  # sum of event values in a window
    VALUE_MEAN = "value_mean"  # mean of event values in a window
    RATIO = "ratio"  # a rate or trend, >= 0
    AMOUNT = "amount"  # money, >= 0
    CATEGORY = "category"  # a label (the model encodes it)
    OTHER = "other"  # a column this project does not define (an experiment's candidate)


_DTYPES: dict[Kind, pl.DataType] = {
    Kind.COUNT: pl.Int64(),
    Kind.ACTIVE_DAYS: pl.Int64(),
    Kind.RECENCY: pl.Int64(),
    Kind.TENURE: pl.Int64(),
    Kind.VALUE_SUM: pl.Float64(),
    Kind.VALUE_MEAN: pl.Float64(),
    Kind.RATIO: pl.Float64(),
    Kind.AMOUNT: pl.Float64(),
    Kind.CATEGORY: pl.String(),
    Kind.OTHER: pl.Float64(),
}
NON_NEGATIVE_KINDS = frozenset(
    {Kind.COUNT, Kind.ACTIVE_DAYS, Kind.RECENCY, Kind.TENURE, Kind.RATIO, Kind.AMOUNT}
)


@dataclass(frozen=True)
class FeatureColumn:
    """One feature column: what it measures, over which days, of which events.

    `window_days` is how many days up to d it reads (None: everything up to d);
    `activity_type` the event type it reads (None: all activity). `nullable`:
    the column is null for a customer without the events it reads, else it
    holds a neutral value (0).
    """

    name: str
    kind: Kind
    window_days: int | None = None
    activity_type: str | None = None
    nullable: bool = False

    @property
    def dtype(self) -> pl.DataType:
        return _DTYPES[self.kind]

    @property
    def categorical(self) -> bool:
        return self.kind is Kind.CATEGORY

    @property
    def label(self) -> str:
        """What the column measures in words a person reads ("login events in the last 28
        days"), for the reasons shown with a score."""
        overall = _OVERALL_LABELS.get(self.name)
        if overall is not None:
            return overall
        kind, window = self.kind, self.window_days
        what = (self.activity_type or "").replace("_", " ")
        if kind is Kind.COUNT:
            return f"{what} events in the last {window} days"
        if kind is Kind.RECENCY:
            return f"days since the last {what} event"
        if kind is Kind.VALUE_SUM:
            return f"{what} value in the last {window} days"
        if kind is Kind.VALUE_MEAN:
            return f"average {what} value in the last {window} days"
        return self.name.replace("_", " ")

    @property
    def fill(self) -> str | float | None:
        """The value of a customer without the events it reads: what a table that lacks the
        column (an activity type absent at that date) stands for in the model's input."""
        if self.categorical:
            return UNKNOWN_PLAN
        return None if self.nullable else 0.0


OVERALL_COLUMNS = (
    FeatureColumn("active_days_28d", Kind.ACTIVE_DAYS, TREND_WINDOW_DAYS),
    FeatureColumn("events_28d", Kind.COUNT, TREND_WINDOW_DAYS),
    FeatureColumn("days_since_last_event", Kind.RECENCY, LOOKBACK_DAYS, nullable=True),
    FeatureColumn("trend_28d", Kind.RATIO, 2 * TREND_WINDOW_DAYS),
    FeatureColumn("events_365d", Kind.COUNT, LONG_WINDOW_DAYS),
    FeatureColumn("active_days_365d", Kind.ACTIVE_DAYS, LONG_WINDOW_DAYS),
    FeatureColumn("activity_rate_vs_365d", Kind.RATIO, LONG_WINDOW_DAYS, nullable=True),
    FeatureColumn("tenure_days", Kind.TENURE),
    FeatureColumn("plan", Kind.CATEGORY),
    FeatureColumn("mrr", Kind.AMOUNT),
    FeatureColumn("plan_changes", Kind.COUNT, activity_type=SUBSCRIPTION_CHANGED),
    FeatureColumn("days_since_subscription_change", Kind.RECENCY, nullable=True),
)
_OVERALL_LABELS = {
    "active_days_28d": f"active days in the last {TREND_WINDOW_DAYS} days",
    "events_28d": f"events in the last {TREND_WINDOW_DAYS} days",
    "days_since_last_event": "days since the last event",
    "trend_28d": f"events in the last {TREND_WINDOW_DAYS} days vs the {TREND_WINDOW_DAYS} before",
    "events_365d": f"events in the last {LONG_WINDOW_DAYS} days",
    "active_days_365d": f"active days in the last {LONG_WINDOW_DAYS} days",
    "activity_rate_vs_365d": f"activity in the last {TREND_WINDOW_DAYS} days vs the year's rate",
    "tenure_days": "days as a customer",
    "plan": "plan",
    "mrr": "monthly recurring revenue",
    "plan_changes": "plan changes",
    "days_since_subscription_change": "days since the plan last started or changed",
}
OVERALL_FEATURES = tuple(c.name for c in OVERALL_COLUMNS)
_OVERALL = {c.name: c for c in OVERALL_COLUMNS}
CATEGORICAL_FEATURES = tuple(c.name for c in OVERALL_COLUMNS if c.categorical)


def _count_name(t: str, window: int) -> str:
    return f"{t}_count_{window}d"


def _recency_name(t: str) -> str:
    return f"{t}_days_since_last"


def _value_names(t: str, window: int) -> tuple[str, str]:
    return f"{t}_value_sum_{window}d", f"{t}_value_mean_{window}d"


# the inverse of the names above, for feature lists recorded without their spec
_PER_TYPE = re.compile(
    r"^(?P<type>.+?)_(?:count_(?P<count>\d+)d|(?P<recency>days_since_last)"
    r"|value_(?P<value>sum|mean)_(?P<value_window>\d+)d)$"
)


@dataclass(frozen=True)
class FeatureSpec:
    """Which activity types are tracked, which of them carry values, and the windows.

    The one owner of what a feature column means: `describe()` says it for every
    column, and the engines, checks, model input and scorer ask it. The windows
    are recorded with every table and model, so a model is always served the
    columns it was trained on, whatever the code's windows are today.
    """

    activity_types: tuple[str, ...]
    valued_types: tuple[str, ...]
    count_windows: tuple[int, ...] = _RECORDED_BEFORE_COUNT_WINDOWS
    value_window: int = _RECORDED_BEFORE_VALUE_WINDOW

    def describe(self) -> tuple[FeatureColumn, ...]:
        """Every feature column in table order (after the key columns)."""
        return _describe(self)

    def columns(self) -> list[str]:
        """Feature column names in table order (after the key columns)."""
        return [c.name for c in self.describe()]

    def column(self, name: str) -> FeatureColumn:
        """What column `name` is; a name outside the spec is read from its form (a
        model's feature list may hold an activity type a table lacks)."""
        found = _by_name(self).get(name)
        return found if found is not None else _parse_column(name)

    def nullable(self) -> set[str]:
        """Columns that may hold nulls (see the table in the module docstring)."""
        return {c.name for c in self.describe() if c.nullable}

    def schema(self) -> dict[str, pl.DataType]:
        types: dict[str, pl.DataType] = {"customer_id": pl.String(), "as_of": pl.Date()}
        types.update((c.name, c.dtype) for c in self.describe())
        return types

    def windows(self) -> tuple[tuple[int, ...], int]:
        return self.count_windows, self.value_window

    def windows_text(self) -> str:
        return _windows_text(self.windows())

    def to_dict(self) -> dict:
        return {
            "activity_types": list(self.activity_types),
            "valued_types": list(self.valued_types),
            "count_windows": list(self.count_windows),
            "value_window": self.value_window,
        }

    @classmethod
    def from_dict(cls, body: dict) -> FeatureSpec:
        return cls(
            tuple(body["activity_types"]),
            tuple(body["valued_types"]),
            tuple(body.get("count_windows", _RECORDED_BEFORE_COUNT_WINDOWS)),
            int(body.get("value_window", _RECORDED_BEFORE_VALUE_WINDOW)),
        )

    @classmethod
    def current(cls, activity_types: Iterable[str], valued_types: Iterable[str]) -> FeatureSpec:
        """A spec of the code's windows today (`current_windows`)."""
        counts, value = current_windows()
        return cls(tuple(activity_types), tuple(valued_types), counts, value)

    @classmethod
    def from_columns(cls, names: Iterable[str]) -> FeatureSpec:
        """The spec a feature list implies (for models recorded without their spec).

        Windows are read from the names; a list without per-type counts or values
        keeps the windows of the time before specs recorded them.
        """
        types: dict[str, None] = {}
        valued: dict[str, None] = {}
        counts: set[int] = set()
        value_window: int | None = None
        for name in names:
            column = _parse_column(name)
            if column.activity_type is None or name in _OVERALL:
                continue
            types.setdefault(column.activity_type)
            if column.kind is Kind.COUNT:
                counts.add(column.window_days)
            elif column.kind in (Kind.VALUE_SUM, Kind.VALUE_MEAN):
                valued.setdefault(column.activity_type)
                value_window = column.window_days
        return cls(
            tuple(types),
            tuple(valued),
            tuple(sorted(counts)) or _RECORDED_BEFORE_COUNT_WINDOWS,
            value_window or _RECORDED_BEFORE_VALUE_WINDOW,
        )


def current_windows() -> tuple[tuple[int, ...], int]:
    """The code's windows today: what a new feature table is computed over."""
    return tuple(WINDOWS_DAYS), VALUE_WINDOW_DAYS


def _windows_text(windows: tuple[tuple[int, ...], int]) -> str:
    counts, value = windows
    return f"counts over {'/'.join(map(str, counts))} days, values over {value}"


@functools.lru_cache(maxsize=256)
def _describe(spec: FeatureSpec) -> tuple[FeatureColumn, ...]:
    described: list[FeatureColumn] = []
    for t in spec.activity_types:
        described += [
            FeatureColumn(_count_name(t, w), Kind.COUNT, w, t) for w in spec.count_windows
        ]
        described.append(
            FeatureColumn(_recency_name(t), Kind.RECENCY, LOOKBACK_DAYS, t, nullable=True)
        )
        if t in spec.valued_types:
            total, mean = _value_names(t, spec.value_window)
            described += [
                FeatureColumn(total, Kind.VALUE_SUM, spec.value_window, t),
                FeatureColumn(mean, Kind.VALUE_MEAN, spec.value_window, t, nullable=True),
            ]
    return (*described, *OVERALL_COLUMNS)


@functools.lru_cache(maxsize=256)
def _by_name(spec: FeatureSpec) -> dict[str, FeatureColumn]:
    return {c.name: c for c in _describe(spec)}


@functools.lru_cache(maxsize=4096)
def _parse_column(name: str) -> FeatureColumn:
    """What a column is, from its name alone: an overall column, a per-type one, or OTHER."""
    if name in _OVERALL:
        return _OVERALL[name]
    match = _PER_TYPE.match(name)
    if match is None:
        return FeatureColumn(name, Kind.OTHER, nullable=True)
    t = match["type"]
    if match["count"]:
        return FeatureColumn(name, Kind.COUNT, int(match["count"]), t)
    if match["recency"]:
        return FeatureColumn(name, Kind.RECENCY, LOOKBACK_DAYS, t, nullable=True)
    window = int(match["value_window"])
    if match["value"] == "sum":
        return FeatureColumn(name, Kind.VALUE_SUM, window, t)
    return FeatureColumn(name, Kind.VALUE_MEAN, window, t, nullable=True)


def as_of_end(as_of: date) -> datetime:
    """The first instant after as-of date `as_of` (events strictly before it count)."""
    return datetime(as_of.year, as_of.month, as_of.day, tzinfo=UTC) + timedelta(days=1)


def window_start(as_of: date) -> datetime:
    """The first instant of the lookback window that activity features read."""
    return as_of_end(as_of) - timedelta(days=LOOKBACK_DAYS)


def discover_spec(events: pl.DataFrame | pl.LazyFrame, as_of: date) -> FeatureSpec:
    """The activity types (and those carrying values) in the lookback window up to `as_of`."""
    frame = (
        events.lazy()
        .filter(
            (pl.col("ts") < as_of_end(as_of))
            & (pl.col("ts") >= window_start(as_of))
            & ~pl.col("event_type").is_in(sorted(LIFECYCLE_EVENT_TYPES))
        )
        .group_by("event_type")
        .agg(pl.col("value").is_not_null().any().alias("valued"))
        .collect()
    )
    found = sorted(frame.iter_rows())  # by name, whatever the column's type sorts by
    types = tuple(t for t, _ in found)
    valued = tuple(t for t, v in found if v)
    return FeatureSpec.current(types, valued)


def merge_specs(specs: Iterable[FeatureSpec]) -> FeatureSpec:
    """One spec covering all of `specs` (shards may each see only some types).

    Specs of other windows describe other columns: merging them is refused
    (`WindowsDiffer`); with no specs at all, the code's windows of today.
    """
    types: set[str] = set()
    valued: set[str] = set()
    windows: set[tuple[tuple[int, ...], int]] = set()
    for spec in specs:
        types.update(spec.activity_types)
        valued.update(spec.valued_types)
        windows.add(spec.windows())
    if len(windows) > 1:
        raise WindowsDiffer(
            "feature tables of different windows cannot be combined ("
            + "; ".join(_windows_text(w) for w in sorted(windows))
            + "): rematerialize customer_features for the older dates"
        )
    if not windows:
        return FeatureSpec.current(sorted(types), sorted(valued))
    ((count_windows, value_window),) = windows
    return FeatureSpec(tuple(sorted(types)), tuple(sorted(valued)), count_windows, value_window)


class WindowsDiffer(ValueError):
    """Feature specs of different windows were to be combined."""


def _days_between(as_of: date, earlier: pl.Expr) -> pl.Expr:
    """Whole calendar days from the (UTC) date of the instant `earlier` to `as_of`."""
    return (pl.lit(as_of, dtype=pl.Date) - earlier.dt.date()).dt.total_days()


FrameT = TypeVar("FrameT", pl.DataFrame, pl.LazyFrame)


def categorical_keys(events: FrameT) -> FrameT:
    """`events` with customer_id and event_type as categoricals (a no-op when they are).

    `compute_features` groups and compares these: as categoricals its queries hash
    and compare integers, not strings (a third of its time at 10M events, the same
    table: the output is cast back). Callers that compute many dates from one
    frame cast it once.
    """
    return events.with_columns(pl.col("customer_id", "event_type").cast(pl.Categorical))


def compute_features(
    events: pl.DataFrame | pl.LazyFrame,
    as_of: date,
    spec: FeatureSpec | None = None,
    churn: ChurnDefinition = CANCELLATION,
    *,
    distinct: bool = False,
) -> pl.DataFrame:
    """Features of every customer active at the end of `as_of`, sorted by customer_id.

    `events` holds the customers' events (at least EVENT_COLUMNS; any dates: the
    function itself ignores everything after `as_of`). Activity features need
    the `LOOKBACK_DAYS` up to `as_of`; tenure and subscription state need the
    customer's lifecycle events from the start. `spec` fixes the tracked
    activity types (default: those found in `events`); `churn` says who is
    active (see `features.churn`).

    `distinct=True` is the caller's word that no `event_id` repeats in
    `events` (checked, say, once for many dates): dropping repeats is then skipped,
    as it would drop nothing.

    Two polars queries a call (the events up to `as_of`, counted once each;
    then every feature in one lazy query), with the expressions built once per
    (as_of, spec): the streaming scorer calls this for a handful of customers
    per micro-batch, where building and running thirty small eager steps cost
    more than the features.
    """
    frame = (
        events.lazy()
        .select(EVENT_COLUMNS)
        .filter(pl.col("ts") < as_of_end(as_of))
        .pipe(categorical_keys)
    )
    if not distinct:
        frame = frame.unique(subset="event_id", keep="first", maintain_order=True)
    frame = frame.collect()
    if spec is None:
        spec = discover_spec(frame, as_of)
    plan = _plan(as_of, spec, churn)
    events_lazy = frame.lazy()
    lifecycle = events_lazy.filter(plan.is_lifecycle)
    ordered = lifecycle.sort(["customer_id", "ts", "event_id"])
    state = ordered.group_by("customer_id").agg(plan.state)
    prices = (
        ordered.with_columns(plan.attributes)
        .filter(plan.priced)
        .group_by("customer_id")
        .agg(plan.prices)
    )
    counts = events_lazy.filter(plan.is_activity).group_by("customer_id").agg(plan.activity)
    if spec.valued_types:
        valued = events_lazy.filter(plan.valued).select("customer_id", "event_type", "value")
        values = _value_table(valued.collect(), spec)
        counts = counts.join(values.lazy(), on="customer_id", how="left")
    # Without a subscription start, tenure counts from the first event in the
    # lookback (at most 364 days): older activity is not an input (engines read
    # older files for lifecycle events only), so the fallback must not use it.
    first_seen = events_lazy.group_by("customer_id").agg(plan.first_seen)
    return (
        first_seen.join(state, on="customer_id", how="left")
        .join(prices, on="customer_id", how="left")
        .join(counts, on="customer_id", how="left")
        .filter(plan.active)
        .with_columns(plan.finish)
        .select(plan.output)
        .sort("customer_id")
        .collect()
    )


@dataclass(frozen=True)
class _Plan:
    """The expressions of `compute_features` for one (as_of, spec)."""

    is_lifecycle: pl.Expr
    is_activity: pl.Expr
    state: list[pl.Expr]
    attributes: list[pl.Expr]
    priced: pl.Expr
    prices: list[pl.Expr]
    activity: list[pl.Expr]
    valued: pl.Expr
    first_seen: list[pl.Expr]
    active: pl.Expr
    finish: list[pl.Expr]
    output: list[pl.Expr]


@functools.lru_cache(maxsize=64)
def _plan(as_of: date, spec: FeatureSpec, churn: ChurnDefinition = CANCELLATION) -> _Plan:
    end = as_of_end(as_of)
    last_day = as_of  # the as-of date itself, for "days since"
    lifecycle_types = sorted(LIFECYCLE_EVENT_TYPES)
    is_lifecycle = pl.col("event_type").is_in(lifecycle_types)
    in_window = pl.col("ts") >= window_start(as_of)
    zero_filled = [c.name for c in spec.describe() if not c.nullable and c.name not in _OVERALL]
    return _Plan(
        is_lifecycle=is_lifecycle,
        is_activity=in_window & ~is_lifecycle,
        state=_subscription_state(),
        attributes=[
            pl.col("attributes").str.json_path_match("$.plan").alias("_plan"),
            pl.col("attributes")
            .str.json_path_match("$.mrr")
            .cast(pl.Float64, strict=False)
            .alias("_mrr"),
        ],
        priced=pl.col("event_type") != SUBSCRIPTION_CANCELLED,
        prices=[
            pl.col("_plan").drop_nulls().last().alias("plan"),
            pl.col("_mrr").drop_nulls().last().alias("mrr"),
        ],
        activity=_activity_features(spec, end, last_day, churn),
        valued=_value_rows(spec, end),
        first_seen=[
            pl.col("ts").filter(in_window).min().alias("_first_window_ts"),
            pl.col("ts").min().alias("_first_ts"),
        ],
        active=_active(churn),
        finish=[
            pl.lit(as_of).alias("as_of"),
            *[pl.col(c).fill_null(0) for c in zero_filled],
            pl.col("active_days_28d").fill_null(0),
            pl.col("events_28d").fill_null(0),
            (
                (pl.col("events_28d").fill_null(0) + 1)
                / (pl.col("_events_prior_28d").fill_null(0) + 1)
            ).alias("trend_28d"),
            pl.col("events_365d").fill_null(0),
            pl.col("active_days_365d").fill_null(0),
            _rate_vs_long_window(),
            _days_between(
                last_day, pl.coalesce("_started_ts", "_first_window_ts", "_first_ts")
            ).alias("tenure_days"),
            pl.col("plan").fill_null(UNKNOWN_PLAN),
            pl.col("mrr").fill_null(0.0),
            pl.col("plan_changes").fill_null(0),
            _days_between(last_day, pl.col("_changed_ts")).alias("days_since_subscription_change"),
        ],
        output=[pl.col(name).cast(dtype) for name, dtype in spec.schema().items()],
    )


def _subscription_state() -> list[pl.Expr]:
    """Per customer (lifecycle events in time order): active flag, plan changes, first
    start, last change."""
    event_type = pl.col("event_type")
    return [
        (event_type.last() != SUBSCRIPTION_CANCELLED).alias("_active"),
        pl.lit(True).alias("_has_lifecycle"),
        (event_type == SUBSCRIPTION_CHANGED).sum().alias("plan_changes"),
        pl.col("ts").filter(event_type == SUBSCRIPTION_STARTED).min().alias("_started_ts"),
        pl.col("ts").filter(event_type != SUBSCRIPTION_CANCELLED).max().alias("_changed_ts"),
    ]


def _active(churn: ChurnDefinition) -> pl.Expr:
    """Active at the end of the as-of date, after the joins (see `features.churn`)."""
    if churn.is_inactivity:
        return pl.col("_qualifying_recent").fill_null(0) > 0
    return (
        pl.when(pl.col("_has_lifecycle").fill_null(False))
        .then(pl.col("_active").fill_null(False))
        # no lifecycle events: active when it did anything recently
        .otherwise(pl.col("_events_recent").fill_null(0) > 0)
    )


def _rate_vs_long_window() -> pl.Expr:
    """Events a day over the last 28 days ÷ over the 365, both from the first activity on.

    A customer seen for fewer than 28 days gets 1 (nothing to compare with);
    one with no activity in the long window gets null.
    """
    observed = pl.col("_days_observed")
    recent = pl.col("events_28d").fill_null(0) / pl.min_horizontal(observed, TREND_WINDOW_DAYS)
    long = pl.col("events_365d") / pl.min_horizontal(observed, LONG_WINDOW_DAYS)
    return (
        pl.when(pl.col("events_365d").fill_null(0) > 0)
        .then(recent / long)
        .otherwise(None)
        .cast(pl.Float64)
        .alias("activity_rate_vs_365d")
    )


def _activity_features(
    spec: FeatureSpec, end: datetime, last_day: date, churn: ChurnDefinition
) -> list[pl.Expr]:
    """Per customer (activity in the lookback): per-type counts, recency, values; overall
    activity measures; what decides who is active."""
    ts = pl.col("ts")
    event_type = pl.col("event_type")
    tracked = event_type.is_in(list(spec.activity_types))
    per_type = [c for c in spec.describe() if c.name not in _OVERALL]
    windows = {
        *(c.window_days for c in per_type),
        TREND_WINDOW_DAYS,
        2 * TREND_WINDOW_DAYS,
        LONG_WINDOW_DAYS,
        RECENT_ACTIVITY_DAYS,
        churn.horizon_days,
    }
    in_window = {w: ts >= end - timedelta(days=w) for w in windows}
    aggregations: list[pl.Expr] = []
    for column in per_type:
        is_type = event_type == column.activity_type
        if column.kind is Kind.COUNT:
            aggregated = (is_type & in_window[column.window_days]).sum()
        elif column.kind is Kind.RECENCY:
            aggregated = _days_between(last_day, ts.filter(is_type).max())
        else:
            continue  # values: `_value_table`, over the rows they read (`_value_rows`)
        aggregations.append(aggregated.alias(column.name))
    recent = tracked & in_window[TREND_WINDOW_DAYS]
    prior = tracked & in_window[2 * TREND_WINDOW_DAYS] & ~in_window[TREND_WINDOW_DAYS]
    long = tracked & in_window[LONG_WINDOW_DAYS]
    aggregations += [
        ts.filter(recent).dt.date().n_unique().alias("active_days_28d"),
        recent.sum().alias("events_28d"),
        prior.sum().alias("_events_prior_28d"),
        long.sum().alias("events_365d"),
        ts.filter(long).dt.date().n_unique().alias("active_days_365d"),
        (_days_between(last_day, ts.filter(long).min()) + 1).alias("_days_observed"),
        # who counts as active reads every activity event, tracked by the spec or not, so
        # a scorer serving an older spec agrees with today's batch table
        in_window[RECENT_ACTIVITY_DAYS].sum().alias("_events_recent"),
        _days_between(last_day, ts.filter(tracked).max()).alias("days_since_last_event"),
    ]
    if churn.is_inactivity:
        # qualifying activity of the definition's own window, whatever the spec tracks
        qualifying = (
            event_type.is_in(list(churn.qualifying_types))
            if churn.qualifying_types
            else pl.lit(True)
        )
        aggregations.append(
            (qualifying & in_window[churn.horizon_days]).sum().alias("_qualifying_recent")
        )
    return aggregations


def _value_rows(spec: FeatureSpec, end: datetime) -> pl.Expr:
    """The activity rows value features read: the valued types in the value window."""
    event_type = pl.col("event_type")
    return (
        (pl.col("ts") >= end - timedelta(days=min(spec.value_window, LOOKBACK_DAYS)))
        & event_type.is_in(list(spec.valued_types))
        & ~event_type.is_in(sorted(LIFECYCLE_EVENT_TYPES))
        & pl.col("value").is_not_null()
    )


def row_codes(keys: pl.Series) -> tuple[pl.Series, np.ndarray]:
    """A categorical column's distinct values, and each row's index among them."""
    distinct = keys.unique()
    physical = distinct.to_physical().to_numpy().astype(np.int64)
    index = np.zeros(int(physical.max()) + 1 if physical.size else 1, dtype=np.int64)
    index[physical] = np.arange(physical.size)
    return distinct, index[keys.to_physical().to_numpy()]


def ordered_sums(
    group: np.ndarray, values: np.ndarray, *, ordered: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per group: (group, sum, count) of `values`, each sum adding its group's values
    smallest first, one after another; groups ascending.

    A float sum depends on the order it adds in; this order does not depend on
    how the rows arrived or how a frame is split among threads, shards or dates
    (polars' own group sum does: at 10M events two runs of one query differed in
    the last bit for a few hundred customers). `ordered=True`: the rows are
    sorted by (group, value) already.
    """
    if not ordered:
        order = np.lexsort((values, group))
        group, values = group[order], values[order]
    if group.size == 0:
        return group, values.astype(np.float64), group
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    counts = np.diff(np.r_[starts, group.size])
    # groups longest first, so the groups with an r-th value are a prefix
    longest = np.argsort(-counts, kind="stable")
    first, size = starts[longest], counts[longest]
    sums = values[first].astype(np.float64)
    live = size.size
    for r in range(1, int(size[0])):
        while size[live - 1] <= r:
            live -= 1
        sums[:live] += values[first[:live] + r]
    back = np.empty_like(longest)
    back[longest] = np.arange(longest.size)
    return group[starts], sums[back], counts


def value_columns(
    spec: FeatureSpec,
    customers: int,
    types: Sequence[str],
    group: np.ndarray,
    sums: np.ndarray,
    counts: np.ndarray,
) -> dict[str, pl.Series]:
    """The value features of customers 0..customers-1 from `ordered_sums` of groups
    `customer * len(types) + type` (nulls where a customer has no values)."""
    total = np.zeros(customers * len(types))
    held = np.zeros(customers * len(types), dtype=np.int64)
    total[group], held[group] = sums, counts
    total, held = total.reshape(customers, len(types)), held.reshape(customers, len(types))
    code = {t: i for i, t in enumerate(types)}
    out = {}
    for column in spec.describe():
        if column.kind not in (Kind.VALUE_SUM, Kind.VALUE_MEAN):
            continue
        j = code.get(column.activity_type)
        if j is None:
            out[column.name] = pl.Series(column.name, [None] * customers, dtype=pl.Float64)
            continue
        n = held[:, j]
        with np.errstate(invalid="ignore", divide="ignore"):
            value = total[:, j] if column.kind is Kind.VALUE_SUM else total[:, j] / n
        out[column.name] = pl.Series(column.name, value).scatter(np.flatnonzero(n == 0), None)
    return out


def _value_table(rows: pl.DataFrame, spec: FeatureSpec) -> pl.DataFrame:
    """Per customer of `rows` (customer_id, event_type, value: the value rows), its value
    features."""
    customers, c = row_codes(rows["customer_id"])
    types = list(spec.valued_types)
    t = rows["event_type"].cast(pl.String).replace_strict(types, range(len(types)))
    group, sums, counts = ordered_sums(
        c * len(types) + t.to_numpy().astype(np.int64), rows["value"].to_numpy()
    )
    columns = value_columns(spec, customers.len(), types, group, sums, counts)
    return pl.DataFrame({"customer_id": customers, **columns})

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

Features (names are stable; `<type>` is each activity type found in the data):

| name | meaning | nulls |
|---|---|---|
| `<type>_count_7d`, `_28d`, `_90d` | events of the type in the 7/28/90 days up to d | never |
| `<type>_days_since_last` | days from the last event of the type to d (0 = on d), within 365 days | none in 365 days |
| `<type>_value_sum_28d`, `<type>_value_mean_28d` | sum / mean of `value` in 28 days (types that carry values) | mean: no event |
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
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

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

OVERALL_FEATURES = (
    "active_days_28d",
    "events_28d",
    "days_since_last_event",
    "trend_28d",
    "events_365d",
    "active_days_365d",
    "activity_rate_vs_365d",
    "tenure_days",
    "plan",
    "mrr",
    "plan_changes",
    "days_since_subscription_change",
)
CATEGORICAL_FEATURES = ("plan",)
NULLABLE_OVERALL = frozenset(
    {"days_since_last_event", "activity_rate_vs_365d", "days_since_subscription_change"}
)
UNKNOWN_PLAN = "unknown"


@dataclass(frozen=True)
class FeatureSpec:
    """Which activity types are tracked, and which of them carry values."""

    activity_types: tuple[str, ...]
    valued_types: tuple[str, ...]

    def columns(self) -> list[str]:
        """Feature column names in table order (after the key columns)."""
        names: list[str] = []
        for t in self.activity_types:
            names += [f"{t}_count_{w}d" for w in WINDOWS_DAYS]
            names.append(f"{t}_days_since_last")
            if t in self.valued_types:
                names += [
                    f"{t}_value_sum_{VALUE_WINDOW_DAYS}d",
                    f"{t}_value_mean_{VALUE_WINDOW_DAYS}d",
                ]
        return names + list(OVERALL_FEATURES)

    def nullable(self) -> set[str]:
        """Columns that may hold nulls (see the table in the module docstring)."""
        names = set(NULLABLE_OVERALL)
        for t in self.activity_types:
            names.add(f"{t}_days_since_last")
            if t in self.valued_types:
                names.add(f"{t}_value_mean_{VALUE_WINDOW_DAYS}d")
        return names

    def schema(self) -> dict[str, pl.DataType]:
        types: dict[str, pl.DataType] = {"customer_id": pl.String(), "as_of": pl.Date()}
        for name in self.columns():
            if name == "plan":
                types[name] = pl.String()
            elif name in ("mrr", "trend_28d", "activity_rate_vs_365d") or "_value_" in name:
                types[name] = pl.Float64()
            else:
                types[name] = pl.Int64()
        return types

    def to_dict(self) -> dict:
        return {
            "activity_types": list(self.activity_types),
            "valued_types": list(self.valued_types),
        }

    @classmethod
    def from_dict(cls, body: dict) -> FeatureSpec:
        return cls(tuple(body["activity_types"]), tuple(body["valued_types"]))


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
        .sort("event_type")
        .collect()
    )
    types = tuple(frame["event_type"].to_list())
    valued = tuple(t for t, v in frame.iter_rows() if v)
    return FeatureSpec(types, valued)


def merge_specs(specs: Iterable[FeatureSpec]) -> FeatureSpec:
    """One spec covering all of `specs` (shards may each see only some types)."""
    types: set[str] = set()
    valued: set[str] = set()
    for spec in specs:
        types.update(spec.activity_types)
        valued.update(spec.valued_types)
    return FeatureSpec(tuple(sorted(types)), tuple(sorted(valued)))


def _days_between(as_of: date, earlier: pl.Expr) -> pl.Expr:
    """Whole calendar days from the (UTC) date of the instant `earlier` to `as_of`."""
    return (pl.lit(as_of, dtype=pl.Date) - earlier.dt.date()).dt.total_days()


def compute_features(
    events: pl.DataFrame | pl.LazyFrame,
    as_of: date,
    spec: FeatureSpec | None = None,
    churn: ChurnDefinition = CANCELLATION,
) -> pl.DataFrame:
    """Features of every customer active at the end of `as_of`, sorted by customer_id.

    `events` holds the customers' events (at least EVENT_COLUMNS; any dates: the
    function itself ignores everything after `as_of`). Activity features need
    the `LOOKBACK_DAYS` up to `as_of`; tenure and subscription state need the
    customer's lifecycle events from the start. `spec` fixes the tracked
    activity types (default: those found in `events`); `churn` says who is
    active (see `features.churn`).

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
        .unique(subset="event_id", keep="first", maintain_order=True)
        .collect()
    )
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
    zero_filled = [
        c for c in spec.columns() if c not in spec.nullable() and c not in OVERALL_FEATURES
    ]
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
    windows = (*WINDOWS_DAYS, 2 * TREND_WINDOW_DAYS, LONG_WINDOW_DAYS, RECENT_ACTIVITY_DAYS)
    in_window = {w: ts >= end - timedelta(days=w) for w in {*windows, churn.horizon_days}}
    aggregations: list[pl.Expr] = []
    for t in spec.activity_types:
        is_type = event_type == t
        for w in WINDOWS_DAYS:
            aggregations.append((is_type & in_window[w]).sum().alias(f"{t}_count_{w}d"))
        aggregations.append(
            _days_between(last_day, ts.filter(is_type).max()).alias(f"{t}_days_since_last")
        )
        if t in spec.valued_types:
            in_value_window = is_type & in_window[VALUE_WINDOW_DAYS]
            values = pl.col("value").filter(in_value_window)
            aggregations += [
                values.sum().alias(f"{t}_value_sum_{VALUE_WINDOW_DAYS}d"),
                values.mean().alias(f"{t}_value_mean_{VALUE_WINDOW_DAYS}d"),
            ]
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

"""One customer's features, computed from its own events without polars: the scorer's fast path.

`compute_features` is the definition; this module evaluates the same
definition for a single customer held as a few numpy arrays (`CustomerEvents`),
for the streaming scorer's small micro-batches, where a polars query costs
milliseconds of planning for a handful of rows. Every rule below mirrors an
expression of `features.definitions` (the names say which), and
`churn_platform_tests/features/test_customer_features.py` checks that both give
the same row, value for value, on simulated and public data and under both
churn definitions.

Two details that equality depends on:

- sums and means of event values are Kahan-compensated sums in arrival order,
  which is what polars computes for a group of a small frame;
- plan and MRR are read from the attributes by polars itself
  (`json_path_match`, a lenient cast), once per lifecycle event when it is
  added: those events are rare, and JSON number formatting is not worth
  re-deriving.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl

from churn_platform.events.contract import (
    LIFECYCLE_EVENT_TYPES,
    SUBSCRIPTION_CANCELLED,
    SUBSCRIPTION_CHANGED,
    SUBSCRIPTION_STARTED,
)
from churn_platform.features.churn import CANCELLATION, RECENT_ACTIVITY_DAYS, ChurnDefinition
from churn_platform.features.definitions import (
    LONG_WINDOW_DAYS,
    LOOKBACK_DAYS,
    OVERALL_FEATURES,
    TREND_WINDOW_DAYS,
    UNKNOWN_PLAN,
    FeatureSpec,
    Kind,
)

DAY_MS = 86_400_000
_EPOCH = date(1970, 1, 1)
# activity types get codes 0, 1, 2, ... as they are first seen; lifecycle types negative ones
_LIFECYCLE_CODES = {SUBSCRIPTION_STARTED: -1, SUBSCRIPTION_CHANGED: -2, SUBSCRIPTION_CANCELLED: -3}
_LIFECYCLE_CODES.update(
    {t: -4 - i for i, t in enumerate(sorted(set(LIFECYCLE_EVENT_TYPES) - set(_LIFECYCLE_CODES)))}
)
_CODES: dict[str, int] = {}


def type_code(event_type: str) -> int:
    """A small integer for an event type (negative for lifecycle types)."""
    code = _LIFECYCLE_CODES.get(event_type)
    if code is not None:
        return code
    code = _CODES.get(event_type)
    if code is None:
        code = _CODES[event_type] = len(_CODES)
    return code


def lifecycle_prices(attributes: Sequence[str | None]) -> list[tuple[str | None, float | None]]:
    """(plan, mrr) of lifecycle events' attributes, read as `compute_features` reads them."""
    frame = pl.DataFrame({"attributes": list(attributes)}, schema={"attributes": pl.String})
    read = frame.select(
        pl.col("attributes").str.json_path_match("$.plan").alias("plan"),
        pl.col("attributes").str.json_path_match("$.mrr").cast(pl.Float64, strict=False),
    )
    return list(zip(read["plan"].to_list(), read["attributes"].to_list(), strict=True))


class CustomerEvents:
    """One customer's held events in arrival order: what `customer_features` reads.

    Numpy arrays that grow as events come (time, type code, value with NaN for
    none: validation admits finite values only, and a hash of the event id);
    lifecycle events also as a short list with their plan and MRR. A repeated
    event id (or a hash collision) sets `repeats`: `compute_features` counts an
    id once, which this class leaves to it (`customer_features` refuses).
    """

    __slots__ = ("_code", "_id", "_ts", "_value", "lifecycle", "repeats", "size")

    def __init__(self, capacity: int = 64) -> None:
        self.size = 0
        self._ts = np.empty(capacity, np.int64)
        self._code = np.empty(capacity, np.int32)
        self._value = np.empty(capacity, np.float64)
        self._id = np.empty(capacity, np.int64)
        self.repeats = False
        # (row, ts_ms, event_id, event_type, plan, mrr), in arrival order
        self.lifecycle: list[tuple[int, int, str, str, str | None, float | None]] = []

    @classmethod
    def from_frame(cls, events: pl.DataFrame) -> CustomerEvents:
        """From an event frame (EVENT_COLUMNS, ts a datetime) of one customer, in its order."""
        n = events.height
        held = cls(n + 64)
        types = events["event_type"].to_list()
        held._ts[:n] = events["ts"].dt.epoch("ms").to_numpy()
        held._code[:n] = [type_code(t) for t in types]
        held._value[:n] = events["value"].fill_null(np.nan).to_numpy()
        ids = events["event_id"].to_list()
        held._id[:n] = [hash(i) for i in ids]
        held.size = n
        held.repeats = len(set(held._id[:n].tolist())) < n
        lifecycle = np.flatnonzero(held._code[:n] < 0).tolist()
        if lifecycle:
            ts = held._ts
            attributes = events["attributes"].gather(lifecycle).to_list()
            held.lifecycle = [
                (row, int(ts[row]), ids[row], types[row], plan, mrr)
                for row, (plan, mrr) in zip(lifecycle, lifecycle_prices(attributes), strict=True)
            ]
        return held

    @classmethod
    def many(cls, events: pl.DataFrame) -> dict[str, CustomerEvents]:
        """One per customer of an event frame (EVENT_COLUMNS), each in the frame's order:
        `from_frame` for many customers in a few vectorised passes."""
        if events.height == 0:
            return {}
        ordered = events.with_row_index("_row").sort(["customer_id", "_row"])
        types = ordered["event_type"]
        codes = {t: type_code(t) for t in types.unique().to_list()}
        code = types.replace_strict(codes, return_dtype=pl.Int32).to_numpy()
        ts = ordered["ts"].dt.epoch("ms").to_numpy()
        value = ordered["value"].fill_null(np.nan).to_numpy()
        ids = ordered["event_id"].to_list()
        id_hash = np.fromiter(map(hash, ids), np.int64, len(ids))
        repeated = ordered.select(pl.struct("customer_id", "event_id").is_duplicated())
        repeated = repeated.to_series().to_numpy()
        lifecycle_rows = np.flatnonzero(code < 0)
        prices = lifecycle_prices(ordered["attributes"].gather(lifecycle_rows).to_list())
        lifecycle_at = dict(zip(lifecycle_rows.tolist(), prices, strict=True))
        type_names = types.to_list() if lifecycle_at else []
        sizes = ordered.group_by("customer_id", maintain_order=True).len()
        out: dict[str, CustomerEvents] = {}
        start = 0
        for customer, n in sizes.iter_rows():
            stop = start + n
            held = cls(n + 16)
            held._ts[:n] = ts[start:stop]
            held._code[:n] = code[start:stop]
            held._value[:n] = value[start:stop]
            held._id[:n] = id_hash[start:stop]
            held.size = n
            held.repeats = bool(repeated[start:stop].any())
            if lifecycle_at:
                held.lifecycle = [
                    (row - start, int(ts[row]), ids[row], type_names[row], *lifecycle_at[row])
                    for row in lifecycle_rows[
                        np.searchsorted(lifecycle_rows, start) : np.searchsorted(
                            lifecycle_rows, stop
                        )
                    ].tolist()
                ]
            out[customer] = held
            start = stop
        return out

    def extend(self, other: CustomerEvents) -> None:
        """Add `other`'s events after these (the same customer's later events)."""
        n, m = self.size, other.size
        if n + m > len(self._ts):
            grown = 2 * (n + m) + 64
            self._ts = np.resize(self._ts, grown)
            self._code = np.resize(self._code, grown)
            self._value = np.resize(self._value, grown)
            self._id = np.resize(self._id, grown)
        ids = other._id[:m]
        if other.repeats or np.isin(ids, self._id[:n]).any():
            self.repeats = True
        self._ts[n : n + m] = other._ts[:m]
        self._code[n : n + m] = other._code[:m]
        self._value[n : n + m] = other._value[:m]
        self._id[n : n + m] = ids
        self.lifecycle += [(row + n, *rest) for row, *rest in other.lifecycle]
        self.size = n + m

    def append(
        self,
        event_id: str,
        event_type: str,
        ts_ms: int,
        value: float | None,
        price: tuple[str | None, float | None] = (None, None),
    ) -> None:
        """Add one event; `price` is (plan, mrr) of a lifecycle event (`lifecycle_prices`)."""
        n = self.size
        if n == len(self._ts):
            grown = 2 * n + 64
            self._ts = np.resize(self._ts, grown)
            self._code = np.resize(self._code, grown)
            self._value = np.resize(self._value, grown)
            self._id = np.resize(self._id, grown)
        code = type_code(event_type)
        key = hash(event_id)
        if not self.repeats and (self._id[:n] == key).any():
            self.repeats = True
        self._ts[n] = ts_ms
        self._code[n] = code
        self._value[n] = np.nan if value is None else value
        self._id[n] = key
        if code < 0:
            self.lifecycle.append((n, ts_ms, event_id, event_type, *price))
        self.size = n + 1


def _kahan(values: np.ndarray) -> float:
    total = compensation = 0.0
    for x in values.tolist():
        y = x - compensation
        t = total + y
        compensation = (t - total) - y
        total = t
    return total


def customer_features(
    events: CustomerEvents,
    customer_id: str,
    as_of: date,
    spec: FeatureSpec,
    churn: ChurnDefinition = CANCELLATION,
) -> dict | None:
    """The customer's row of `compute_features(its events, as_of, spec, churn)`, or None
    when it is not active at the end of `as_of` (no row). Not for events with a
    repeated id (`events.repeats`): `compute_features` handles those."""
    if events.repeats:
        raise ValueError("events with a repeated event id: use compute_features")
    day = (as_of - _EPOCH).days
    end = (day + 1) * DAY_MS
    n = events.size
    ts = events._ts[:n]
    code = events._code[:n]
    value = events._value[:n]
    keep = ts < end

    # _subscription_state and the prices, over the lifecycle events in (ts, event_id) order
    ordered = sorted((e for e in events.lifecycle if keep[e[0]]), key=lambda e: (e[1], e[2]))
    has_lifecycle = bool(ordered)
    active_state = plan_changes = started = changed = plan = mrr = None
    if has_lifecycle:
        active_state = ordered[-1][3] != SUBSCRIPTION_CANCELLED
        plan_changes = sum(1 for e in ordered if e[3] == SUBSCRIPTION_CHANGED)
        starts = [e[1] for e in ordered if e[3] == SUBSCRIPTION_STARTED]
        started = min(starts) if starts else None
        priced = [e for e in ordered if e[3] != SUBSCRIPTION_CANCELLED]
        changed = max(e[1] for e in priced) if priced else None
        plans = [e[4] for e in priced if e[4] is not None]
        mrrs = [e[5] for e in priced if e[5] is not None]
        plan = plans[-1] if plans else None
        mrr = mrrs[-1] if mrrs else None

    window_start = end - LOOKBACK_DAYS * DAY_MS
    kept_ts = ts[keep]
    first_ts = int(kept_ts.min()) if kept_ts.size else None
    in_lookback = kept_ts[kept_ts >= window_start]
    first_window_ts = int(in_lookback.min()) if in_lookback.size else None

    activity = keep & (ts >= window_start) & (code >= 0)
    a_code = code[activity]
    # every window ends with the as-of date: an event is in the w days up to it when its
    # age (whole days before the as-of date, 0..LOOKBACK_DAYS - 1) is below w
    age = day - ts[activity] // DAY_MS
    kinds = len(_CODES)
    per_day = np.bincount(a_code * LOOKBACK_DAYS + age, minlength=kinds * LOOKBACK_DAYS)
    per_day = per_day.reshape(kinds, LOOKBACK_DAYS)  # events by type and age
    within = per_day.cumsum(axis=1)  # events by type in the (age + 1) days up to d
    row: dict = {"customer_id": customer_id, "as_of": as_of}
    layout = _layout(spec, churn)

    def days_since(instant: int | None) -> int | None:
        return None if instant is None else day - instant // DAY_MS

    # per type: events in each window the spec names (by index: days - 1), whether it
    # had any, and the age of its latest event; as Python numbers, read once
    counts = dict(zip(layout.count_at, within[:, layout.count_at].T.tolist(), strict=True))
    latest_age = np.argmax(per_day > 0, axis=1).tolist()
    has_any = (within[:, -1] > 0).tolist()
    a_value = None
    tracked_codes = []
    for activity_type, columns in layout.per_type:
        c = _CODES.get(activity_type)
        if c is not None:
            tracked_codes.append(c)
        selected = None
        for name, kind, window in columns:
            if kind is Kind.COUNT:
                row[name] = 0 if c is None else counts[min(window, LOOKBACK_DAYS) - 1][c]
            elif kind is Kind.RECENCY:
                row[name] = latest_age[c] if c is not None and has_any[c] else None
            else:
                if selected is None:  # the type's values in the value window, in order
                    if c is None or not has_any[c]:
                        selected = value[:0]
                    else:
                        if a_value is None:
                            a_value = value[activity]
                        selected = a_value[(a_code == c) & (age < window)]
                        selected = selected[~np.isnan(selected)]
                if kind is Kind.VALUE_SUM:
                    row[name] = _kahan(selected)
                else:
                    row[name] = _kahan(selected) / selected.size if selected.size else None

    tracked = per_day[tracked_codes].sum(axis=0)  # tracked activity by age
    tracked_within = tracked.cumsum()
    events_28d = int(tracked_within[TREND_WINDOW_DAYS - 1])
    prior_28d = int(tracked_within[2 * TREND_WINDOW_DAYS - 1]) - events_28d
    tracked_days = np.flatnonzero(tracked)  # ages with tracked activity
    long_days = tracked_days[tracked_days < LONG_WINDOW_DAYS]
    events_365d = int(tracked_within[min(LONG_WINDOW_DAYS, LOOKBACK_DAYS) - 1])
    observed = int(long_days[-1]) + 1 if long_days.size else None
    events_recent = int(within[:, RECENT_ACTIVITY_DAYS - 1].sum())

    # _active
    if churn.is_inactivity:
        qualifying = (
            [q for t in churn.qualifying_types if (q := _CODES.get(t)) is not None]
            if churn.qualifying_types
            else slice(None)
        )
        horizon = within[qualifying, min(churn.horizon_days, LOOKBACK_DAYS) - 1]
        active = bool(horizon.sum() > 0)
    elif has_lifecycle:
        active = bool(active_state)
    else:
        active = events_recent > 0
    if not active:
        return None

    rate = None
    if events_365d > 0:
        rate = (events_28d / min(observed, TREND_WINDOW_DAYS)) / (
            events_365d / min(observed, LONG_WINDOW_DAYS)
        )
    tenure_from = next((t for t in (started, first_window_ts, first_ts) if t is not None), None)
    row.update(
        {
            "active_days_28d": int(np.count_nonzero(tracked[:TREND_WINDOW_DAYS])),
            "events_28d": events_28d,
            "days_since_last_event": int(tracked_days[0]) if tracked_days.size else None,
            "trend_28d": (events_28d + 1) / (prior_28d + 1),
            "events_365d": events_365d,
            "active_days_365d": int(long_days.size),
            "activity_rate_vs_365d": rate,
            "tenure_days": days_since(tenure_from),
            "plan": UNKNOWN_PLAN if plan is None else plan,
            "mrr": 0.0 if mrr is None else mrr,
            "plan_changes": plan_changes or 0,
            "days_since_subscription_change": days_since(changed),
        }
    )
    return {name: row[name] for name in layout.names}


@dataclass(frozen=True)
class _Layout:
    """What `customer_features` computes for one (spec, churn definition)."""

    per_type: tuple[tuple[str, tuple[tuple[str, Kind, int | None], ...]], ...]
    count_at: list[int]  # the days - 1 of every count window
    names: tuple[str, ...]


@functools.lru_cache(maxsize=64)
def _layout(spec: FeatureSpec, churn: ChurnDefinition) -> _Layout:
    per_type: dict[str, list[tuple[str, Kind, int | None]]] = {t: [] for t in spec.activity_types}
    for column in spec.describe():
        if column.name not in _OVERALL_NAMES:
            per_type[column.activity_type].append((column.name, column.kind, column.window_days))
    counts = {
        min(window, LOOKBACK_DAYS) - 1
        for _, columns in per_type.items()
        for _, kind, window in columns
        if kind is Kind.COUNT
    }
    return _Layout(
        tuple((t, tuple(columns)) for t, columns in per_type.items()),
        sorted(counts),
        tuple(spec.schema()),
    )


_NO_CODE = -1000  # an activity type never seen: matches no event
_OVERALL_NAMES = frozenset(OVERALL_FEATURES)

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

- sums of event values add them smallest first, one after another, and means
  divide that sum by the count (`definitions.ordered_sums`, which both call);
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
    ordered_sums,
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
        return next(iter(cls.many(events).values()), cls())

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
        if other.repeats or _any_of(ids, self._id[:n]):
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
    return customers_features([(customer_id, events, as_of)], spec, churn)[0]


def customers_features(
    customers: Sequence[tuple[str, CustomerEvents, date]],
    spec: FeatureSpec,
    churn: ChurnDefinition = CANCELLATION,
) -> list[dict | None]:
    """`customer_features` of several (customer, events, as-of date) at once: the
    counting runs over all their events together, so a micro-batch of a few customers
    costs about what one does."""
    if any(events.repeats for _, events, _ in customers):
        raise ValueError("events with a repeated event id: use compute_features")
    k = len(customers)
    if k == 0:
        return []
    layout = _layout(spec, churn)
    days = [(as_of - _EPOCH).days for _, _, as_of in customers]
    sizes = [events.size for _, events, _ in customers]
    starts = np.cumsum([0, *sizes[:-1]]).tolist()
    ts = np.concatenate([events._ts[: events.size] for _, events, _ in customers])
    code = np.concatenate([events._code[: events.size] for _, events, _ in customers])
    value = np.concatenate([events._value[: events.size] for _, events, _ in customers])
    owner = np.repeat(np.arange(k), sizes)
    # each event's age: whole days before its customer's as-of date (negative: after it)
    age = np.repeat(np.array(days, np.int64), sizes) - ts // DAY_MS
    kept = age >= 0  # before the end of the as-of date
    activity = kept & (age < LOOKBACK_DAYS) & (code >= 0)
    a_owner, a_code, a_age = owner[activity], code[activity], age[activity]
    kinds = len(_CODES)
    # events by customer, type and age; every window ends with the as-of date, so an
    # event is in the w days up to it when its age is below w
    per_day = np.bincount(
        (a_owner * kinds + a_code) * LOOKBACK_DAYS + a_age, minlength=k * kinds * LOOKBACK_DAYS
    ).reshape(k, kinds, LOOKBACK_DAYS)
    within = per_day.cumsum(axis=2)
    counts = within[:, :, layout.count_at].tolist()  # [customer][type][window]
    has_any = (within[:, :, -1] > 0).tolist()
    latest_age = np.argmax(per_day > 0, axis=2).tolist()
    codes = {t: _CODES.get(t) for t in spec.activity_types}
    tracked_codes = [c for c in codes.values() if c is not None]
    tracked = per_day[:, tracked_codes, :].sum(axis=1)  # tracked activity by customer, age
    tracked_within = tracked.cumsum(axis=1)
    seen = tracked > 0
    long_seen = seen[:, : min(LONG_WINDOW_DAYS, LOOKBACK_DAYS)]
    events_28d = tracked_within[:, TREND_WINDOW_DAYS - 1].tolist()
    events_56d = tracked_within[:, 2 * TREND_WINDOW_DAYS - 1].tolist()
    events_365d = tracked_within[:, min(LONG_WINDOW_DAYS, LOOKBACK_DAYS) - 1].tolist()
    active_days_28d = seen[:, :TREND_WINDOW_DAYS].sum(axis=1).tolist()
    active_days_365d = long_seen.sum(axis=1).tolist()
    any_tracked = seen.any(axis=1).tolist()
    latest_tracked = np.argmax(seen, axis=1).tolist()
    oldest_long = (long_seen.shape[1] - 1 - np.argmax(long_seen[:, ::-1], axis=1)).tolist()
    events_recent = within[:, :, RECENT_ACTIVITY_DAYS - 1].sum(axis=1).tolist()
    if churn.is_inactivity:
        qualifying = (
            [q for t in churn.qualifying_types if (q := _CODES.get(t)) is not None]
            if churn.qualifying_types
            else list(range(kinds))
        )
        horizon = min(churn.horizon_days, LOOKBACK_DAYS) - 1
        qualifying_recent = within[:, qualifying, horizon].sum(axis=1).tolist()
    values = _values_by_type(layout, value[activity], a_owner, a_code, a_age)

    out: list[dict | None] = []
    for i, (customer_id, events, as_of) in enumerate(customers):
        day = days[i]

        def days_since(instant: int | None, day: int = day) -> int | None:
            return None if instant is None else day - instant // DAY_MS

        # _subscription_state and the prices: lifecycle events in (ts, event_id) order
        end = (day + 1) * DAY_MS
        ordered = sorted((e for e in events.lifecycle if e[1] < end), key=lambda e: (e[1], e[2]))
        active_state = plan_changes = started = changed = plan = mrr = None
        if ordered:
            active_state = ordered[-1][3] != SUBSCRIPTION_CANCELLED
            plan_changes = sum(1 for e in ordered if e[3] == SUBSCRIPTION_CHANGED)
            starts_at = [e[1] for e in ordered if e[3] == SUBSCRIPTION_STARTED]
            started = min(starts_at) if starts_at else None
            priced = [e for e in ordered if e[3] != SUBSCRIPTION_CANCELLED]
            changed = max(e[1] for e in priced) if priced else None
            plans = [e[4] for e in priced if e[4] is not None]
            mrrs = [e[5] for e in priced if e[5] is not None]
            plan = plans[-1] if plans else None
            mrr = mrrs[-1] if mrrs else None

        if churn.is_inactivity:
            active = qualifying_recent[i] > 0
        elif ordered:
            active = bool(active_state)
        else:
            active = events_recent[i] > 0
        if not active:
            out.append(None)
            continue

        tenure_from = started
        if tenure_from is None:  # the first event in the lookback, else the first at all
            own = ts[starts[i] : starts[i] + sizes[i]]
            own_age = age[starts[i] : starts[i] + sizes[i]]
            held = own[own_age >= 0]
            in_lookback = held[own_age[own_age >= 0] < LOOKBACK_DAYS]
            if in_lookback.size:
                tenure_from = int(in_lookback.min())
            elif held.size:
                tenure_from = int(held.min())

        row: dict = {"customer_id": customer_id, "as_of": as_of}
        type_counts, type_any, type_latest = counts[i], has_any[i], latest_age[i]
        for activity_type, columns in layout.per_type:
            c = codes[activity_type]
            for name, kind, window in columns:
                if kind is Kind.COUNT:
                    row[name] = 0 if c is None else type_counts[c][layout.count_index[window]]
                elif kind is Kind.RECENCY:
                    row[name] = type_latest[c] if c is not None and type_any[c] else None
                else:
                    total, n = values.get((i, c), (0.0, 0))
                    if kind is Kind.VALUE_SUM:
                        row[name] = total
                    else:
                        row[name] = total / n if n else None
        observed = oldest_long[i] + 1 if events_365d[i] else None
        rate = None
        if events_365d[i] > 0:
            rate = (events_28d[i] / min(observed, TREND_WINDOW_DAYS)) / (
                events_365d[i] / min(observed, LONG_WINDOW_DAYS)
            )
        row.update(
            {
                "active_days_28d": active_days_28d[i],
                "events_28d": events_28d[i],
                "days_since_last_event": latest_tracked[i] if any_tracked[i] else None,
                "trend_28d": (events_28d[i] + 1) / (events_56d[i] - events_28d[i] + 1),
                "events_365d": events_365d[i],
                "active_days_365d": active_days_365d[i],
                "activity_rate_vs_365d": rate,
                "tenure_days": days_since(tenure_from),
                "plan": UNKNOWN_PLAN if plan is None else plan,
                "mrr": 0.0 if mrr is None else mrr,
                "plan_changes": plan_changes or 0,
                "days_since_subscription_change": days_since(changed),
            }
        )
        out.append({name: row[name] for name in layout.names})
    return out


def _values_by_type(
    layout: _Layout, value: np.ndarray, owner: np.ndarray, code: np.ndarray, age: np.ndarray
) -> dict[tuple[int, int], tuple[float, int]]:
    """(customer, type code) → (sum, count) of the values in the value window, each sum
    adding the values smallest first (`definitions.ordered_sums`, as the batch path)."""
    out: dict[tuple[int, int], tuple[float, int]] = {}
    if layout.value_window is None:
        return out
    valued = [c for t in layout.valued_types if (c := _CODES.get(t)) is not None]
    if not valued:
        return out
    is_valued = np.zeros(len(_CODES), bool)
    is_valued[valued] = True
    picked = (age < layout.value_window) & ~np.isnan(value) & is_valued[code]
    if not picked.any():
        return out
    key = owner[picked] * len(_CODES) + code[picked]
    groups, sums, counts = ordered_sums(key, value[picked])
    for group, total, n in zip(groups.tolist(), sums.tolist(), counts.tolist(), strict=True):
        out[divmod(group, len(_CODES))] = (total, n)
    return out


def _any_of(ids: np.ndarray, held: np.ndarray) -> bool:
    """Whether any of `ids` is in `held` (a few new ids: compared one by one)."""
    if len(ids) <= 16:
        return any(bool((held == x).any()) for x in ids.tolist())
    return bool(np.isin(ids, held).any())


@dataclass(frozen=True)
class _Layout:
    """What `customer_features` computes for one (spec, churn definition)."""

    per_type: tuple[tuple[str, tuple[tuple[str, Kind, int | None], ...]], ...]
    count_at: list[int]  # the days - 1 of every count window
    count_index: dict[int, int]  # count window → its place in count_at
    valued_types: tuple[str, ...]
    value_window: int | None
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
    count_at = sorted(counts)
    windows = [w for cols in per_type.values() for _, kind, w in cols if kind is Kind.COUNT]
    value_windows = {
        w for cols in per_type.values() for _, kind, w in cols if kind is Kind.VALUE_SUM
    }
    value_windows |= {
        w for cols in per_type.values() for _, kind, w in cols if kind is Kind.VALUE_MEAN
    }
    if len(value_windows) > 1:
        raise ValueError(f"one value window expected, got {sorted(value_windows)}")
    return _Layout(
        tuple((t, tuple(columns)) for t, columns in per_type.items()),
        count_at,
        {w: count_at.index(min(w, LOOKBACK_DAYS) - 1) for w in windows},
        tuple(spec.valued_types),
        min(value_windows.pop(), LOOKBACK_DAYS) if value_windows else None,
        tuple(spec.schema()),
    )


_NO_CODE = -1000  # an activity type never seen: matches no event
_OVERALL_NAMES = frozenset(OVERALL_FEATURES)

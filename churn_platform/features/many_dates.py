"""`compute_features` of many as-of dates from one pass over their events.

A training range asks for the feature tables of a dozen weekly dates, each over
its own 365-day window: computed one date at a time, every event is grouped
a dozen times. Here the events are grouped once, by customer, activity type
and *bucket* (the days between two consecutive window edges of any date), and
each date's whole-number features are differences of running totals over the
buckets, or the largest or smallest day among them. Those are exact; so is
everything that follows from them (`_Plan.finish` runs unchanged).

Value sums and means add each customer's values smallest first
(`definitions.ordered_sums`): the value rows are sorted that way once, and
any date's rows are a subset in the same order, so each date's sums are the
bits `compute_features` gives (`test_many_dates` checks every column, to the
bit, against it).

Only where the dates' inputs are the lake's plain case, checked here
(`_plain_files`): every row lies in the raw file of its own event date, each
date reads every file dated up to it (whole when in its window, lifecycle rows
when older), and no event repeats; and only for a date whose spec tracks every
activity type in its window. Any other date is computed by `compute_features`
from its own rows, as before. Many customers are grouped a part at a time
(`MAX_CELLS`), so memory stays bounded whatever the number of customers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl

from churn_platform.events.contract import LIFECYCLE_EVENT_TYPES
from churn_platform.features.churn import RECENT_ACTIVITY_DAYS, ChurnDefinition
from churn_platform.features.definitions import (
    LONG_WINDOW_DAYS,
    LOOKBACK_DAYS,
    OVERALL_FEATURES,
    TREND_WINDOW_DAYS,
    FeatureSpec,
    Kind,
    _plan,
    as_of_end,
    categorical_keys,
    compute_features,
    ordered_sums,
    row_codes,
    value_columns,
)
from churn_platform.features.inputs import FILE_COLUMN, RangeInputs, events_as_of
from churn_platform.lake.raw import event_date_of

_EPOCH = date(1970, 1, 1)
_LIFECYCLE = sorted(LIFECYCLE_EVENT_TYPES)
_NONE = np.iinfo(np.int32).min  # "no day" in the max-day arrays
_NEVER = np.iinfo(np.int32).max  # "no day" in the min-day arrays
# the most cells (customers x activity types x buckets) grouped at once: the grouping
# holds three arrays of them, 8 bytes a cell (~400 MB at this size)
MAX_CELLS = 16_000_000


def features_of_dates(
    frame: pl.DataFrame,
    inputs: RangeInputs,
    specs: Mapping[date, FeatureSpec],
    churn: ChurnDefinition,
    *,
    distinct: bool,
) -> dict[date, pl.DataFrame]:
    """`compute_features(events_as_of(frame, inputs, d), d, specs[d], churn)` of every date.

    `frame` holds rows of `inputs.files` with `FILE_COLUMN`, in file order (a
    customer shard's rows or all of them); `distinct` is the caller's word that
    no `event_id` repeats in it.
    """
    dates = tuple(inputs.dates)
    plain = distinct and not frame.is_empty() and _plain_files(frame, inputs)
    carried: dict[date, list[pl.DataFrame | None]] = {d: [] for d in dates}
    if plain:
        for part in _parts(frame, dates, specs, churn):
            grouped = _Carried.of(part, dates, specs, churn)
            for as_of in dates:
                carried[as_of].append(grouped.table(as_of, specs[as_of]))
    tables = {}
    for as_of in dates:
        parts = carried[as_of]
        if parts and all(p is not None for p in parts):
            table = parts[0] if len(parts) == 1 else pl.concat(parts).sort("customer_id")
        else:
            events = events_as_of(frame, inputs, as_of).drop(FILE_COLUMN)
            table = compute_features(events, as_of, specs[as_of], churn, distinct=distinct)
        tables[as_of] = table
    return tables


def _parts(
    frame: pl.DataFrame,
    dates: tuple[date, ...],
    specs: Mapping[date, FeatureSpec],
    churn: ChurnDefinition,
) -> list[pl.DataFrame]:
    """`frame` cut by customer so each part's arrays hold at most `MAX_CELLS` cells
    (customers x activity types x buckets); each part keeps its rows in order, and a
    customer's row depends on its own events only."""
    types = frame.filter(~pl.col("event_type").is_in(_LIFECYCLE))["event_type"].n_unique()
    cells = frame["customer_id"].n_unique() * max(types, 1) * (len(_edges(dates, specs, churn)) + 1)
    count = -(-cells // MAX_CELLS)
    if count <= 1:
        return [frame]
    part = (pl.col("customer_id").cast(pl.String).hash(seed=0) % count).alias("_part")
    return frame.with_columns(part).partition_by("_part", include_key=False, maintain_order=True)


def _day(as_of: date) -> int:
    return (as_of - _EPOCH).days


def _plain_files(frame: pl.DataFrame, inputs: RangeInputs) -> bool:
    """Each date reads every file dated up to it (whole in its window), and each row lies
    in the file of its event date: then a date's input is its rows by timestamp alone."""
    file_days = [event_date_of(p) for p in inputs.files]
    if any(d is None for d in file_days):
        return False
    for own in inputs.per_date:
        first = own.window_start
        expected_window = {
            p for p, d in zip(inputs.files, file_days, strict=True) if first <= d <= own.as_of
        }
        expected_history = {p for p, d in zip(inputs.files, file_days, strict=True) if d < first}
        if set(own.window_files) != expected_window or set(own.history_files) != expected_history:
            return False
    days = np.array([_day(d) for d in file_days], dtype=np.int32)
    of_file = days[frame[FILE_COLUMN].to_numpy()]
    of_row = frame["ts"].dt.date().cast(pl.Int32).to_numpy()
    return bool(np.array_equal(of_file, of_row))


@dataclass
class _Carried:
    """The events grouped once: per customer, type and bucket, running totals of events
    and days, and the first and last day seen."""

    ts: pl.DataType  # the type of the rows' timestamps
    churn: ChurnDefinition
    customers: pl.Series  # code -> customer_id
    types: tuple[str, ...]  # activity types, by code
    edges: np.ndarray  # window edges (epoch days); bucket j + 1 is [edges[j], edges[j+1])
    counts: np.ndarray  # C x T x (K+1): activity events in the buckets before k
    last: np.ndarray  # C x T x K: the latest activity day in the bucket
    first: np.ndarray  # C x K: the earliest activity day in the bucket
    days: np.ndarray  # C x (K+1): days with activity in the buckets before k
    first_row: np.ndarray  # C x K: the earliest day of any row in the bucket
    first_lifecycle: np.ndarray  # C x K: the earliest lifecycle day in the bucket
    value_group: np.ndarray  # valued activity rows: customer x T + type, ...
    value_day: np.ndarray  # ... their days
    value: np.ndarray  # ... and values, sorted by (group, value)
    lifecycle: pl.DataFrame  # lifecycle rows in compute_features' order

    @classmethod
    def of(
        cls,
        frame: pl.DataFrame,
        dates: tuple[date, ...],
        specs: Mapping[date, FeatureSpec],
        churn: ChurnDefinition,
    ) -> _Carried:
        frame = categorical_keys(frame)  # all before the last date's end: files up to it
        edges = _edges(dates, specs, churn)
        customers, c = row_codes(frame["customer_id"])
        names, kind = row_codes(frame["event_type"])
        activity_names = sorted(n for n in names.to_list() if n not in LIFECYCLE_EVENT_TYPES)
        # type code of each row: its activity type by name, -1 for lifecycle events
        by_name = {n: i for i, n in enumerate(activity_names)}
        type_of = np.array([by_name.get(n, -1) for n in names.to_list()], dtype=np.int64)
        t_row = type_of[kind]
        day = frame["ts"].dt.date().cast(pl.Int32).to_numpy().astype(np.int64)
        n, t, k = customers.len(), len(activity_names), len(edges) + 1
        first_day = int(day.min()) if day.size else 0
        span = int(day.max()) - first_day + 1 if day.size else 1
        bucket_of = np.searchsorted(edges, np.arange(first_day, first_day + span), side="right")
        b = bucket_of[day - first_day]
        act = t_row >= 0
        c_act, t_act, b_act, day_act = c[act], t_row[act], b[act], day[act]
        cell = (c_act * t + t_act) * k + b_act
        counts = np.bincount(cell, minlength=n * t * k)
        last = np.full(n * t * k, _NONE, dtype=np.int64)
        np.maximum.at(last, cell, day_act)
        first = np.full(n * k, _NEVER, dtype=np.int64)
        np.minimum.at(first, c_act * k + b_act, day_act)
        # days with activity: each (customer, day) once, counted in its bucket
        start = int(day_act.min()) if day_act.size else first_day
        width = int(day_act.max()) - start + 1 if day_act.size else 1
        seen = np.zeros(n * width, dtype=bool)
        seen[c_act * width + (day_act - start)] = True
        who, when = np.divmod(np.flatnonzero(seen), width)
        days = np.bincount(who * k + bucket_of[when + start - first_day], minlength=n * k)
        first_row = np.full(n * k, _NEVER, dtype=np.int64)
        np.minimum.at(first_row, c * k + b, day)
        first_lifecycle = np.full(n * k, _NEVER, dtype=np.int64)
        np.minimum.at(first_lifecycle, (c * k + b)[~act], day[~act])
        # value rows in the order `ordered_sums` adds them; any date's are a subset, in order
        held = act & frame["value"].is_not_null().to_numpy()
        group, value = c[held] * t + t_row[held], frame["value"].to_numpy()[held]
        order = np.lexsort((value, group))
        attributes = _plan(dates[-1], specs[dates[-1]], churn).attributes  # any date's
        return cls(
            ts=frame.schema["ts"],
            churn=churn,
            customers=customers,
            types=tuple(activity_names),
            edges=edges,
            counts=_running(counts.reshape(n, t, k)),
            last=last.reshape(n, t, k),
            first=first.reshape(n, k),
            days=_running(days.reshape(n, k)),
            first_row=first_row.reshape(n, k),
            first_lifecycle=first_lifecycle.reshape(n, k),
            value_group=group[order],
            value_day=day[held][order],
            value=value[order],
            lifecycle=frame.filter(pl.col("event_type").is_in(_LIFECYCLE))
            .drop(FILE_COLUMN)
            .sort(["customer_id", "ts", "event_id"])
            .with_columns(attributes),
        )

    def _at(self, day: int) -> int:
        """The running totals' index of the buckets before edge `day`."""
        at = int(np.searchsorted(self.edges, day, side="left"))
        if at == len(self.edges) or self.edges[at] != day:
            raise AssertionError(f"epoch day {day} is not a bucket edge")
        return at + 1

    def _values(self, end: int, spec: FeatureSpec) -> dict[str, pl.Series]:
        """The value features (`definitions.value_columns`) of the date ending at `end`."""
        valued = np.zeros(len(self.types) + 1, dtype=bool)
        valued[[i for i, name in enumerate(self.types) if name in spec.valued_types]] = True
        day = self.value_day
        rows = (
            (day >= end - min(spec.value_window, LOOKBACK_DAYS))
            & (day < end)
            & valued[self.value_group % max(len(self.types), 1)]
        )
        group, sums, counts = ordered_sums(self.value_group[rows], self.value[rows], ordered=True)
        n = self.customers.len()
        return value_columns(spec, n, self.types, group, sums, counts)

    def table(self, as_of: date, spec: FeatureSpec) -> pl.DataFrame | None:
        """The date's table; None when its spec leaves an activity type of its window
        untracked (then the caller computes it from the date's own rows)."""
        end = _day(as_of) + 1
        e = self._at(end)

        def since(window: int) -> int:
            return self._at(end - min(window, LOOKBACK_DAYS))

        def total(running: np.ndarray, window: int) -> np.ndarray:
            return running[..., e] - running[..., since(window)]

        year = since(LOOKBACK_DAYS)
        in_year = total(self.counts, LOOKBACK_DAYS)  # C x T
        present = {self.types[i] for i in np.flatnonzero(in_year.sum(axis=0))}
        if not present <= set(spec.activity_types):
            return None
        code = {name: i for i, name in enumerate(self.types)}
        n = self.customers.len()
        columns: dict[str, np.ndarray] = {}
        day_of: dict[str, np.ndarray] = {}  # latest or earliest days, made "days since" below
        for column in spec.describe():
            if column.name in OVERALL_FEATURES:
                continue
            t = code.get(column.activity_type)
            if column.kind is Kind.COUNT:
                counted = total(self.counts[:, t], column.window_days) if t is not None else None
                columns[column.name] = np.zeros(n, np.int64) if counted is None else counted
            elif column.kind is Kind.RECENCY:
                latest = self.last[:, t, year:e] if t is not None else np.full((n, 1), _NONE)
                day_of[column.name] = latest.max(axis=1, initial=_NONE)
        activity = self.counts.sum(axis=1)  # C x (K+1): every type (all tracked, checked above)
        columns.update(
            active_days_28d=total(self.days, TREND_WINDOW_DAYS),
            events_28d=total(activity, TREND_WINDOW_DAYS),
            _events_prior_28d=activity[:, since(TREND_WINDOW_DAYS)]
            - activity[:, since(2 * TREND_WINDOW_DAYS)],
            events_365d=total(activity, LONG_WINDOW_DAYS),
            active_days_365d=total(self.days, LONG_WINDOW_DAYS),
            _events_recent=total(activity, RECENT_ACTIVITY_DAYS),
        )
        day_of["days_since_last_event"] = self.last[:, :, year:e].max(axis=(1, 2), initial=_NONE)
        day_of["_days_observed"] = self.first[:, year:e].min(axis=1, initial=_NEVER)
        if self.churn.is_inactivity:
            wanted = self.churn.qualifying_types or self.types
            qualifying = self.counts[:, [code[q] for q in wanted if q in code]].sum(axis=1)
            columns["_qualifying_recent"] = total(qualifying, self.churn.horizon_days)
        # the date's input: lifecycle rows of any age, and every row in its window
        first_lifecycle = self.first_lifecycle[:, :e].min(axis=1, initial=_NEVER)
        first_window = self.first_row[:, year:e].min(axis=1, initial=_NEVER)
        ts = self.ts
        last_day = end - 1
        carried = (
            pl.DataFrame(
                {"customer_id": self.customers, **columns, **day_of, **self._values(end, spec)}
            )
            .with_columns(_since(name, last_day) for name in day_of)
            .with_columns(
                (pl.col("_days_observed") + 1),
                _instant(first_window, ts).alias("_first_window_ts"),
                _instant(np.minimum(first_lifecycle, first_window), ts).alias("_first_ts"),
            )
            .filter(pl.Series((first_lifecycle != _NEVER) | (first_window != _NEVER)))
        )
        plan = _plan(as_of, spec, self.churn)
        before_end = pl.col("ts") < as_of_end(as_of)
        lifecycle = self.lifecycle.lazy().filter(before_end)
        query = (
            carried.lazy()
            .join(lifecycle.group_by("customer_id").agg(plan.state), on="customer_id", how="left")
            .join(
                lifecycle.filter(plan.priced).group_by("customer_id").agg(plan.prices),
                on="customer_id",
                how="left",
            )
        )
        return (
            query.filter(plan.active)
            .with_columns(plan.finish)
            .select(plan.output)
            .sort("customer_id")
            .collect()
        )


def _edges(
    dates: tuple[date, ...], specs: Mapping[date, FeatureSpec], churn: ChurnDefinition
) -> np.ndarray:
    """Every window edge `_Carried.table` asks of every date, in epoch days, sorted."""
    # the churn definition's horizon is a window of the inactivity definition only
    horizon = {churn.horizon_days} if churn.is_inactivity else set()
    edges = set()
    for as_of in dates:
        counts, value = specs[as_of].windows()
        windows = {
            *counts,
            value,
            TREND_WINDOW_DAYS,
            2 * TREND_WINDOW_DAYS,
            LONG_WINDOW_DAYS,
            LOOKBACK_DAYS,
            RECENT_ACTIVITY_DAYS,
            *horizon,
        }
        end = _day(as_of) + 1
        edges.add(end)
        edges.update(end - min(w, LOOKBACK_DAYS) for w in windows)
    return np.array(sorted(edges), dtype=np.int64)


def _running(per_bucket: np.ndarray) -> np.ndarray:
    """Running totals over the last axis with a leading zero: [..., k] = buckets before k."""
    out = np.zeros((*per_bucket.shape[:-1], per_bucket.shape[-1] + 1), dtype=np.int64)
    np.cumsum(per_bucket, axis=-1, out=out[..., 1:])
    return out


def _since(name: str, last_day: int) -> pl.Expr:
    """Whole days from column `name`'s epoch day to `last_day` (null where there is none)."""
    day = pl.col(name)
    missing = (day == _NONE) | (day == _NEVER)
    return pl.when(missing).then(None).otherwise(last_day - day).alias(name)


def _instant(days: np.ndarray, dtype: pl.DataType) -> pl.Expr:
    """Midnight (UTC) of each epoch day as `dtype`, null where there is none (only the
    date is read: tenure counts whole days)."""
    day = pl.lit(pl.Series(days))
    return pl.when(day == _NEVER).then(None).otherwise(day.cast(pl.Int32).cast(pl.Date)).cast(dtype)

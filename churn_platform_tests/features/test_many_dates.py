"""Many as-of dates carried from one grouping of their events: each date's table is, to the
bit, `compute_features` of that date's own rows; and value sums do not depend on row order."""

from __future__ import annotations

import math
from datetime import date, timedelta

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from churn_platform.features import many_dates
from churn_platform.features.churn import ChurnDefinition
from churn_platform.features.definitions import (
    FeatureSpec,
    categorical_keys,
    compute_features,
    discover_spec,
    ordered_sums,
)
from churn_platform.features.inputs import (
    FILE_COLUMN,
    events_as_of,
    feature_inputs,
    range_inputs,
    range_inputs_of,
    read_range,
)
from churn_platform.features.many_dates import features_of_dates
from churn_platform.lake.store import Lake

# the last day, a week before, one with files before its window, and an early one
SIM_DATES = [date(2026, 11, 20), date(2026, 11, 13), date(2026, 10, 12), date(2025, 12, 1)]
CDNOW_DATES = [date(1997, 3, 31), date(1997, 9, 30), date(1998, 3, 31), date(1998, 6, 30)]
CHURNS = {
    "cancellation": ChurnDefinition(),
    "inactivity": ChurnDefinition("inactivity", 90),
    "inactivity-logins": ChurnDefinition("inactivity", 30, ("login",)),
}


def _read(lake: Lake, dates):
    inputs = range_inputs(lake, dates)
    frame, _ = read_range(lake, inputs)
    frame = categorical_keys(frame)
    specs = {d: discover_spec(events_as_of(frame, inputs, d).drop(FILE_COLUMN), d) for d in dates}
    return inputs, frame, specs


def _one_at_a_time(frame, inputs, specs, churn, distinct=True) -> dict:
    return {
        d: compute_features(
            events_as_of(frame, inputs, d).drop(FILE_COLUMN), d, specs[d], churn, distinct=distinct
        )
        for d in inputs.dates
    }


def _no_fallback(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a date was computed from its own rows, not carried")

    monkeypatch.setattr(many_dates, "compute_features", refuse)


@pytest.mark.parametrize("churn", list(CHURNS), ids=list(CHURNS))
def test_carried_tables_equal_each_date_alone_on_simulated_events(sim_lake, churn, monkeypatch):
    churn = CHURNS[churn]
    inputs, frame, specs = _read(sim_lake, SIM_DATES)
    expected = _one_at_a_time(frame, inputs, specs, churn)
    _no_fallback(monkeypatch)
    carried = features_of_dates(frame, inputs, specs, churn, distinct=True)
    assert list(carried) == sorted(SIM_DATES)
    for as_of, table in carried.items():
        assert_frame_equal(table, expected[as_of], check_exact=True)
    assert carried[SIM_DATES[0]].height > 20
    assert carried[date(2025, 12, 1)].height > 0


def test_carried_tables_equal_each_date_alone_on_cdnow_purchases(cdnow_lake, monkeypatch):
    """Real purchases no one here wrote, with values: a year of weekly dates."""
    churn = CHURNS["inactivity"]
    dates = [date(1997, 6, 30) + timedelta(days=7 * i) for i in range(20)] + CDNOW_DATES
    inputs, frame, specs = _read(cdnow_lake, dates)
    expected = _one_at_a_time(frame, inputs, specs, churn)
    _no_fallback(monkeypatch)
    carried = features_of_dates(frame, inputs, specs, churn, distinct=True)
    valued = [c for c in carried[CDNOW_DATES[2]].columns if "_value_" in c]
    assert valued
    for as_of, table in carried.items():
        assert_frame_equal(table, expected[as_of], check_exact=True)
    assert carried[CDNOW_DATES[2]].height > 1000


def test_a_shard_of_the_customers_is_carried_as_its_own_one_date_rows(sim_lake, monkeypatch):
    inputs, frame, specs = _read(sim_lake, SIM_DATES)
    shard = frame.filter(pl.col("customer_id").cast(pl.String).str.ends_with("7"))
    expected = _one_at_a_time(shard, inputs, specs, CHURNS["cancellation"])
    _no_fallback(monkeypatch)
    carried = features_of_dates(shard, inputs, specs, CHURNS["cancellation"], distinct=True)
    for as_of, table in carried.items():
        assert_frame_equal(table, expected[as_of], check_exact=True)


def test_dates_outside_the_plain_case_are_computed_from_their_own_rows(sim_lake):
    churn = CHURNS["cancellation"]
    inputs, frame, specs = _read(sim_lake, SIM_DATES)
    # a spec that leaves a type of the window untracked: that date alone falls back
    as_of = SIM_DATES[0]
    narrow = dict(specs)
    spec = specs[as_of]
    narrow[as_of] = FeatureSpec(
        spec.activity_types[1:], tuple(t for t in spec.valued_types if t in spec.activity_types[1:])
    )
    computed = []
    original = many_dates.compute_features

    def counted(events, d, *args, **kwargs):
        computed.append(d)
        return original(events, d, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(many_dates, "compute_features", counted)
        carried = features_of_dates(frame, inputs, narrow, churn, distinct=True)
    assert computed == [as_of]
    expected = _one_at_a_time(frame, inputs, narrow, churn)
    for d, table in carried.items():
        assert_frame_equal(table, expected[d], check_exact=True)
    # inputs recorded before a file arrived: the dates read different files, so every
    # date is computed from its own rows
    stale = feature_inputs(sim_lake, SIM_DATES[1])
    stale = type(stale)(stale.as_of, stale.window_files[:-1], stale.history_files)
    recorded = range_inputs_of(
        [stale, *(feature_inputs(sim_lake, d) for d in SIM_DATES if d != SIM_DATES[1])]
    )
    frame, _ = read_range(sim_lake, recorded)
    frame = categorical_keys(frame)
    computed.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(many_dates, "compute_features", counted)
        carried = features_of_dates(frame, recorded, specs, churn, distinct=True)
    assert sorted(computed) == sorted(SIM_DATES)
    # repeated event ids: each date drops its own repeats, as compute_features does
    twice = pl.concat([frame, frame.head(50)])
    computed.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(many_dates, "compute_features", counted)
        carried = features_of_dates(twice, recorded, specs, churn, distinct=False)
    assert sorted(computed) == sorted(SIM_DATES)
    expected = _one_at_a_time(twice, recorded, specs, churn, distinct=False)
    for d, table in carried.items():
        assert_frame_equal(table, expected[d], check_exact=True)


def test_ordered_sums_add_each_group_smallest_first_whatever_the_row_order():
    rng = np.random.default_rng(11)
    group = rng.integers(0, 40, 3000)
    values = np.round(rng.lognormal(2, 2, 3000), 2) * rng.choice([1.0, -1.0], 3000)
    values[:5] = [0.0, -0.0, 1e300, -1e300, 1e-300]
    groups, sums, counts = ordered_sums(group, values)
    assert list(groups) == sorted(set(group.tolist()))
    for g, total, n in zip(groups, sums, counts, strict=True):
        own = sorted(values[group == g].tolist())
        expected = own[0]
        for x in own[1:]:
            expected += x
        assert n == len(own)
        assert total == expected or (math.isnan(total) and math.isnan(expected))
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(group.size)
        again = ordered_sums(group[order], values[order])
        assert np.array_equal(again[1], sums) and np.array_equal(again[2], counts)
    # polars' sort-then-running-sum of each group is the same sum, bit for bit
    frame = pl.DataFrame({"g": group, "v": values})
    by_polars = (
        frame.group_by("g").agg(pl.col("v").sort().cum_sum().last().alias("s")).sort("g")["s"]
    )
    assert np.array_equal(by_polars.to_numpy(), sums)
    empty = ordered_sums(np.array([], dtype=np.int64), np.array([], dtype=np.float64))
    assert all(part.size == 0 for part in empty)


def test_a_feature_table_does_not_depend_on_the_order_of_its_rows(cdnow_lake):
    """Value sums add in an order of their own: shuffled rows, split frames, the same bits."""
    as_of = CDNOW_DATES[2]
    inputs, frame, specs = _read(cdnow_lake, [as_of])
    events = events_as_of(frame, inputs, as_of).drop(FILE_COLUMN)
    table = compute_features(events, as_of, specs[as_of], CHURNS["inactivity"], distinct=True)
    shuffled = events.sample(fraction=1.0, shuffle=True, seed=5)
    again = compute_features(shuffled, as_of, specs[as_of], CHURNS["inactivity"], distinct=True)
    assert_frame_equal(again, table, check_exact=True)
    assert table.filter(pl.col("purchase_value_sum_28d") > 0).height > 100


def test_customers_grouped_in_parts_give_the_tables_of_one_grouping(sim_lake, monkeypatch):
    """Past `MAX_CELLS` the customers are grouped a part at a time (bounded memory):
    the same tables, to the bit."""
    churn = CHURNS["cancellation"]
    inputs, frame, specs = _read(sim_lake, SIM_DATES)
    whole = features_of_dates(frame, inputs, specs, churn, distinct=True)
    parts = []
    original = many_dates._parts

    def counted(*args):
        found = original(*args)
        parts.append(len(found))
        return found

    monkeypatch.setattr(many_dates, "MAX_CELLS", 3_000)
    monkeypatch.setattr(many_dates, "_parts", counted)
    _no_fallback(monkeypatch)
    cut = features_of_dates(frame, inputs, specs, churn, distinct=True)
    assert parts and parts[0] >= 3
    for as_of, table in whole.items():
        assert_frame_equal(cut[as_of], table, check_exact=True)

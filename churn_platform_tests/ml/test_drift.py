"""PSI: identical and shifted distributions, categories, nulls, constant columns, bands."""

from __future__ import annotations

import math
from datetime import date

import numpy as np
import polars as pl
import pytest

from churn_platform.ml import drift

ROWS = 20_000


def normal(mean: float = 0.0, sd: float = 1.0, seed: int = 0, rows: int = ROWS) -> pl.Series:
    return pl.Series(np.random.default_rng(seed).normal(mean, sd, rows))


def test_the_same_distribution_is_stable_and_a_shifted_one_significant():
    psi, bins = drift.numeric_psi(normal(seed=1), normal(seed=2))
    assert psi < 0.01 and bins == drift.DEFAULT_BINS  # ten deciles, no null bin
    assert drift.numeric_psi(normal(seed=1), normal(seed=1))[0] == pytest.approx(0.0, abs=1e-12)
    shifted, _ = drift.numeric_psi(normal(seed=1), normal(mean=1.0, seed=2))
    assert shifted > 0.25 and drift.band(shifted) == "significant"
    half, _ = drift.numeric_psi(normal(seed=1), normal(mean=0.3, seed=2))
    assert 0.05 < half < shifted  # a smaller shift drifts less


def test_psi_matches_the_formula_on_hand_counted_bins():
    # reference deciles of 0..9 put each value in its own bin; live doubles the top half
    reference = pl.Series([float(v) for v in range(10)] * 10)
    live = pl.Series([float(v) for v in range(10)] * 10 + [float(v) for v in range(5, 10)] * 10)
    psi, _ = drift.numeric_psi(reference, live)
    expected_share, low, high = 0.1, 10 / 150, 20 / 150
    formula = 5 * (low - expected_share) * math.log(low / expected_share) + 5 * (
        high - expected_share
    ) * math.log(high / expected_share)
    assert psi == pytest.approx(formula, rel=1e-9)


def test_categorical_psi_counts_new_and_vanished_categories():
    reference = pl.Series(["basic"] * 50 + ["pro"] * 50)
    shuffled = reference.sample(fraction=1.0, shuffle=True, seed=1)
    assert drift.categorical_psi(reference, shuffled) == (pytest.approx(0.0, abs=1e-12), 2)
    moved = pl.Series(["basic"] * 50 + ["business"] * 50)
    psi, categories = drift.categorical_psi(reference, moved)
    assert categories == 3  # basic, pro, business
    assert psi > 1.0  # half the customers on a plan the reference never saw
    # the same shift in both directions: PSI is symmetric in its two shares
    assert drift.categorical_psi(moved, reference)[0] == pytest.approx(psi)


def test_nulls_are_a_bin_of_their_own():
    reference = pl.Series([1.0, 2.0, 3.0, 4.0] * 250)
    same_values_some_null = pl.Series([1.0, 2.0, 3.0, None] * 250)
    psi, bins = drift.numeric_psi(reference, same_values_some_null)
    assert bins == 5  # 4 value bins + the null bin
    assert psi > 0.25  # a quarter of the rows turned null is drift
    # NaN is treated like null, in numeric and on both sides
    nan = pl.Series([1.0, 2.0, 3.0, float("nan")] * 250)
    assert drift.numeric_psi(reference, nan)[0] == pytest.approx(psi)
    # a reference that is entirely null still compares (null bin vs value bin)
    all_null = pl.Series([None] * 100, dtype=pl.Float64)
    assert drift.numeric_psi(all_null, all_null)[0] == pytest.approx(0.0, abs=1e-12)
    assert drift.numeric_psi(all_null, reference)[0] > 0.25
    # categorical nulls too
    plans = pl.Series(["basic", "pro"] * 50)
    assert drift.categorical_psi(plans, pl.Series(["basic", None] * 50))[0] > 0.25


def test_a_constant_reference_gets_below_equal_above_bins():
    zeros = pl.Series([0.0] * 1000)
    assert drift.numeric_psi(zeros, pl.Series([0.0] * 10)) == (0.0, 1)
    up, bins = drift.numeric_psi(zeros, pl.Series([0.0] * 500 + [3.0] * 500))
    assert bins == 2 and up > 0.25
    down, _ = drift.numeric_psi(pl.Series([5.0] * 1000), pl.Series([5.0] * 500 + [1.0] * 500))
    assert down == pytest.approx(up)  # below and above are symmetric, both visible


def test_bands_and_their_edges():
    assert [drift.band(v) for v in (0.0, 0.099, 0.1, 0.25, 0.2501, 3.0)] == [
        "stable",
        "stable",
        "moderate",
        "moderate",
        "significant",
        "significant",
    ]


def test_feature_psi_orders_by_drift_and_refuses_empty_or_mismatched_tables():
    reference = pl.DataFrame(
        {"a": normal(seed=1), "b": normal(seed=2), "plan": ["basic", "pro"] * (ROWS // 2)}
    )
    live = pl.DataFrame(
        {"a": normal(seed=3), "b": normal(mean=2.0, seed=4), "plan": ["basic"] * ROWS}
    )
    table = drift.feature_psi(reference, live, ["a", "b", "plan"])
    assert table.columns == list(drift.PSI_SCHEMA)
    assert table["feature"].to_list()[-1] == "a"
    assert set(table["feature"].to_list()[:2]) == {"b", "plan"}
    kinds = dict(zip(table["feature"], table["kind"], strict=True))
    assert kinds == {"a": "numeric", "b": "numeric", "plan": "categorical"}
    bands = dict(zip(table["feature"], table["band"], strict=True))
    assert bands["a"] == "stable" and bands["b"] == bands["plan"] == "significant"

    markdown = drift.psi_markdown(table)
    assert markdown.startswith("| feature | kind | PSI | band |")
    assert "| `b` | numeric |" in markdown and len(markdown.splitlines()) == 5

    with pytest.raises(ValueError, match="reference sample is empty"):
        drift.feature_psi(reference.head(0), live, ["a"])
    with pytest.raises(ValueError, match="live feature table is empty"):
        drift.feature_psi(reference, live.head(0), ["a"])
    with pytest.raises(ValueError, match="missing"):
        drift.feature_psi(reference, live.drop("b"), ["a", "b"])


def test_the_report_summarises_bands_and_features_above_a_threshold():
    psi = pl.DataFrame(
        {
            "feature": ["x", "y", "z"],
            "kind": ["numeric"] * 3,
            "psi": [0.4, 0.15, 0.01],
            "band": [drift.band(v) for v in (0.4, 0.15, 0.01)],
            "bins": [10, 10, 10],
            "reference_null_rate": [0.0] * 3,
            "live_null_rate": [0.0] * 3,
        },
        schema=drift.PSI_SCHEMA,
    )
    report = drift.DriftReport(date(2026, 1, 1), psi, "v1", "test", 10, 10)
    assert report.max_psi == 0.4 and report.worst_feature == "x"
    assert report.band_counts() == {"stable": 1, "moderate": 1, "significant": 1}
    assert report.above(0.25) == ["x"] and report.above(0.1) == ["x", "y"]
    assert report.above(0.5) == []


def test_date_spans_of_the_registry_parse_or_give_none():
    assert drift.parse_date_span("2026-01-01..2026-02-01") == (date(2026, 1, 1), date(2026, 2, 1))
    assert drift.parse_date_span("(none)") is None
    assert drift.parse_date_span(None) is None
    assert drift.parse_date_span("2026-13-01..2026-02-01") is None

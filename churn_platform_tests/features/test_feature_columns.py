"""What each feature column is, said once by the spec and asked everywhere else."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from churn_platform.features import definitions
from churn_platform.features.definitions import (
    KEY_COLUMNS,
    FeatureColumn,
    FeatureSpec,
    Kind,
    WindowsDiffer,
    compute_features,
    merge_specs,
)
from churn_platform.features.materialize import check_nulls, check_ranges, check_schema
from churn_platform.ml import frame

SPEC = FeatureSpec(("login", "purchase"), ("purchase",), (5, 21, 60), 14)


def test_the_spec_says_what_each_column_is():
    by_name = {c.name: c for c in SPEC.describe()}
    assert by_name["login_count_21d"] == FeatureColumn("login_count_21d", Kind.COUNT, 21, "login")
    assert by_name["purchase_value_sum_14d"].kind is Kind.VALUE_SUM
    assert by_name["purchase_value_mean_14d"].nullable
    assert by_name["login_days_since_last"].kind is Kind.RECENCY
    assert by_name["plan"].categorical and by_name["plan"].dtype == pl.String
    assert "login_value_sum_14d" not in by_name  # login carries no values
    assert SPEC.columns() == [c.name for c in SPEC.describe()]
    assert SPEC.nullable() == {c.name for c in SPEC.describe() if c.nullable}
    assert list(SPEC.schema())[: len(KEY_COLUMNS)] == list(KEY_COLUMNS)
    assert frame.KEY_COLUMNS is definitions.KEY_COLUMNS  # one owner


def test_a_feature_list_gives_back_its_spec_whatever_the_windows():
    assert FeatureSpec.from_columns(SPEC.columns()) == SPEC
    default = FeatureSpec(("login",), ())
    assert FeatureSpec.from_columns(default.columns()) == default
    # a type whose name holds the naming's own words
    odd = FeatureSpec(("page_count_view",), ("page_count_view",), (3, 9), 9)
    assert FeatureSpec.from_columns(odd.columns()) == odd
    assert SPEC.column("channel") == FeatureColumn("channel", Kind.OTHER, nullable=True)


def test_the_spec_round_trips_and_old_records_keep_their_windows():
    assert FeatureSpec.from_dict(SPEC.to_dict()) == SPEC
    old = FeatureSpec.from_dict({"activity_types": ["login"], "valued_types": []})
    assert old.windows() == ((7, 28, 90), 28)


def test_specs_of_other_windows_are_not_merged():
    with pytest.raises(WindowsDiffer, match="counts over 5/21/60 days, values over 14"):
        merge_specs([SPEC, FeatureSpec(("login",), ())])
    assert merge_specs([SPEC, FeatureSpec(("login",), (), (5, 21, 60), 14)]) == SPEC


def test_model_input_fills_an_absent_column_with_what_the_spec_says():
    table = pl.DataFrame(
        {"customer_id": ["a"], "plan": [None]}, schema_overrides={"plan": pl.String}
    )
    names = ["purchase_value_sum_14d", "purchase_value_mean_14d", "login_count_5d", "plan"]
    x = frame.model_input(table, names, SPEC)
    assert x.row(0) == (0.0, None, 0.0, "unknown")
    # the same without the spec: the names say the same thing
    assert frame.model_input(table, names).row(0) == x.row(0)
    assert frame.categorical_features(names) == ["plan"]


def _events(as_of: date) -> pl.DataFrame:
    end = datetime(as_of.year, as_of.month, as_of.day, 12, tzinfo=UTC)
    rows = [
        ("e1", "a", "subscription_started", end - timedelta(days=100), None, '{"plan":"pro"}'),
        ("e2", "a", "login", end - timedelta(days=3), None, None),
        ("e3", "a", "login", end - timedelta(days=15), None, None),
        ("e4", "a", "purchase", end - timedelta(days=10), 12.5, None),
        ("e5", "a", "purchase", end - timedelta(days=18), 7.5, None),
    ]
    return pl.DataFrame(rows, schema=definitions.EVENT_SCHEMA, orient="row")


def test_compute_features_follows_the_specs_windows():
    as_of = date(2026, 3, 1)
    table = compute_features(_events(as_of), as_of, SPEC)
    assert table.columns == list(SPEC.schema())
    row = table.row(0, named=True)
    assert (row["login_count_5d"], row["login_count_21d"], row["login_count_60d"]) == (1, 2, 2)
    assert row["purchase_value_sum_14d"] == 12.5  # the one 18 days ago is outside 14
    assert row["purchase_value_mean_14d"] == 12.5
    for check in (check_schema(table, SPEC), check_nulls(table, SPEC)):
        assert check.passed, check.details
    assert check_ranges(table, as_of, SPEC).passed


def test_range_rules_come_from_the_kinds():
    as_of = date(2026, 3, 1)
    table = compute_features(_events(as_of), as_of, SPEC)
    cases = {
        "login_days_since_last < 365": pl.lit(400, pl.Int64).alias("login_days_since_last"),
        "login_count_5d <= login_count_21d": pl.lit(9, pl.Int64).alias("login_count_5d"),
        "purchase_count_60d >= 0": pl.lit(-1, pl.Int64).alias("purchase_count_60d"),
        "active_days_28d <= 28": pl.lit(29, pl.Int64).alias("active_days_28d"),
    }
    for rule, broken in cases.items():
        outcome = check_ranges(table.with_columns(broken), as_of, SPEC)
        assert not outcome.passed
        assert rule in str(outcome.details), (rule, outcome.details)

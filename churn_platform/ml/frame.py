"""The model's input: a feature table reduced to the model's columns, in its order.

Training, batch scoring and the streaming scorer all build the matrix here, so
a column the model knows but a table lacks (an activity type that did not occur
in this window) is filled the same way everywhere: counts and sums 0, "days
since" and means null (the models handle missing values), plan "unknown".
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

from churn_platform.features.definitions import CATEGORICAL_FEATURES, UNKNOWN_PLAN

KEY_COLUMNS = ("customer_id", "as_of")
LABEL_COLUMN = "churned"


def feature_columns(table: pl.DataFrame) -> list[str]:
    """The feature columns of a feature (or training) table, in table order."""
    skip = {*KEY_COLUMNS, LABEL_COLUMN, "horizon_days"}
    return [name for name in table.columns if name not in skip]


def numeric_features(features: Sequence[str]) -> list[str]:
    return [name for name in features if name not in CATEGORICAL_FEATURES]


def categorical_features(features: Sequence[str]) -> list[str]:
    return [name for name in features if name in CATEGORICAL_FEATURES]


def _fill_for(name: str) -> pl.Expr:
    if name in CATEGORICAL_FEATURES:
        return pl.lit(UNKNOWN_PLAN, pl.String)
    if "days_since" in name or name.endswith("_mean_28d"):
        return pl.lit(None, pl.Float64)
    return pl.lit(0.0, pl.Float64)


def model_input(table: pl.DataFrame, features: Sequence[str]) -> pl.DataFrame:
    """`table`'s `features` in that order: numbers as Float64, categories as String.

    Columns missing from `table` are added with the neutral value described in
    the module docstring; extra columns are dropped.
    """
    present = set(table.columns)
    exprs = []
    for name in features:
        if name in CATEGORICAL_FEATURES:
            expr = pl.col(name).cast(pl.String).fill_null(UNKNOWN_PLAN) if name in present else None
        else:
            expr = pl.col(name).cast(pl.Float64) if name in present else None
        exprs.append((expr if expr is not None else _fill_for(name)).alias(name))
    return table.select(exprs) if exprs else pl.DataFrame()

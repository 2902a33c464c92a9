"""The model's input: a feature table reduced to the model's columns, in its order.

Training, batch scoring and the streaming scorer all build the matrix here, so
a column the model knows but a table lacks (an activity type that did not occur
in this window) is filled the same way everywhere: with what the feature spec
says a customer without those events holds (`FeatureColumn.fill`: counts and
sums 0, "days since" and means null, which the models handle, plan "unknown").
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import polars as pl

from churn_platform.features.definitions import KEY_COLUMNS, FeatureColumn, FeatureSpec

LABEL_COLUMN = "churned"
__all__ = [
    "KEY_COLUMNS",
    "LABEL_COLUMN",
    "categorical_features",
    "input_rows",
    "feature_columns",
    "model_input",
    "numeric_features",
]


def feature_columns(table: pl.DataFrame) -> list[str]:
    """The feature columns of a feature (or training) table, in table order."""
    skip = {*KEY_COLUMNS, LABEL_COLUMN, "horizon_days"}
    return [name for name in table.columns if name not in skip]


def _described(features: Sequence[str], spec: FeatureSpec | None) -> list[FeatureColumn]:
    """What each feature is, asked of `spec` (default: the spec the names imply)."""
    spec = spec or FeatureSpec.from_columns(features)
    return [spec.column(name) for name in features]


@functools.lru_cache(maxsize=16)
def _described_once(features: tuple[str, ...], spec: FeatureSpec | None) -> list[FeatureColumn]:
    return _described(features, spec)


def numeric_features(features: Sequence[str], spec: FeatureSpec | None = None) -> list[str]:
    return [c.name for c in _described(features, spec) if not c.categorical]


def categorical_features(features: Sequence[str], spec: FeatureSpec | None = None) -> list[str]:
    return [c.name for c in _described(features, spec) if c.categorical]


def model_input(
    table: pl.DataFrame, features: Sequence[str], spec: FeatureSpec | None = None
) -> pl.DataFrame:
    """`table`'s `features` in that order: numbers as Float64, categories as String.

    Columns missing from `table` get the spec's fill (see the module docstring);
    extra columns are dropped. `spec` is the model's (default: the one its
    feature names imply).
    """
    present = set(table.columns)
    exprs = []
    for column in _described(features, spec):
        dtype = pl.String if column.categorical else pl.Float64
        if column.name not in present:
            expr = pl.lit(column.fill, dtype)
        elif column.categorical:
            expr = pl.col(column.name).cast(pl.String).fill_null(column.fill)
        else:
            expr = pl.col(column.name).cast(pl.Float64)
        exprs.append(expr.alias(column.name))
    return table.select(exprs) if exprs else pl.DataFrame()


def input_rows(
    rows: Sequence[Mapping], features: Sequence[str], spec: FeatureSpec | None = None
) -> list[dict]:
    """`model_input` of feature rows given as dicts (one customer each), without a frame:
    the same columns, fills and types (numbers as floats, None for null)."""
    described = _described_once(tuple(features), spec)
    out = []
    for row in rows:
        values = {}
        for column in described:
            value = row.get(column.name, _MISSING)
            if value is _MISSING:
                value = column.fill
            elif column.categorical:
                value = column.fill if value is None else str(value)
            elif value is not None:
                value = float(value)
            values[column.name] = value
        out.append(values)
    return out


_MISSING = object()

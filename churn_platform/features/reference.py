"""The polars reference: the feature table for an as-of date in one process.

Same definitions as the Beam pipeline (`churn_platform.features.definitions`),
computed over all customers at once; tests and benchmarks compare the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

import polars as pl

from churn_platform.features.churn import CANCELLATION, ChurnDefinition
from churn_platform.features.definitions import FeatureSpec, compute_features
from churn_platform.features.inputs import (
    FILE_COLUMN,
    events_as_of,
    feature_inputs,
    range_inputs,
    read_inputs,
    read_range,
)
from churn_platform.lake.store import Lake


def reference_features(
    lake: Lake,
    as_of: date,
    spec: FeatureSpec | None = None,
    churn: ChurnDefinition = CANCELLATION,
) -> pl.DataFrame:
    """Features of every customer active at the end of `as_of`, from the lake."""
    return compute_features(read_inputs(lake, feature_inputs(lake, as_of)), as_of, spec, churn)


def reference_features_range(
    lake: Lake, dates: Sequence[date], churn: ChurnDefinition = CANCELLATION
) -> dict[date, pl.DataFrame]:
    """`reference_features` of each of `dates`, reading every raw file once."""
    inputs = range_inputs(lake, dates)
    frame, _ = read_range(lake, inputs)
    distinct = frame["event_id"].hash().n_unique() == frame.height
    return {
        d: compute_features(
            events_as_of(frame, inputs, d).drop(FILE_COLUMN), d, None, churn, distinct=distinct
        )
        for d in inputs.dates
    }

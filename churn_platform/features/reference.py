"""The polars reference: the feature table for an as-of date in one process.

Same definitions as the Beam pipeline (`churn_platform.features.definitions`),
computed over all customers at once; tests and benchmarks compare the two.
"""

from __future__ import annotations

from datetime import date

import polars as pl

from churn_platform.features.churn import CANCELLATION, ChurnDefinition
from churn_platform.features.definitions import FeatureSpec, compute_features
from churn_platform.features.inputs import feature_inputs, read_inputs
from churn_platform.lake.store import Lake


def reference_features(
    lake: Lake,
    as_of: date,
    spec: FeatureSpec | None = None,
    churn: ChurnDefinition = CANCELLATION,
) -> pl.DataFrame:
    """Features of every customer active at the end of `as_of`, from the lake."""
    return compute_features(read_inputs(lake, feature_inputs(lake, as_of)), as_of, spec, churn)

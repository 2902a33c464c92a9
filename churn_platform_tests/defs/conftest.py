"""Fixtures of the Dagster wiring tests: one trained copy of the ml lake per session."""

from __future__ import annotations

import dagster as dg
import pytest
from threadpoolctl import threadpool_limits

from churn_platform_tests.defs.training_flow import train
from churn_platform_tests.ml.ml_lake import copy_lake


@pytest.fixture(scope="session")
def trained(ml_lake, tmp_path_factory):
    """One successful training_job on a copy of the ml lake: (lake, result).

    Read-only: a test that writes copies the lake first (`copy_lake`).
    """
    lake = copy_lake(ml_lake.lake, tmp_path_factory.mktemp("trained") / "lake")
    # OpenMP threads fighting over a busy machine make HistGradientBoosting ~5x slower
    with threadpool_limits(1), dg.instance_for_test() as test_instance:
        result = train(lake, ml_lake.dates.dates[0], test_instance)
    return lake, result

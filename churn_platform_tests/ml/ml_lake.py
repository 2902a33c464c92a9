"""A simulated lake with feature tables and labels at the default training dates, and a model
trained on it, once per session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from churn_platform.lake.store import Lake
from churn_platform.ml.train import TrainConfig, train_models
from churn_platform.ml.training_set import (
    TrainingDates,
    build_training_set,
    ensure_inputs,
    training_dates,
)
from churn_platform.testing.lakes import LakeSummary, simulated_lake

ML_END = datetime(2026, 6, 30, 12, tzinfo=UTC)
ML_CUSTOMERS = 2000
ML_DAYS = 160


@dataclass(frozen=True)
class MlLake:
    lake: Lake
    summary: LakeSummary
    dates: TrainingDates


@pytest.fixture(scope="session")
def ml_lake(tmp_path_factory) -> MlLake:
    """2,000 customers × 160 days, features (polars) and labels at the 12 weekly training dates.

    Shared and read-only: a test that writes (models, scores) copies it first
    (`copy_lake`).
    """
    root = tmp_path_factory.mktemp("ml") / "lake"
    lake = Lake(str(root))
    summary = simulated_lake(lake, customers=ML_CUSTOMERS, days=ML_DAYS, seed=11, end=ML_END)
    dates = training_dates(lake)
    ensure_inputs(lake, dates.dates, engine="polars")
    return MlLake(lake, summary, dates)


@pytest.fixture(scope="session")
def trained_model(ml_lake):
    """A candidate trained on the shared ML lake (the simulator's event types).

    Shared and read-only: its users (test_scorer, test_scorer_kill, test_broker_outage)
    register it in lakes of their own and read its holdout; none changes it.
    """
    training = build_training_set(ml_lake.lake, ml_lake.dates.dates)
    return train_models(
        training.table,
        training.features,
        TrainConfig(importance_repeats=1, importance_rows=200),
    )


def copy_lake(source: Lake, target_dir) -> Lake:
    """A private, writable copy of a local lake."""
    import shutil

    shutil.copytree(source.uri, target_dir)
    return Lake(str(target_dir))

"""The ML wiring as the tests drive it: definitions over a lake, jobs run in process, results read.

Shared by the ML, monitoring and automation tests; the trained lake itself is
the session fixture `trained` (churn_platform_tests/defs/conftest.py).
"""

from __future__ import annotations

from datetime import date

import dagster as dg

from churn_platform.defs.features.definitions import features_definitions
from churn_platform.defs.ml.definitions import TRAINING_JOB, ml_definitions
from churn_platform.defs.monitoring.definitions import monitoring_definitions
from churn_platform.defs.resources.beam import BeamRunnerResource
from churn_platform.defs.resources.churn import ChurnDefinitionResource
from churn_platform.defs.resources.drift import DriftResource
from churn_platform.defs.resources.gate import GateResource
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.kafka.config import KafkaSettings
from churn_platform.lake.store import Lake
from churn_platform.ml import registry

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
POLARS = {"training_set": {"config": {"engine": "polars"}}}
UNUSED_BOOTSTRAP = KafkaSettings(bootstrap_servers="127.0.0.1:9")


def definitions_for(
    lake: Lake,
    first: date,
    settings: KafkaSettings = UNUSED_BOOTSTRAP,
    drift: DriftResource | None = None,
):
    """Features, ML and monitoring definitions over daily partitions from `first` through
    today, with real resources."""
    partitions = dg.DailyPartitionsDefinition(
        start_date=first.isoformat(), timezone="UTC", end_offset=1
    )
    return dg.Definitions.merge(
        features_definitions(partitions=partitions),
        ml_definitions(partitions=partitions),
        monitoring_definitions(partitions=partitions),
        dg.Definitions(
            resources={
                "lake": LakeResource(root=lake.uri),
                "beam": BeamRunnerResource(),
                "kafka": KafkaResource.from_settings(settings, "customer-events"),
                "drift": drift or DriftResource(),
                "churn": ChurnDefinitionResource(),
                "gate": GateResource(),
            }
        ),
    )


def run_job(definitions, instance, job: str, ops: dict | None = None, partition=None):
    return definitions.resolve_job_def(job).execute_in_process(
        instance=instance,
        partition_key=partition,
        run_config={**QUIET, "ops": ops or {}},
        raise_on_error=False,
    )


def train(lake: Lake, first: date, instance, **model_config) -> dg.ExecuteInProcessResult:
    ops = {**POLARS, "churn_model": {"config": model_config}} if model_config else POLARS
    return run_job(definitions_for(lake, first), instance, TRAINING_JOB, ops)


def materialized(result) -> dict[str, dg.AssetMaterialization]:
    return {
        e.asset_key.to_user_string(): e.materialization
        for e in result.get_asset_materialization_events()
    }


def evaluations(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {c.check_name: c for c in result.get_asset_check_evaluations()}


def failure_text(result) -> str:
    """Every step and run failure message of a run, joined."""
    parts = []
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None:
                parts.append(f"{error.cls_name}: {error.message}")
                error = error.cause
        elif event.is_run_failure and event.message:
            parts.append(event.message)
    return "\n".join(parts)


def champion_bytes(lake: Lake) -> bytes | None:
    try:
        return lake.read_bytes(registry.CHAMPION_FILE)
    except FileNotFoundError:
        return None

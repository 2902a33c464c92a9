"""The Dagster code location: every domain's definitions plus the shared resources.

Built when Dagster loads the code location (`@dg.definitions`), not at import:
resources read which settings exist in the environment and hand them to Dagster
as `dg.EnvVar`s, which it resolves at run time and never displays. Settings
that shape definitions (`CHURN_FEATURES_START_DATE`, `CHURN_TRAINING_CRON`,
`CHURN_DRIFT_PSI_THRESHOLD`, `CHURN_DRIFT_RETRAIN_COOLDOWN_HOURS`, the churn
definition `CHURN_DEFINITION` / `CHURN_HORIZON_DAYS` / `CHURN_QUALIFYING_EVENTS`,
the gate's `CHURN_MIN_ROC_AUC` / `CHURN_GATE_CONFIDENCE`) are read here too, and
a bad value fails the load with a message naming the variable.

Every job runs its steps in the run's own process (`in_process_executor`):
Dagster's default starts a new Python process per step, and importing
Dagster, Beam and scikit-learn again for each of the features, its four
checks, the scores and the drift step made an automated run for today several
times slower (benchmarks/freshness.py, docs/benchmarks.md). Each run is still its own
process (the run launcher), so a failing run cannot take another with it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from churn_platform.defs.automation import automation_definitions
from churn_platform.defs.features.definitions import features_definitions, features_partitions
from churn_platform.defs.ingestion.definitions import ingestion_definitions
from churn_platform.defs.lake.definitions import lake_definitions
from churn_platform.defs.ml.definitions import ml_definitions
from churn_platform.defs.monitoring.definitions import monitoring_definitions
from churn_platform.defs.resources.beam import BeamRunnerResource
from churn_platform.defs.resources.churn import ChurnDefinitionResource
from churn_platform.defs.resources.drift import DriftResource
from churn_platform.defs.resources.gate import GateResource
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.resources.lake import LakeResource

# Every domain's factory takes the same keyword arguments: the as-of partitions that
# the partitioned assets share, and the environment the settings come from.
DOMAINS = (
    ingestion_definitions,
    features_definitions,
    ml_definitions,
    monitoring_definitions,
    automation_definitions,
    lake_definitions,
)


def resources_from_env(
    environ: Mapping[str, str] | None = None,
) -> dict[str, dg.ConfigurableResource]:
    """Every resource, from `environ` (default: the process environment)."""
    environ = os.environ if environ is None else environ
    return {
        "kafka": KafkaResource.from_env(environ),
        "lake": LakeResource.from_env(environ),
        "beam": BeamRunnerResource.from_env(environ),
        "drift": DriftResource.from_env(environ),
        "churn": ChurnDefinitionResource.from_env(environ),
        "gate": GateResource.from_env(environ),
    }


@dg.definitions
def defs() -> dg.Definitions:
    environ = os.environ
    partitions = features_partitions(environ)
    return dg.Definitions.merge(
        *(domain(partitions=partitions, environ=environ) for domain in DOMAINS),
        dg.Definitions(resources=resources_from_env(environ), executor=dg.in_process_executor),
    )

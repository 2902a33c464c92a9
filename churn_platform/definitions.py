"""The Dagster code location: every domain's definitions plus the shared resources.

Built when Dagster loads the code location (`@dg.definitions`), not at import:
resources read which settings exist in the environment and hand them to Dagster
as `dg.EnvVar`s, which it resolves at run time and never displays.
"""

from __future__ import annotations

import dagster as dg

from churn_platform.defs.features.definitions import features_definitions, features_partitions
from churn_platform.defs.ingestion.definitions import ingestion_definitions
from churn_platform.defs.ml.definitions import ml_definitions
from churn_platform.defs.resources.beam import BeamRunnerResource
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.resources.lake import LakeResource


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    return {
        "kafka": KafkaResource.from_env(),
        "lake": LakeResource.from_env(),
        "beam": BeamRunnerResource(),
    }


@dg.definitions
def defs() -> dg.Definitions:
    partitions = features_partitions()
    return dg.Definitions.merge(
        ingestion_definitions(),
        features_definitions(partitions=partitions),
        ml_definitions(partitions),
        dg.Definitions(resources=resources_from_env()),
    )

"""Monitoring wiring: feature drift per as-of date, its warning check, the retraining sensor."""

from collections.abc import Mapping

import dagster as dg

from churn_platform.defs.features.definitions import features_partitions
from churn_platform.defs.monitoring.assets import build_drift_asset
from churn_platform.defs.monitoring.sensors import drift_retraining_sensor


def monitoring_definitions(
    *,
    partitions: dg.PartitionsDefinition | None = None,
    environ: Mapping[str, str] | None = None,
) -> dg.Definitions:
    """`feature_drift` shares the features' as-of partitions."""
    partitions = partitions or features_partitions(environ)
    return dg.Definitions(
        assets=[build_drift_asset(partitions)],
        sensors=[drift_retraining_sensor],
    )

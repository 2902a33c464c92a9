"""Monitoring wiring: feature drift per as-of date, its warning check, the retraining sensor."""

import dagster as dg

from churn_platform.defs.monitoring.assets import build_drift_asset
from churn_platform.defs.monitoring.sensors import drift_retraining_sensor


def monitoring_definitions(partitions: dg.PartitionsDefinition) -> dg.Definitions:
    """`feature_drift` shares the features' as-of partitions."""
    return dg.Definitions(
        assets=[build_drift_asset(partitions)],
        sensors=[drift_retraining_sensor],
    )

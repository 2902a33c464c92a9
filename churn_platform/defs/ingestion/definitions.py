"""Ingestion wiring: the extract asset, its job and the topic sensor."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from churn_platform.defs.ingestion.assets import raw_customer_events, raw_customer_events_job
from churn_platform.defs.ingestion.sensors import customer_events_sensor


def ingestion_definitions(
    *,
    partitions: dg.PartitionsDefinition | None = None,
    environ: Mapping[str, str] | None = None,
) -> dg.Definitions:
    """Nothing here is partitioned or read from `environ`: the arguments every domain takes."""
    return dg.Definitions(
        assets=[raw_customer_events],
        jobs=[raw_customer_events_job],
        sensors=[customer_events_sensor],
    )

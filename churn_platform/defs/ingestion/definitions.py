"""Ingestion wiring: the extract asset, its job and the topic sensor."""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg

from churn_platform.defs.ingestion.assets import raw_customer_events, raw_customer_events_job
from churn_platform.defs.ingestion.sensors import build_customer_events_sensor


def ingestion_definitions(
    *,
    partitions: dg.PartitionsDefinition | None = None,
    environ: Mapping[str, str] | None = None,
) -> dg.Definitions:
    """The extract is not partitioned; with `partitions` (today's as-of dates) the sensor
    chains today's features, checks, scores and drift, whose definitions must be merged in."""
    return dg.Definitions(
        assets=[raw_customer_events],
        jobs=[raw_customer_events_job],
        sensors=[build_customer_events_sensor(partitions)],
    )

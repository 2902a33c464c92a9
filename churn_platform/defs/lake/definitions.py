"""Lake wiring: the maintenance job (compaction, vacuum) and its schedule."""

from collections.abc import Mapping

import dagster as dg

from churn_platform.defs.lake.jobs import lake_maintenance_job
from churn_platform.defs.lake.schedules import lake_maintenance_schedule


def lake_definitions(
    *,
    partitions: dg.PartitionsDefinition | None = None,
    environ: Mapping[str, str] | None = None,
) -> dg.Definitions:
    """Nothing here is partitioned or read from `environ`: the arguments every domain takes."""
    return dg.Definitions(jobs=[lake_maintenance_job], schedules=[lake_maintenance_schedule])

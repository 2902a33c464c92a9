"""Lake wiring: the maintenance job (compaction, vacuum) and its schedule."""

import dagster as dg

from churn_platform.defs.lake.jobs import lake_maintenance_job
from churn_platform.defs.lake.schedules import lake_maintenance_schedule


def lake_definitions() -> dg.Definitions:
    return dg.Definitions(jobs=[lake_maintenance_job], schedules=[lake_maintenance_schedule])

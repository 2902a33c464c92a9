"""`lake_maintenance_schedule`: compact every hour, vacuum once a day, on by default.

An hour of ~10 s extracts adds ~360 files per Kafka partition to the day's
RAW_EVENTS partition; compacting hourly keeps a reader of today's events at a
few files. Vacuum lists every file of a table (full mode), so once a day.
"""

from __future__ import annotations

import dagster as dg

from churn_platform.defs.lake.jobs import MAINTENANCE_JOB
from churn_platform.defs.runs import request_unless_running

MAINTENANCE_SCHEDULE = "lake_maintenance_schedule"
MAINTENANCE_CRON = "17 * * * *"
VACUUM_HOUR_UTC = 4


@dg.schedule(
    name=MAINTENANCE_SCHEDULE,
    job_name=MAINTENANCE_JOB,
    cron_schedule=MAINTENANCE_CRON,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description=f"Compact the lake's tables hourly; vacuum them at {VACUUM_HOUR_UTC:02d}:17 UTC. "
    "Skips while a maintenance run is in progress.",
)
def lake_maintenance_schedule(context: dg.ScheduleEvaluationContext):
    vacuum = context.scheduled_execution_time.hour == VACUUM_HOUR_UTC
    return request_unless_running(
        context.instance,
        MAINTENANCE_JOB,
        MAINTENANCE_SCHEDULE,
        run_config={"ops": {"maintain_lake_tables": {"config": {"vacuum": vacuum}}}},
    )

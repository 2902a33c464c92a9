"""Runs recorded on a Dagster instance with chosen start and end times (public event API)."""

from __future__ import annotations

import time

import dagster as dg


def record_run(instance, hours: float) -> str:
    """A finished run of `hours` on `instance` (its start and end events back-dated)."""
    from churn_platform.defs.lake.jobs import lake_maintenance_job

    run = instance.create_run_for_job(job_def=lake_maintenance_job)
    now = time.time()
    for kind, at in [
        (dg.DagsterEventType.RUN_START, now - hours * 3600 - 60),
        (dg.DagsterEventType.RUN_SUCCESS, now - 60),
    ]:
        event = dg.DagsterEvent(event_type_value=kind.value, job_name=run.job_name)
        instance.report_dagster_event(event, run.run_id, timestamp=at)
    return run.run_id

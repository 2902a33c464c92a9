"""Run-state questions that sensors and schedules ask before requesting a run."""

import time
from collections.abc import Mapping
from typing import Any

import dagster as dg

from churn_platform.defs import tags

# The minimum interval of the sensors that new events wait for (customer_events_sensor, the
# automation sensor). Dagster's daemon looks at its sensors once per loop of at least 5 s,
# and a sensor whose interval is 5 s was skipped every other loop (the loop lands just under
# 5 s after the end of its last tick), so it ticked every 10 s; with 1 s it ticks every loop.
EVERY_DAEMON_LOOP_S = 1

ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def job_in_progress(instance: dg.DagsterInstance, job_name: str) -> bool:
    """Is a run of `job_name` queued, starting or running on this instance?"""
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=job_name, statuses=ACTIVE_RUN_STATUSES), limit=1
    )
    return bool(runs)


def request_unless_running(
    instance: dg.DagsterInstance,
    job_name: str,
    trigger: str,
    run_config: Mapping[str, Any] | None = None,
) -> dg.RunRequest | dg.SkipReason:
    """A run of `job_name` tagged as requested by `trigger`, or a skip while one is in progress."""
    if job_in_progress(instance, job_name):
        return dg.SkipReason(f"a {job_name} run is already queued or running")
    return dg.RunRequest(run_config=dict(run_config or {}), tags={tags.TRIGGER: trigger})


def longest_run(instance: dg.DagsterInstance, limit: int = 1000) -> tuple[float, str]:
    """(hours, run id) of the longest of the instance's last `limit` runs, an active one's so far.

    Maintenance refuses a retention shorter than this: a vacuum would delete
    files such a run had written but not committed yet, or was still reading.
    """
    now = time.time()
    longest, which = 0.0, ""
    for record in instance.get_run_records(limit=limit):
        if record.start_time is None:
            continue
        active = record.dagster_run.status in ACTIVE_RUN_STATUSES
        end = record.end_time or (now if active else record.start_time)
        if end - record.start_time > longest:
            longest, which = end - record.start_time, record.dagster_run.run_id
    return longest / 3600, which

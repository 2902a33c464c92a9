"""Run-state questions that sensors and schedules ask before requesting a run."""

import dagster as dg

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

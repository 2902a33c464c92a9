"""`training_schedule`: retrain on a clock (`CHURN_TRAINING_CRON`, default daily at 03:00 UTC).

Drift can start training sooner (`drift_retraining_sensor`); the schedule makes
sure a model follows the data even when nothing drifts, and retries after a
candidate failed its gate.
"""

import os
from collections.abc import Mapping

import dagster as dg

from churn_platform.defs.runs import request_unless_running

TRAINING_CRON_ENV = "CHURN_TRAINING_CRON"
DEFAULT_TRAINING_CRON = "0 3 * * *"
TRAINING_SCHEDULE = "training_schedule"


def training_cron(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return (environ.get(TRAINING_CRON_ENV) or "").strip() or DEFAULT_TRAINING_CRON


def build_training_schedule(
    job_name: str, environ: Mapping[str, str] | None = None
) -> dg.ScheduleDefinition:
    """The schedule of `job_name` at `training_cron(environ)`, UTC, running by default."""
    cron = training_cron(environ)

    def training_schedule(context: dg.ScheduleEvaluationContext):
        return request_unless_running(context.instance, job_name, TRAINING_SCHEDULE)

    try:
        return dg.schedule(
            name=TRAINING_SCHEDULE,
            job_name=job_name,
            cron_schedule=cron,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description=f"Retrain the churn model at '{cron}' UTC ({TRAINING_CRON_ENV}); skips "
            "while a training run is in progress.",
        )(training_schedule)
    except dg.DagsterInvalidDefinitionError as exc:
        raise ValueError(
            f"{TRAINING_CRON_ENV}={cron!r} is not a cron expression: use five fields such as "
            f"'{DEFAULT_TRAINING_CRON}' (daily at 03:00 UTC) or unset it ({exc})"
        ) from exc

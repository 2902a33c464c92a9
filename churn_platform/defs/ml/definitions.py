"""ML wiring: training set, gated model, champion, scores, their jobs and the training schedule."""

from collections.abc import Mapping

import dagster as dg

from churn_platform.defs.features.definitions import features_partitions
from churn_platform.defs.ml.assets import (
    build_scores_asset,
    churn_champion,
    churn_model,
    training_set,
)
from churn_platform.defs.ml.schedules import build_training_schedule

TRAINING_JOB = "training_job"
SCORING_JOB = "scoring_job"


def ml_definitions(
    *,
    partitions: dg.PartitionsDefinition | None = None,
    environ: Mapping[str, str] | None = None,
) -> dg.Definitions:
    """ML assets; `churn_scores` shares the feature tables' as-of partitions.

    `environ` (default: the process environment) may set `CHURN_TRAINING_CRON`.
    """
    partitions = partitions or features_partitions(environ)
    churn_scores = build_scores_asset(partitions)
    training_job = dg.define_asset_job(
        TRAINING_JOB,
        selection=dg.AssetSelection.assets(training_set, churn_model, churn_champion),
        description="Training set → candidate model and its gate → champion (if the gate passes).",
    )
    scoring_job = dg.define_asset_job(
        SCORING_JOB,
        selection=dg.AssetSelection.assets(churn_scores),
        partitions_def=partitions,
        description="Score every active customer of one as-of date with the champion.",
    )
    return dg.Definitions(
        assets=[training_set, churn_model, churn_champion, churn_scores],
        jobs=[training_job, scoring_job],
        schedules=[build_training_schedule(TRAINING_JOB, environ)],
    )

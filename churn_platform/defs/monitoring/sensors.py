"""`drift_retraining_sensor`: request `training_job` when the newest drift is too large.

It reads `feature_drift` materializations (it never recomputes anything) and
keeps a JSON cursor: the last storage id looked at and the latest as-of date
judged, so drift of older dates (a backfill) never triggers training. It
requests nothing while a training run is in progress or within the drift
resource's cooldown after the last one: a feature that drifts by nature
(tenure grows every day) would otherwise retrain after every new champion.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import dagster as dg

from churn_platform.defs import tags
from churn_platform.defs.ml.definitions import TRAINING_JOB
from churn_platform.defs.monitoring.assets import (
    CHAMPION_VERSION,
    FEATURE_DRIFT,
    MAX_PSI,
    WORST_FEATURE,
)
from churn_platform.defs.resources.drift import DriftResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.defs.runs import job_in_progress
from churn_platform.lake.store import LakeError
from churn_platform.ml import registry

RECORDS_PER_TICK = 100


@dataclass(frozen=True)
class DriftCursor:
    storage_id: int = 0  # last feature_drift materialization looked at
    as_of: str | None = None  # latest as-of date judged; older ones (backfills) are ignored

    @classmethod
    def parse(cls, raw: str | None) -> DriftCursor:
        return cls(**json.loads(raw)) if raw else cls()

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _value(metadata, key: str, default=None):
    entry = metadata.get(key)
    return entry.value if entry is not None else default


def _last_training_within(instance: dg.DagsterInstance, hours: float) -> dg.DagsterRun | None:
    if hours <= 0:
        return None
    since = datetime.now(UTC) - timedelta(hours=hours)
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=TRAINING_JOB, created_after=since), limit=1
    )
    return runs[0] if runs else None


@dg.sensor(
    job_name=TRAINING_JOB,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests training_job when the newest feature_drift has a PSI above the drift "
    "resource's psi_threshold (CHURN_DRIFT_PSI_THRESHOLD), at most once per cooldown.",
)
def drift_retraining_sensor(
    context: dg.SensorEvaluationContext, drift: DriftResource, lake: LakeResource
):
    cursor = DriftCursor.parse(context.cursor)
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=FEATURE_DRIFT, after_storage_id=cursor.storage_id or None),
        limit=RECORDS_PER_TICK,
    ).records
    if not records:
        return dg.SkipReason(
            f"no new feature_drift materialization since storage id {cursor.storage_id}"
        )
    last_id = max(r.storage_id for r in records)
    current = [
        r for r in records if cursor.as_of is None or (r.partition_key or "") >= cursor.as_of
    ]
    if not current:
        context.update_cursor(DriftCursor(last_id, cursor.as_of).dumps())
        return dg.SkipReason(
            f"only drift of as-of dates before {cursor.as_of} (a backfill?) since the last tick: "
            "retraining follows the latest as-of date only"
        )
    record = max(current, key=lambda r: (r.partition_key or "", r.storage_id))
    metadata = record.asset_materialization.metadata
    as_of = record.partition_key
    max_psi = float(_value(metadata, MAX_PSI, 0.0))
    measured = _value(metadata, CHAMPION_VERSION)
    threshold = drift.psi_threshold
    what = (
        f"max PSI {max_psi:.4f} ({_value(metadata, WORST_FEATURE, '?')}) as of {as_of} "
        f"against champion {measured}"
    )
    if max_psi <= threshold:
        context.update_cursor(DriftCursor(last_id, as_of).dumps())
        return dg.SkipReason(f"{what} is within the threshold {threshold}: no retraining")
    if job_in_progress(context.instance, TRAINING_JOB):
        # keep the cursor: the next tick judges again, against the champion that run leaves
        return dg.SkipReason(f"{what} is above {threshold}, but a training run is in progress")
    try:
        champion = registry.read_champion(lake.lake())
    except (LakeError, OSError) as exc:
        return dg.SkipReason(f"could not read the champion to compare ({exc}); will retry")
    serving = champion.version if champion else None
    context.update_cursor(DriftCursor(last_id, as_of).dumps())
    if serving != measured:
        return dg.SkipReason(
            f"{what} is stale: the champion is now {serving}; waiting for drift against it"
        )
    recent = _last_training_within(context.instance, drift.retrain_cooldown_hours)
    if recent is not None:
        return dg.SkipReason(
            f"{what} is above {threshold}, but training run {recent.run_id[:8]} was started "
            f"less than {drift.retrain_cooldown_hours:g} h ago (the cooldown); "
            "training_schedule and later drift retry"
        )
    return dg.RunRequest(
        tags={
            tags.TRIGGER: "drift_retraining_sensor",
            tags.MAX_PSI: f"{max_psi:.4f}",
            tags.DRIFT_AS_OF: str(as_of),
            tags.DRIFTED_CHAMPION: str(measured),
        },
    )

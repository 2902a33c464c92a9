"""Feature wiring: daily as-of partitions, the feature and label assets, checks and job.

The partitions start at `CHURN_FEATURES_START_DATE` (YYYY-MM-DD) when set, else
at the lake's earliest committed event date when the lake is local and
readable while definitions load, else `FALLBACK_HISTORY_DAYS` before today.
Partition d stands for the as-of instant "end of day d (UTC)": its features
count every event before that instant. The latest partition is TODAY's
(`end_offset=1`): features as of today hold every event extracted so far, are
rematerialized as events arrive (declarative automation, see
`assets.build_feature_assets`) and are provisional until the day is over.
`churn_labels` of today is simply not labelable yet (its horizon lies ahead),
and training only uses labelable dates, so nothing learns from a partial day.
"""

import os
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta

import dagster as dg

from churn_platform.defs.features.assets import build_feature_assets
from churn_platform.defs.features.checks import build_feature_checks
from churn_platform.defs.preview import partitioned_checks
from churn_platform.features.materialize import first_event_date
from churn_platform.lake.store import DEFAULT_LAKE_ROOT, Lake, LakeError

START_DATE_ENV = "CHURN_FEATURES_START_DATE"
FALLBACK_HISTORY_DAYS = 365
FEATURES_JOB = "features_job"


def features_start_date(
    environ: Mapping[str, str] | None = None, today: date | None = None
) -> date:
    """The first as-of date: the env var, else the lake's first event date, else a year ago."""
    environ = os.environ if environ is None else environ
    today = today or datetime.now(UTC).date()
    configured = (environ.get(START_DATE_ENV) or "").strip()
    if configured:
        try:
            return date.fromisoformat(configured)
        except ValueError as exc:
            raise ValueError(
                f"{START_DATE_ENV}={configured!r} is not a date: set it to YYYY-MM-DD or unset it"
            ) from exc
    try:
        lake = Lake(environ.get("CHURN_LAKE") or DEFAULT_LAKE_ROOT)
        # an object store is not listed while definitions load: that could be slow or offline
        first = first_event_date(lake) if lake.is_local else None
    except (LakeError, OSError, ValueError):
        first = None
    return first or today - timedelta(days=FALLBACK_HISTORY_DAYS)


def features_partitions(environ: Mapping[str, str] | None = None) -> dg.DailyPartitionsDefinition:
    """Daily as-of dates from `features_start_date` through today (UTC), today included."""
    return dg.DailyPartitionsDefinition(
        start_date=features_start_date(environ).isoformat(), timezone="UTC", end_offset=1
    )


def _checks(partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    with partitioned_checks():
        return build_feature_checks(partitions)


def features_definitions(
    *,
    partitions: dg.PartitionsDefinition | None = None,
    environ: Mapping[str, str] | None = None,
) -> dg.Definitions:
    """Features and labels over `partitions` (default: `features_partitions(environ)`)."""
    partitions = partitions or features_partitions(environ)
    customer_features, churn_labels = build_feature_assets(partitions)
    features_job = dg.define_asset_job(
        FEATURES_JOB,
        selection=dg.AssetSelection.assets(customer_features, churn_labels),
        partitions_def=partitions,
        description="Customer features, their checks and churn labels for one as-of date.",
    )
    return dg.Definitions(
        assets=[customer_features, churn_labels],
        asset_checks=_checks(partitions),
        jobs=[features_job],
    )

"""Declarative automation, on by default: the conditions, and the sensor that evaluates them.

Dagster's implicit automation sensor starts stopped; `churn_automation_sensor`
starts running, so with the daemon up new events flow through without a human:
`customer_events_sensor` requests an extract, and this sensor then requests
today's `customer_features` (with its checks), `churn_scores` and
`feature_drift` in one run. The conditions are Dagster's `eager()` with two
changes (below), built from the same public building blocks rather than by
editing `eager()`'s sub-conditions by their internal labels;
churn_platform_tests/defs/test_automation_conditions.py fails if a Dagster upgrade
changes what `eager()` is made of. `eager()` counts an upstream requested on the
same tick as updated (`will_be_requested`), which is what puts downstream in the
same run.
Assets without a condition (`churn_labels`, the training assets) are never
requested by it.
"""

import functools
import operator
from collections.abc import Mapping

import dagster as dg

from churn_platform.defs import tags
from churn_platform.defs.runs import EVERY_DAEMON_LOOP_S

AUTOMATION_SENSOR = "churn_automation_sensor"
FOLLOW_LABEL = "eager, handled only by a request"
REQUESTED_LABEL = "requested"
AFTER_CHECKS_LABEL = "eager after upstream blocking checks"
# the tags of every run the sensor requests: they follow new events
RUN_TAGS = {tags.TRIGGER: AUTOMATION_SENSOR, tags.FOLLOWS_EVENTS: "true"}
WITH_ASSET_LABEL = "with its asset"


def follow_updates(*, while_upstream_runs: bool = False) -> dg.AutomationCondition:
    """`eager()` whose upstream updates are handled only by requesting the target.

    `eager()` also counts the target's own materialization as handling them. With runs
    overlapping, that loses data: today's features from a second extract landed while an
    earlier run was still scoring, that run's scores then counted as handling them, and
    the newer features were never scored. Now the target is requested again once it is
    no longer in progress (at worst one redundant rerun).

    `while_upstream_runs`: do not wait while an upstream run is queued or in progress.
    For `customer_features`: with live traffic the sensor keeps an extract queued or
    running most of the time, and `eager()` waited for a tick that fell between two
    extracts (docs/benchmarks.md, Freshness). Features read only committed raw files (below
    the ledger), so a running extract cannot hand them half of anything, and its commit
    is one more update that requests them again.
    """
    when = dg.AutomationCondition
    # eager()'s `since_last_handled()` also resets on `newly_updated()`: left out here
    requested = (when.newly_requested() | when.initial_evaluation()).with_label(REQUESTED_LABEL)
    parts = [
        when.in_latest_time_window(),
        (when.newly_missing() | when.any_deps_updated()).since(requested),
        ~when.any_deps_missing(),
        *([] if while_upstream_runs else [~when.any_deps_in_progress()]),
        ~when.in_progress(),
    ]
    return functools.reduce(operator.and_, parts).with_label(FOLLOW_LABEL)


def eager_after_checks() -> dg.AutomationCondition:
    """`follow_updates()`, and only once the upstream partitions' blocking checks passed.

    In one run with its upstream, a failing blocking check stops the asset anyway; this
    covers an upstream materialized by an earlier run (today's features before the
    first champion existed), whose checks may still be running, or may have failed.
    """
    return (follow_updates() & dg.AutomationCondition.all_deps_blocking_checks_passed()).with_label(
        AFTER_CHECKS_LABEL
    )


def with_its_asset() -> dg.AutomationCondition:
    """For an asset check: requested whenever its asset is (same tick, so the same run).

    `eager()` alone is not enough: it waits while the check's previous execution is in
    progress, and the daemon then sent today's features (and the scores after them) off
    without that check, running it in a run of its own afterwards. The `eager()` half
    covers an asset materialized by a run that left the check out.
    """
    return (
        dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested())
        | dg.AutomationCondition.eager()
    ).with_label(WITH_ASSET_LABEL)


def automation_sensor(
    minimum_interval_seconds: int = EVERY_DAEMON_LOOP_S,
) -> dg.AutomationConditionSensorDefinition:
    return dg.AutomationConditionSensorDefinition(
        AUTOMATION_SENSOR,
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        run_tags=RUN_TAGS,
        description="Evaluates the assets' automation conditions: today's features, scores and "
        "drift follow each extract and each new champion.",
    )


def automation_definitions(
    *,
    partitions: dg.PartitionsDefinition | None = None,
    environ: Mapping[str, str] | None = None,
) -> dg.Definitions:
    """The sensor targets every asset; the arguments are the ones every domain takes."""
    return dg.Definitions(sensors=[automation_sensor()])

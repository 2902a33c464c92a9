"""The automation conditions are Dagster's `eager()` but for the two changes automation.py gives.

`follow_updates()` is built from public building blocks, not by editing
`eager()`'s sub-conditions by label. These tests compare it with `eager()`
edited the old way, so a Dagster upgrade that changes what `eager()` is made of
(or renames its internal "handled" sub-condition) fails here, naming the
version, instead of silently leaving the platform on the older behaviour.
"""

from __future__ import annotations

import dagster as dg
import pytest

from churn_platform.defs.automation import (
    FOLLOW_LABEL,
    REQUESTED_LABEL,
    follow_updates,
)

WHEN = dg.AutomationCondition
UPGRADE = (
    f"Dagster {dg.__version__} changed AutomationCondition.eager() (or its internal "
    "'handled' sub-condition, the reset of since_last_handled()): compare eager() in "
    "dagster/_core/definitions/declarative_automation/automation_condition.py with "
    "follow_updates() in churn_platform/defs/automation.py and carry the change over, or "
    "decide it does not apply"
)


def eager_edited_by_label(*, while_upstream_runs: bool) -> dg.AutomationCondition:
    """What automation.py used to build: `eager()` with its "handled" reset replaced."""
    requested = (WHEN.newly_requested() | WHEN.initial_evaluation()).with_label(REQUESTED_LABEL)
    condition = WHEN.eager().replace("handled", requested)
    if while_upstream_runs:
        condition = condition.without(~WHEN.any_deps_in_progress())
    return condition.with_label(FOLLOW_LABEL)


@pytest.mark.parametrize("while_upstream_runs", [False, True])
def test_follow_updates_is_eager_with_only_a_request_as_handling(while_upstream_runs):
    built = follow_updates(while_upstream_runs=while_upstream_runs)
    assert built == eager_edited_by_label(while_upstream_runs=while_upstream_runs), UPGRADE


def test_eager_still_has_the_handled_reset_that_follow_updates_leaves_out():
    """If eager() stopped resetting on its own update, follow_updates() would no longer be
    needed (nor correct to keep as a copy): then the label replace below finds nothing."""
    assert WHEN.eager() != WHEN.eager().replace("handled", WHEN.newly_requested()), UPGRADE

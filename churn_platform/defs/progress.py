"""Progress lines of long steps: in the run's log (the UI), and for a command driving the run.

`churn-platform train`, `demo` and `up` execute the code location's jobs in
their own process with Dagster's console logger silenced (one line per step
instead of Dagster's event stream); they show these lines by listening to
the `PROGRESS_LOGGER` Python logger while a run executes (see runner.py).
"""

from __future__ import annotations

import logging

import dagster as dg

PROGRESS_LOGGER = "churn_platform.progress"


def report(context: dg.AssetExecutionContext, message: str) -> None:
    """`message` as an info line of the run, and to `PROGRESS_LOGGER`."""
    context.log.info(message)
    logging.getLogger(PROGRESS_LOGGER).info(message)

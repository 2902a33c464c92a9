"""Long runs say how far they are: churn_model's steps with their durations, in the run's log
and, through the runner, on the terminal of the command that drives the run (train, demo, up).
The extract's progress lines are tested in test_ingestion_defs.py."""

from __future__ import annotations

import logging
import re

import dagster as dg
from threadpoolctl import threadpool_limits

from churn_platform.defs.progress import PROGRESS_LOGGER
from churn_platform.runner import _progress_to
from churn_platform_tests.defs.training_flow import train
from churn_platform_tests.ml.ml_lake import copy_lake

SECONDS = r"\d+\.\d s"


def test_churn_model_logs_each_step_with_its_duration_and_the_runner_shows_them(ml_lake, tmp_path):
    lake = copy_lake(ml_lake.lake, tmp_path / "lake")
    shown: list[str] = []
    with threadpool_limits(1), dg.instance_for_test() as instance, _progress_to(shown.append):
        result = train(lake, ml_lake.dates.dates[0], instance)
        logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert result.success
    done = [line.strip() for line in shown if not line.endswith("...")]
    expected = [
        rf"churn_model: read the training set: [\d,]+ rows, \d+ as-of dates; {SECONDS}",
        rf"churn_model: evaluation fit \(train dates → holdout\): candidate_fit {SECONDS}, "
        rf"baseline_fit {SECONDS}, importance {SECONDS}; holdout ROC AUC 0\.\d+; {SECONDS}",
        rf"churn_model: gate: bootstrap of the holdout .*: passed; {SECONDS}",
        rf"churn_model: gate: against the champion: passed; {SECONDS}",
        rf"churn_model: served refit on every labelled date: [\d,]+ rows over \d+ dates, its "
        rf"fits \d+\.\d s \(begun beside the evaluation\); {SECONDS}",
        rf"churn_model: registered \S+ \({SECONDS}\)",
    ]
    assert len(done) == len(expected), shown
    for line, pattern in zip(done, expected, strict=True):
        assert re.fullmatch(pattern, line), (pattern, line)
    # a line when each step starts: a long fit is not silence
    assert "  churn_model: evaluation fit (train dates → holdout) ..." in shown
    # the same lines are the run's own log (the UI), indented on the terminal only
    assert all(line.startswith("  ") for line in shown)
    assert {line.strip() for line in shown} <= set(logged)


def test_progress_goes_only_where_it_is_asked_for():
    logger = logging.getLogger(PROGRESS_LOGGER)
    before = (logger.level, logger.propagate, list(logger.handlers))
    shown: list[str] = []
    with _progress_to(shown.append):
        logger.info("extract customer-events: 1,000 messages")
    logger.info("after the run: not shown")
    assert shown == ["  extract customer-events: 1,000 messages"]
    assert (logger.level, logger.propagate, list(logger.handlers)) == before

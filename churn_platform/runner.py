"""One path from the events topic to a champion and scores: the code location's own jobs, in order.

`churn-platform train`, `churn-platform demo` and the bootstrap of
`churn-platform up` all call `run_platform`, which runs, on the project's
Dagster instance (so each step is a run in the UI):

1. `raw_customer_events_job`: the exactly-once extract of what the topic holds;
2. `features_job` for the latest complete date (`customer_features` with its
   blocking checks, then `churn_labels`);
3. `training_job`: training set → candidate and its gate → champion; the
   training set computes the features, checks and labels of the training
   as-of dates the lake lacks in one pass over the events (`ensure_inputs`);
4. `scoring_job` for the latest complete date: the lake and `churn-scores`.

The jobs come from `churn_platform.definitions.defs()`, built after the
extract so the as-of partitions start at the lake's first event date. Where
the data cannot support a step, the path stops there and the summary says
why with the numbers and the setting that changes it (`stopped`); a run that
fails raises `StepFailed` with one line made from the failing check or error,
never a stack trace (Dagster's own log of the run is in the UI).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date

import dagster as dg

from churn_platform.defs.features.definitions import FEATURES_JOB
from churn_platform.defs.ingestion.assets import EXTRACT_JOB
from churn_platform.defs.ml.definitions import SCORING_JOB, TRAINING_JOB
from churn_platform.defs.progress import PROGRESS_LOGGER
from churn_platform.environ import temporary_environ
from churn_platform.lake.store import Lake

# Dagster's console logger prints each failed step's stack trace; the CLI prints one
# line instead and the whole story stays in the run's event log (the UI)
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


class StepFailed(RuntimeError):
    """A run of the path failed; the message is one line a user can act on."""

    def __init__(self, message: str, summary: dict | None = None, run_id: str | None = None):
        super().__init__(message)
        self.summary = summary or {}
        self.run_id = run_id


@dataclass
class PathOptions:
    """What to run and how (defaults: the default path)."""

    extract: bool = True
    train: bool = True
    score: bool = True
    engine: str = "beam"  # customer_features' engine
    max_rejected_rate: float | None = None  # raw_customer_events' limit (None: its default)
    model_config: dict = field(default_factory=dict)  # churn_model run config


class _Forward(logging.Handler):
    """Progress lines of a run (the extract's position, churn_model's steps) to `log`."""

    def __init__(self, log: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log("  " + record.getMessage())


@contextlib.contextmanager
def _progress_to(log: Callable[[str], None]) -> Iterator[None]:
    """While a run executes here: its progress lines (defs/progress.py) go to `log` only."""
    logger = logging.getLogger(PROGRESS_LOGGER)
    handler = _Forward(log)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False  # a root handler would print them twice
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def run_platform(
    instance: dg.DagsterInstance,
    *,
    environ: Mapping[str, str] | None = None,
    options: PathOptions | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the path; returns what it did (see `summary keys` in the module's tests).

    `environ` holds settings for this path only (KAFKA_BOOTSTRAP_SERVERS,
    CHURN_LAKE, CHURN_EVENTS_TOPIC, ...), on top of the process environment.
    """
    options = options or PathOptions()
    # runs resolve their dg.EnvVars from os.environ
    with temporary_environ(environ):
        return _run(instance, options, log)


def _run(instance: dg.DagsterInstance, options: PathOptions, log) -> dict:
    from churn_platform.definitions import defs
    from churn_platform.features.churn import definition_from_env
    from churn_platform.ml.labels import complete_through
    from churn_platform.ml.readiness import problems, profile
    from churn_platform.ml.training_set import TrainingSetError, training_dates

    summary: dict = {"checks_passed": 0, "checks_failed": 0, "runs": []}
    lake = Lake(os.environ.get("CHURN_LAKE") or "var/lake")
    churn = definition_from_env()
    summary["lake_root"] = lake.uri
    summary["churn_definition"] = churn.describe()

    def run(definitions, job: str, partition: str | None = None, ops: dict | None = None):
        started = time.perf_counter()
        with _progress_to(log):
            result = definitions.resolve_job_def(job).execute_in_process(
                instance=instance,
                partition_key=partition,
                run_config={**QUIET, "ops": ops or {}},
                raise_on_error=False,
            )
        checks = result.get_asset_check_evaluations()
        summary["checks_passed"] += sum(c.passed for c in checks)
        summary["checks_failed"] += sum(not c.passed for c in checks)
        summary["runs"].append(
            {
                "job": job,
                "partition": partition,
                "run_id": result.run_id,
                "success": result.success,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
        return result

    if options.extract:
        log("extracting the topic into the lake (raw_customer_events_job) ...")
        ops = (
            {"raw_customer_events": {"config": {"max_rejected_rate": options.max_rejected_rate}}}
            if options.max_rejected_rate is not None
            else {}
        )
        result = run(defs(), EXTRACT_JOB, ops=ops)
        if not result.success:
            raise StepFailed(_extract_failure(result, lake), summary, result.run_id)
        meta = result.asset_materializations_for_node("raw_customer_events")[0].metadata
        summary.update(
            extract_run_id=result.run_id,
            extract_messages=meta["messages"].value,
            extract_rows=meta["rows"].value,
            extract_rejected=meta["rejected"].value,
            extract_messages_per_second=meta["messages_per_second"].value,
        )
        log(
            f"extracted {meta['messages'].value:,} messages: {meta['rows'].value:,} events, "
            f"{meta['rejected'].value:,} quarantined ({meta['seconds'].value:.1f} s)"
        )

    data = profile(lake)
    summary["data"] = data.describe()
    log(f"the lake holds {data.describe()}")
    found = problems(data, churn)
    if found:
        summary["stopped"] = "no model: " + "; ".join(found)
        log(summary["stopped"])
        return summary
    through = complete_through(lake)
    if through is None:
        summary["stopped"] = (
            f"the lake at {lake.url('')} holds no committed events: replay or produce events "
            "into the topic, then run again"
        )
        return summary
    definitions = defs()  # the partitions now start at the lake's first event date
    dates: list[date] = []
    if options.train:
        try:
            chosen = training_dates(lake, churn)
            dates = chosen.dates
            if len(dates) < chosen.wanted:
                log(
                    f"the history holds {len(dates)} of the {chosen.wanted} weekly as-of dates "
                    "the default wants: training on fewer"
                )
        except TrainingSetError as exc:
            summary["stopped"] = f"no model: {exc}"
            log(summary["stopped"])

    started = time.perf_counter()
    log(
        f"customer_features ({options.engine}) and churn_labels for {through} (features_job); "
        f"the {len(dates)} training as-of dates follow in training_set, in one pass ..."
    )
    features_ops = {"customer_features": {"config": {"engine": options.engine}}}
    result = run(definitions, FEATURES_JOB, through.isoformat(), features_ops)
    if not result.success:
        raise StepFailed(
            f"features_job for {through} failed: {_run_failure(result)}", summary, result.run_id
        )
    summary["features_seconds"] = round(time.perf_counter() - started, 1)
    summary.update(_feature_summary(lake, through))
    if not dates:
        return summary

    log(
        "training_job: training_set (the training dates' features, checks and labels, in one "
        "pass over the events) → churn_model (gated) → churn_champion ..."
    )
    ops: dict = {"training_set": {"config": {"engine": options.engine}}}
    if options.model_config:
        ops["churn_model"] = {"config": options.model_config}
    started = time.perf_counter()
    result = run(definitions, TRAINING_JOB, ops=ops)
    summary["training_seconds"] = round(time.perf_counter() - started, 1)
    model = _model_summary(lake, result)
    summary.update(model)
    if "candidate_version" not in model:
        # the training set or the split could not be made from this data: say why
        summary["stopped"] = f"no model: {_run_failure(result)} (run {result.run_id})"
        log(summary["stopped"])
        return summary
    if not summary["gate_passed"]:
        failed = [r for r in summary["gate_reasons"] if " FAILED" in r]
        summary["stopped"] = "no champion: the candidate failed its gate: " + "; ".join(failed)
        log(summary["stopped"])
        return summary
    if not result.success:
        raise StepFailed(f"training_job failed: {_run_failure(result)}", summary, result.run_id)
    log(
        f"champion {summary['champion_version']}: holdout ROC AUC "
        f"{summary['champion_holdout_roc_auc']:.3f} (logistic baseline "
        f"{summary['baseline_holdout_roc_auc']:.3f}); served model fitted on "
        f"{summary['served_rows']:,} rows over every labelled date"
    )
    if not options.score:
        return summary

    log(f"scoring_job as of {through}: every active customer → the lake and churn-scores ...")
    result = run(definitions, SCORING_JOB, through.isoformat())
    if not result.success:
        raise StepFailed(f"scoring_job failed: {_run_failure(result)}", summary, result.run_id)
    summary.update(_scores_summary(lake, through, result))
    return summary


# --- what the runs said --------------------------------------------------------------


def _run_failure(result: dg.ExecuteInProcessResult) -> str:
    """The failing blocking checks, else the first step error, as one line."""
    failed = [c for c in result.get_asset_check_evaluations() if not c.passed]
    if failed:
        parts = []
        for check in failed:
            meta = check.metadata
            detail = meta.get("rules") or meta.get("error")
            text = getattr(detail, "value", None) or ", ".join(
                f"{k}={getattr(v, 'value', v)}" for k, v in list(meta.items())[:6]
            )
            parts.append(f"check {check.check_name} failed ({str(text).strip()})")
        return "; ".join(parts) + f" (run {result.run_id} in the UI has the details)"
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            # the user's error is the innermost cause; Dagster wraps it
            while error.cause is not None:
                error = error.cause
            message = error.message.strip().splitlines()[0] if error.message.strip() else ""
            return message.split(": ", 1)[1] if ": " in message else message
    return f"run {result.run_id} failed; see it in the UI"


def _extract_failure(result: dg.ExecuteInProcessResult, lake: Lake) -> str:
    from churn_platform.defs.ingestion.assets import REJECTED_RATE_CHECK

    for check in result.get_asset_check_evaluations():
        if check.check_name == REJECTED_RATE_CHECK and not check.passed:
            meta = result.asset_materializations_for_node("raw_customer_events")[0].metadata
            rate = check.metadata["rejected_rate"].value
            limit = check.metadata["max_rejected_rate"].value
            reasons = check.metadata["rejected_by_reason"].value
            top = ", ".join(f"{r} {n:,}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
            return (
                f"the extract quarantined {rate:.2%} of {meta['messages'].value:,} messages "
                f"({meta['rejected'].value:,}: {top}), more than raw_customer_events' "
                f"max_rejected_rate of {limit:.2%}; the rejects and their raw bytes are in "
                f"{lake.url('quarantine/customer_events')} and the {meta['rows'].value:,} valid "
                "events are in the lake; raise the limit (--max-rejected-rate, or run config "
                "max_rejected_rate) or fix what produces the messages"
            )
    return f"the extract failed: {_run_failure(result)}"


def _feature_summary(lake: Lake, as_of: date) -> dict:
    from churn_platform.features.materialize import read_features

    table = read_features(lake, as_of)
    return {
        "features_as_of": as_of.isoformat(),
        "customers_with_features": table.height,
        "feature_count": table.width - 2,
    }


def _model_summary(lake: Lake, outcome: dg.ExecuteInProcessResult) -> dict:
    from churn_platform.ml import registry
    from churn_platform.ml.training_set import read_training_set

    materialized = outcome.asset_materializations_for_node("churn_model")
    if not materialized:
        return {}
    version = materialized[0].metadata["version"].value
    record = registry.read_record(lake, version)
    champion = registry.read_champion(lake)
    training = read_training_set(lake)
    evaluation = record.evaluation
    candidate, baseline = evaluation.candidate, evaluation.baseline
    passed = record.gate.passed
    return {
        "training_rows": training.rows,
        "training_as_of_dates": [d.isoformat() for d in training.dates],
        "training_churn_rate": round(training.positives / max(training.rows, 1), 4),
        "split": {k: v for k, v in record.training.items() if k.endswith(("_dates", "_rows"))},
        "served_rows": record.training.get("served_rows", 0),
        "candidate_version": version,
        "gate_passed": passed,
        "gate_reasons": list(record.gate.reasons),
        "champion_version": champion.version if champion and passed else None,
        "champion_holdout_roc_auc": candidate.roc_auc,
        "champion_holdout_pr_auc": candidate.pr_auc,
        "champion_holdout_brier": candidate.brier,
        "champion_top_decile_lift": candidate.top_decile_lift,
        "champion_top_decile_capture": candidate.top_decile_capture,
        "baseline_holdout_roc_auc": baseline.roc_auc,
        "baseline_holdout_pr_auc": baseline.pr_auc,
        "baseline_holdout_brier": baseline.brier,
        "baseline_top_decile_lift": baseline.top_decile_lift,
        "holdout_rows": candidate.rows,
        "holdout_churn_rate": candidate.base_rate,
        "dropped_features": record.training.get("dropped_features", {}),
    }


def _scores_summary(lake: Lake, as_of: date, outcome: dg.ExecuteInProcessResult) -> dict:
    from churn_platform.ml.score import read_scores, top_at_risk

    metadata = outcome.asset_materializations_for_node("churn_scores")[0].metadata
    scores = read_scores(lake, as_of)
    bands = {
        key.removeprefix("band_"): value.value
        for key, value in metadata.items()
        if key.startswith("band_")
    }
    top = top_at_risk(scores, 10)
    return {
        "scores_as_of": as_of.isoformat(),
        "customers_scored": scores.height,
        "scores_produced_to_kafka": metadata["produced_to_kafka"].value,
        "risk_bands": bands,
        "top_at_risk": [
            {
                "customer_id": row["customer_id"],
                "churn_probability": round(row["churn_probability"], 4),
                "risk_band": row["risk_band"],
            }
            for row in top.iter_rows(named=True)
        ],
    }


# --- for people ---------------------------------------------------------------------


def summary_lines(summary: dict) -> list[str]:
    """What the path did, a line per step, for the CLI (demo and train print these)."""
    lines = [f"  churn                {summary['churn_definition']}"]
    if summary.get("runs"):
        lines.append(
            f"  Dagster runs         {len(summary['runs'])} on the project's instance "
            "(see them in the UI: make up, or dg dev)"
        )
    if "features_as_of" in summary:
        lines.append(
            f"  features             {summary['customers_with_features']:,} active customers × "
            f"{summary['feature_count']} features as of {summary['features_as_of']} "
            f"({summary['features_seconds']} s)"
        )
    if "training_rows" in summary:
        dates = summary["training_as_of_dates"]
        lines += [
            f"  training set         {summary['training_rows']:,} rows over {len(dates)} as-of "
            f"dates {dates[0]} .. {dates[-1]}, {summary['training_churn_rate']:.1%} churned",
            f"  holdout              {summary['split'].get('holdout_dates')} "
            f"({summary['holdout_rows']:,} rows, {summary['holdout_churn_rate']:.1%} churned)",
            "                       ROC AUC  PR AUC  Brier    top-decile lift",
            f"  gradient boosting    {summary['champion_holdout_roc_auc']:.4f}   "
            f"{summary['champion_holdout_pr_auc']:.4f}  {summary['champion_holdout_brier']:.4f}   "
            f"{summary['champion_top_decile_lift']:.2f}",
            f"  logistic baseline    {summary['baseline_holdout_roc_auc']:.4f}   "
            f"{summary['baseline_holdout_pr_auc']:.4f}  {summary['baseline_holdout_brier']:.4f}   "
            f"{summary['baseline_top_decile_lift']:.2f}",
            f"  gate                 {'passed' if summary['gate_passed'] else 'FAILED'}",
            *(f"                         {reason}" for reason in summary["gate_reasons"]),
            f"  champion             {summary['champion_version'] or '(none)'}"
            + (
                f", served model fitted on all {summary['served_rows']:,} rows"
                if summary.get("champion_version") and summary.get("served_rows")
                else ""
            ),
        ]
    if "customers_scored" in summary:
        bands = ", ".join(f"{name} {count:,}" for name, count in summary["risk_bands"].items())
        lines += [
            f"  scores               {summary['customers_scored']:,} customers as of "
            f"{summary['scores_as_of']} ({bands}); {summary['scores_produced_to_kafka']:,} "
            "produced to churn-scores",
            "  most at risk         "
            + "\n                       ".join(
                f"{row['customer_id']}  {row['churn_probability']:.3f}  {row['risk_band']}"
                for row in summary["top_at_risk"]
            ),
        ]
    if "checks_passed" in summary:
        lines.append(
            f"  checks               {summary['checks_passed']} passed, "
            f"{summary['checks_failed']} failed"
        )
    if summary.get("stopped"):
        lines.append(f"  stopped              {summary['stopped']}")
    return lines

"""`churn-platform train`: from what the topic holds to a champion and scores, as Dagster runs.

The path `runner.run_platform` runs (extract → features and labels for the
training dates → model, gate, champion → scores of the latest complete date),
each step a run of the project's own jobs on the project's instance
(`DAGSTER_HOME`, default var/dagster), so `make up` / `dg dev` shows them.
Exit 0: a champion scored every active customer; 1: the data could not
support a model (the line says why, with the setting that changes it); 2: bad
settings or a failed step.
"""

from __future__ import annotations

import argparse
import json
import os

from churn_platform.cli import UserError
from churn_platform.cli.common import (
    add_kafka_arguments,
    add_lake_argument,
    add_max_rejected_rate_argument,
    kafka_settings,
    lake_root,
    max_rejected_rate,
    progress_printer,
)

NOT_SUPPORTED = 1


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="extract the topic, then features, model, champion and scores as Dagster runs",
        description="Runs the platform's own Dagster jobs once, in order, on the project's "
        "instance: raw_customer_events_job (what the topic holds, exactly once), features_job "
        "for the training as-of dates and the latest complete date, training_job (training "
        "set, model, gate, champion) and scoring_job. Churn follows CHURN_DEFINITION "
        "(cancellation or inactivity), CHURN_HORIZON_DAYS and CHURN_QUALIFYING_EVENTS. "
        "Exit 1 when the data cannot support a model (why and what to change are printed).",
    )
    parser.add_argument(
        "--topic",
        default=None,
        help="events topic (default: $CHURN_EVENTS_TOPIC, else customer-events)",
    )
    add_lake_argument(parser)
    parser.add_argument(
        "--skip-extract", action="store_true", help="use what the lake holds; do not read Kafka"
    )
    parser.add_argument(
        "--engine",
        choices=("beam", "polars"),
        default="beam",
        help="feature engine (default beam: the pipeline that scales out; polars: one process)",
    )
    add_max_rejected_rate_argument(parser)
    parser.add_argument(
        "--min-roc-auc",
        type=float,
        default=None,
        help="an absolute holdout ROC AUC floor for the gate (default: $CHURN_MIN_ROC_AUC, else "
        "none: judged against no skill, the baseline and the champion)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_kafka_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import dagster as dg

    from churn_platform.features.churn import ChurnDefinitionError, definition_from_env
    from churn_platform.instance import prepare_dagster_home
    from churn_platform.kafka.config import KafkaConfigError
    from churn_platform.runner import PathOptions, StepFailed, run_platform, summary_lines

    rejected_rate = max_rejected_rate(args)
    if args.min_roc_auc is not None and not 0.5 <= args.min_roc_auc <= 1:
        raise UserError(f"--min-roc-auc must be in [0.5, 1] (got {args.min_roc_auc})")
    try:
        definition_from_env()
        settings = kafka_settings(args)
    except (ChurnDefinitionError, KafkaConfigError) as exc:
        raise UserError(str(exc)) from exc
    environ = {
        "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "CHURN_LAKE": args.lake or lake_root(),
        "CHURN_EVENTS_TOPIC": args.topic
        or os.environ.get("CHURN_EVENTS_TOPIC")
        or "customer-events",
    }
    log = progress_printer(args.json)
    os.environ["DAGSTER_HOME"] = str(prepare_dagster_home())
    options = PathOptions(
        extract=not args.skip_extract,
        engine=args.engine,
        max_rejected_rate=rejected_rate,
        model_config={"min_roc_auc": args.min_roc_auc} if args.min_roc_auc is not None else {},
    )
    log(
        f"topic {environ['CHURN_EVENTS_TOPIC']!r} on {settings.bootstrap_servers} → lake "
        f"{environ['CHURN_LAKE']}; Dagster instance {os.environ['DAGSTER_HOME']}"
    )
    try:
        with dg.DagsterInstance.get() as instance:
            summary = run_platform(instance, environ=environ, options=options, log=log)
    except StepFailed as exc:
        raise UserError(str(exc)) from exc
    if args.json:
        print(json.dumps(summary))
    else:
        print("\n".join(["", "Churn Platform train", *summary_lines(summary)]))
    if summary.get("stopped") or "customers_scored" not in summary:
        return NOT_SUPPORTED
    return 0

"""`churn-platform demo`: the whole platform once, end to end, with a summary."""

from __future__ import annotations

import argparse
import json
import os
import sys

from churn_platform.cli import UserError
from churn_platform.cli.simulate import add_size_arguments, config_from_args
from churn_platform.kafka.config import KafkaSettings

# enough customers and history for twelve weekly as-of dates with a 30-day
# label horizon and a holdout after purging (see churn_platform.ml.train)
DEMO_CUSTOMERS = 6000
DEMO_DAYS = 180


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="simulate events, extract them with Dagster, print what happened",
        description="Starts the embedded broker (unless KAFKA_BOOTSTRAP_SERVERS is set), runs the "
        "simulator and materializes the pipeline's assets, then prints a summary.",
    )
    # a few malformed messages by default, so the demo shows the quarantine at work
    add_size_arguments(parser, customers=DEMO_CUSTOMERS, days=DEMO_DAYS, bad_fraction=0.002)
    parser.add_argument("--partitions", type=int, default=6, help="topic partitions (default 6)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from churn_platform.demo import format_summary, run_demo

    config = config_from_args(args)
    settings = KafkaSettings.from_env() if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else None
    log = (
        (lambda msg: print(msg, file=sys.stderr, flush=True))
        if args.json
        else (lambda msg: print(msg, flush=True))
    )
    try:
        summary = run_demo(
            config,
            settings=settings,
            partitions=args.partitions,
            progress=not args.json,
            log=log,
        )
    except RuntimeError as exc:
        raise UserError(str(exc)) from exc
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
    return 0

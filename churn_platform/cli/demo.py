"""`churn-platform demo`: the whole platform once, end to end, with a summary."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from datetime import UTC, datetime

from churn_platform.cli import UserError
from churn_platform.cli.common import (
    add_max_rejected_rate_argument,
    max_rejected_rate,
    progress_printer,
)
from churn_platform.cli.simulate import add_size_arguments, config_from_args
from churn_platform.kafka.config import KafkaSettings

# enough customers and history for twelve weekly as-of dates with a 30-day
# label horizon and a holdout after purging (see churn_platform.ml.train)
DEMO_CUSTOMERS = 6000
DEMO_DAYS = 180
DEMO_TOPIC_PREFIX = "churn-platform-demo-"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="simulate events, extract them with Dagster, print what happened",
        description="Starts the embedded broker, runs the simulator into it and then the "
        "platform's own jobs (extract, features, model, scores), then prints a summary. With "
        "KAFKA_BOOTSTRAP_SERVERS set, the simulated events go to a new topic of the demo's own "
        "on that cluster and the demo's own lake, never to your topic or CHURN_LAKE.",
    )
    # a few malformed messages by default, so the demo shows the quarantine at work
    add_size_arguments(parser, customers=DEMO_CUSTOMERS, days=DEMO_DAYS, bad_fraction=0.002)
    parser.add_argument("--partitions", type=int, default=6, help="topic partitions (default 6)")
    add_max_rejected_rate_argument(
        parser, "; --bad-fraction above it stops the demo after the extract, saying so"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from churn_platform.demo import DEMO_DIR, format_summary, run_demo
    from churn_platform.events.contract import EVENTS_TOPIC
    from churn_platform.runner import PathOptions, StepFailed

    config = config_from_args(args)
    rejected_rate = max_rejected_rate(args)
    log = progress_printer(args.json)
    settings, topic, lake_root = None, EVENTS_TOPIC, None
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        # your cluster: simulated events go only to a new topic of the demo's own, and
        # the lake is the demo's (never CHURN_LAKE), so nothing of yours sees them
        settings = KafkaSettings.from_env()
        topic = f"{DEMO_TOPIC_PREFIX}{datetime.now(UTC):%Y%m%d%H%M%S}"
        shutil.rmtree(DEMO_DIR, ignore_errors=True)
        lake_root = str(DEMO_DIR / "lake")
        log(
            f"KAFKA_BOOTSTRAP_SERVERS is set: the demo writes simulated events only to a new "
            f"topic of its own, {topic!r} on {settings.bootstrap_servers}, and its own lake "
            f"{lake_root}; delete the topic when done"
        )
    try:
        summary = run_demo(
            config,
            settings=settings,
            topic=topic,
            lake_root=lake_root,
            partitions=args.partitions,
            progress=not args.json,
            log=log,
            options=PathOptions(max_rejected_rate=rejected_rate),
        )
    except (StepFailed, ValueError) as exc:
        raise UserError(str(exc)) from exc
    if args.json:
        print(json.dumps(summary))
    else:
        print(format_summary(summary))
    return 0

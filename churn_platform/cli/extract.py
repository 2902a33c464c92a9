"""`churn-platform extract`: run the exactly-once extract once, without Dagster."""

from __future__ import annotations

import argparse
import json
import sys

from confluent_kafka import KafkaException

from churn_platform.cli import UserError
from churn_platform.cli.common import (
    add_kafka_arguments,
    add_lake_argument,
    kafka_client_failure,
    kafka_settings,
    lake_root,
)
from churn_platform.events.contract import EVENTS_TOPIC
from churn_platform.ingestion.extract import (
    ExtractConfig,
    ExtractError,
    extract_topic,
    format_lag,
)
from churn_platform.kafka.admin import BrokerUnavailable
from churn_platform.lake.raw import forget_topic
from churn_platform.lake.store import Lake, LakeError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="extract new events from Kafka into the lake (exactly once)",
        description="Read every partition from where the lake's raw table is to EOF, write the "
        "raw and quarantine tables' data files, then commit them with the new offsets (Delta "
        "application transactions). The Dagster asset raw_customer_events runs the same code.",
    )
    add_kafka_arguments(parser)
    parser.add_argument("--topic", default=EVENTS_TOPIC, help="topic (default %(default)s)")
    add_lake_argument(parser)
    parser.add_argument("--max-messages-per-partition", type=int, default=None, help="cap per run")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: auto)")
    parser.add_argument(
        "--flush-rows",
        type=int,
        default=None,
        help=f"rows a worker buffers before it writes files (default {ExtractConfig.flush_rows:,}; "
        "fewer: less memory, more and smaller files)",
    )
    parser.add_argument(
        "--flush-bytes",
        type=int,
        default=None,
        help="the same bound in the rows' Arrow bytes, whichever comes first "
        f"(default {ExtractConfig.flush_bytes:,})",
    )
    parser.add_argument("--dead-letter-topic", default=None, help="also produce rejects here")
    parser.add_argument(
        "--reset-offsets",
        "--reset-ledger",
        dest="reset_offsets",
        action="store_true",
        help="forget what was extracted from this topic: remove its rows and quarantine from "
        "the lake's tables (one commit each) and extract from the earliest offset",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    settings = kafka_settings(args)
    lake = Lake(args.lake or lake_root())
    try:
        config = ExtractConfig.with_overrides(
            topic=args.topic,
            max_messages_per_partition=args.max_messages_per_partition,
            workers=args.workers,
            flush_rows=args.flush_rows,
            flush_bytes=args.flush_bytes,
            dead_letter_topic=args.dead_letter_topic,
        )
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.reset_offsets:
        try:
            removed = forget_topic(lake, args.topic)
        except LakeError as exc:
            raise UserError(str(exc)) from exc
        print(f"reset: removed {removed} rows of {args.topic!r} from {lake.uri}")

    def progress(update) -> None:  # on stderr: stdout stays one JSON object with --json
        print(update.describe(), file=sys.stderr, flush=True)

    try:
        result = extract_topic(settings, lake, config, progress=progress)
    except (ExtractError, BrokerUnavailable, LakeError) as exc:
        raise UserError(str(exc)) from exc
    except KafkaException as exc:  # e.g. a security setting librdkafka refuses
        raise kafka_client_failure(exc, settings) from None
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(
            f"extracted {result.messages} messages from {args.topic!r} in {result.seconds:.2f} s "
            f"({result.messages_per_second:,.0f}/s, {result.workers} worker(s)): {result.rows} rows, "
            f"{result.rejected} quarantined {result.rejected_by_reason or ''}, "
            f"{len(result.files)} files in {lake.uri}; lag after the run "
            f"{format_lag(result.lag)}"
        )
    return 0

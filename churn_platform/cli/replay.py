"""`churn-platform replay PATH`: load a user's events (CSV, JSON Lines, Parquet) into the topic."""

from __future__ import annotations

import argparse
import json

from churn_platform.cli import UserError
from churn_platform.cli.common import add_kafka_arguments, kafka_settings
from churn_platform.events.contract import EVENTS_TOPIC
from churn_platform.events.replay import (
    FORMATS,
    TS_UNITS,
    ReplayError,
    ReplayMapping,
    ReplaySummary,
    SubscriptionMapping,
    replay_file,
)
from churn_platform.kafka.admin import DEFAULT_PARTITIONS, BrokerUnavailable
from churn_platform.kafka.config import KafkaConfigError
from churn_platform.kafka.producer import ProduceError

# Options of each mode: (argparse dest, mapping field). Only the ones given are
# passed on, so the mapping's own defaults apply to the rest.
_EVENT_OPTIONS = (
    ("event_type_column", "event_type_column"),
    ("event_type", "event_type"),
    ("ts_column", "ts_column"),
    ("event_id_column", "event_id_column"),
    ("value_column", "value_column"),
    ("attribute_columns", "attribute_columns"),
)
_SUBSCRIPTION_OPTIONS = (
    ("start_column", "start_column"),
    ("end_column", "end_column"),
    ("plan_column", "plan_column"),
    ("mrr_column", "mrr_column"),
    ("channel_column", "channel_column"),
    ("country_column", "country_column"),
)
_SHARED_OPTIONS = (
    ("customer_id_column", "customer_id_column"),
    ("ts_unit", "ts_unit"),
    ("ts_timezone", "ts_timezone"),
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="load events from a CSV, JSON Lines or Parquet file into the topic",
        description=(
            "Produce the rows of PATH (a file, a directory or a quoted glob) as events, keyed by "
            "customer id, in file order. Name your columns with the options below; rows that "
            "break the event contract are counted (and produced, for the extract to quarantine, "
            "unless --skip-invalid)."
        ),
    )
    parser.add_argument(
        "path", metavar="PATH", help="file, directory or glob (e.g. 'data/*.parquet')"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default=None, help="file format (default: from the extension)"
    )

    events = parser.add_argument_group("event columns")
    events.add_argument(
        "--customer-id-column", metavar="COLUMN", help="customer id column (default customer_id)"
    )
    events.add_argument(
        "--event-type-column", metavar="COLUMN", help="event type column (default event_type)"
    )
    events.add_argument(
        "--event-type",
        metavar="TYPE",
        help="one event type for every row (instead of --event-type-column)",
    )
    events.add_argument("--ts-column", metavar="COLUMN", help="event time column (default ts)")
    events.add_argument(
        "--event-id-column",
        metavar="COLUMN",
        help="event id column (default event_id; derived from file name and row when absent)",
    )
    events.add_argument(
        "--value-column", metavar="COLUMN", help="numeric value column (default: none)"
    )
    events.add_argument(
        "--attribute-columns",
        type=_column_list,
        metavar="A,B,C",
        help="columns to send as attributes (default: none)",
    )
    events.add_argument(
        "--all-attributes",
        action="store_true",
        help="send every column not mapped above as an attribute",
    )
    events.add_argument(
        "--ts-unit",
        choices=TS_UNITS,
        help="unit of numeric timestamps (default auto: by magnitude)",
    )
    events.add_argument(
        "--ts-timezone",
        metavar="TZ",
        help="time zone of timestamps without an offset (default UTC)",
    )

    subscriptions = parser.add_argument_group(
        "subscriptions (PATH is a table of subscriptions, one per row)"
    )
    subscriptions.add_argument(
        "--subscriptions",
        action="store_true",
        help="emit subscription_started at start and subscription_cancelled at end",
    )
    subscriptions.add_argument(
        "--start-column", metavar="COLUMN", help="start time column (default started_at)"
    )
    subscriptions.add_argument(
        "--end-column",
        metavar="COLUMN",
        help="end time column, empty while active (default ended_at)",
    )
    subscriptions.add_argument(
        "--plan-column", metavar="COLUMN", help="plan column (default plan, if present)"
    )
    subscriptions.add_argument(
        "--mrr-column", metavar="COLUMN", help="monthly revenue column (default mrr, if present)"
    )
    subscriptions.add_argument(
        "--channel-column",
        metavar="COLUMN",
        help="acquisition channel column (default channel, if present)",
    )
    subscriptions.add_argument(
        "--country-column", metavar="COLUMN", help="country column (default country, if present)"
    )

    output = parser.add_argument_group("output")
    output.add_argument("--topic", default=EVENTS_TOPIC, help="topic (default %(default)s)")
    output.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help="partitions if the topic is created (default %(default)s)",
    )
    output.add_argument(
        "--skip-invalid",
        action="store_true",
        help="do not produce rows that break the contract; write them to a rejects file",
    )
    output.add_argument(
        "--rejects-path",
        help="rejects file for --skip-invalid (default var/replay/<name>.rejects.jsonl)",
    )
    output.add_argument("--limit", type=int, help="replay at most this many rows")
    output.add_argument("--no-progress", action="store_true", help="no progress bar")
    output.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_kafka_arguments(parser)
    parser.set_defaults(handler=run)


def _column_list(text: str) -> list[str]:
    columns = [c.strip() for c in text.split(",") if c.strip()]
    if not columns:
        raise argparse.ArgumentTypeError("give column names separated by commas, e.g. plan,country")
    return columns


def _given(args: argparse.Namespace, options: tuple[tuple[str, str], ...]) -> dict:
    return {
        field: getattr(args, dest) for dest, field in options if getattr(args, dest) is not None
    }


def mapping_from_args(args: argparse.Namespace) -> ReplayMapping | SubscriptionMapping:
    """The mapping the options describe; `UserError` for options that do not go together."""
    shared = _given(args, _SHARED_OPTIONS)
    events = _given(args, _EVENT_OPTIONS)
    subscriptions = _given(args, _SUBSCRIPTION_OPTIONS)
    try:
        if args.subscriptions:
            if events or args.all_attributes:
                wrong = [f"--{f.replace('_', '-')}" for f in events] + (
                    ["--all-attributes"] if args.all_attributes else []
                )
                raise UserError(
                    f"{', '.join(wrong)} do not apply with --subscriptions: use --start-column, "
                    "--end-column, --plan-column, --mrr-column, --channel-column, --country-column"
                )
            return SubscriptionMapping(**shared, **subscriptions)
        if subscriptions:
            wrong = ", ".join(f"--{f.replace('_', '-')}" for f in subscriptions)
            raise UserError(f"{wrong} need --subscriptions (PATH is then a subscriptions table)")
        if "event_type" in events and "event_type_column" in events:
            raise UserError("give either --event-type or --event-type-column, not both")
        return ReplayMapping(**shared, **events, all_attributes=args.all_attributes)
    except ReplayError as exc:
        raise UserError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    if args.partitions < 1:
        raise UserError(f"--partitions must be at least 1 (got {args.partitions})")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1 (got {args.limit})")
    mapping = mapping_from_args(args)
    try:
        settings = kafka_settings(args)
    except KafkaConfigError as exc:
        raise UserError(str(exc)) from exc
    try:
        summary = replay_file(
            settings,
            args.topic,
            args.path,
            mapping,
            fmt=args.format,
            partitions=args.partitions,
            skip_invalid=args.skip_invalid,
            rejects_path=args.rejects_path,
            limit=args.limit,
            progress=not args.no_progress,
        )
    except ReplayError as exc:
        raise UserError(str(exc)) from exc
    except BrokerUnavailable as exc:
        raise UserError(
            f"{exc}; start a broker with `churn-platform broker` or pass --bootstrap-servers"
        ) from exc
    except ProduceError as exc:
        raise UserError(f"{exc}; rerunning the replay is safe (event ids repeat)") from exc
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(_describe(summary))
    return 0


def _describe(summary: ReplaySummary) -> str:
    rate = summary.as_dict()["rows_per_second"]
    lines = [
        f"replayed {summary.rows_read:,} rows from {summary.source} ({summary.files} file(s)) "
        f"→ {summary.events_produced:,} events on {summary.topic!r} "
        f"in {summary.seconds:.1f} s" + (f" ({rate:,} rows/s)" if rate else ""),
    ]
    if summary.event_types:
        top = ", ".join(f"{t} {n:,}" for t, n in list(summary.event_types.items())[:10])
        more = len(summary.event_types) - 10
        lines.append(f"event types: {top}" + (f" and {more} more" if more > 0 else ""))
    if summary.renamed_event_types:
        shown = ", ".join(f"{a!r} → {b}" for a, b in list(summary.renamed_event_types.items())[:10])
        lines.append(
            f"renamed {len(summary.renamed_event_types)} event type(s) to the contract grammar: {shown}"
        )
    if summary.invalid:
        reasons = ", ".join(f"{r} {n:,}" for r, n in summary.invalid_by_reason.items())
        if summary.rejects_path:
            lines.append(
                f"skipped {summary.skipped_invalid:,} invalid rows ({reasons}); see {summary.rejects_path}"
            )
        else:
            lines.append(
                f"{summary.invalid:,} rows break the event contract ({reasons}); they were produced "
                "and the extract will quarantine them (use --skip-invalid to keep them out)"
            )
    return "\n".join(lines)

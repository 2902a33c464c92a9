"""`churn-platform replay PATH`: load a user's events (CSV, JSON Lines, Parquet) into the topic."""

from __future__ import annotations

import argparse
import json

from confluent_kafka import KafkaException

from churn_platform.cli import UserError
from churn_platform.cli.common import add_kafka_arguments, kafka_client_failure, kafka_settings
from churn_platform.events.contract import EVENTS_TOPIC
from churn_platform.events.replay import (
    FORMATS,
    TS_UNITS,
    UNMATCHED_CUSTOMERS,
    ReplayError,
    ReplayInput,
    ReplayMapping,
    ReplayProduceError,
    ReplaySummary,
    SubscriptionMapping,
    parse_separator,
    replay_file,
)
from churn_platform.kafka.admin import DEFAULT_PARTITIONS, BrokerUnavailable
from churn_platform.kafka.config import KafkaConfigError
from churn_platform.kafka.producer import ProduceError

# Options of each mapping: (argparse dest, mapping field). Only the ones given
# are passed on, so the mapping's own defaults apply to the rest.
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
_TIME_OPTIONS = (
    ("ts_unit", "ts_unit"),
    ("ts_timezone", "ts_timezone"),
    ("ts_format", "ts_format"),
)
_SUBSCRIPTIONS_FILE_ONLY = (
    "subscriptions_customer_id_column",
    "subscriptions_format",
    "subscriptions_separator",
    "subscriptions_ts_format",
    "unmatched_customers",
)


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="load events (and a subscriptions table) from CSV, JSON Lines or Parquet files",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Produce the rows of PATH (a file, a directory or a quoted glob) as events, keyed\n"
            "by customer id, in file order. Name your columns with the options below; rows\n"
            "that break the event contract are counted (and produced, for the extract to\n"
            "quarantine, unless --skip-invalid).\n\n"
            "With --subscriptions-file, a table of subscriptions (one row per subscription,\n"
            "with start and end) is replayed with the events in one go; both files are\n"
            "checked against each other before anything is produced. Errors name rows\n"
            "from 1, not counting the header."
        ),
        epilog=(
            "examples:\n"
            "  churn-platform replay events.parquet --customer-id-column account_id \\\n"
            "      --ts-column event_time --event-type-column action --value-column amount \\\n"
            "      --subscriptions-file subscriptions.csv --start-column started_at \\\n"
            "      --end-column ended_at --plan-column plan\n"
            "  churn-platform replay CDNOW_master.txt --format csv --separator whitespace \\\n"
            "      --customer-id-column customer_id --ts-column date --ts-format %%Y%%m%%d \\\n"
            "      --event-type purchase --value-column dollar_value "
            "--attribute-columns number_of_cds"
        ),
    )
    parser.add_argument(
        "path", metavar="PATH", help="file, directory or glob (e.g. 'data/*.parquet')"
    )
    parser.add_argument(
        "--format", choices=FORMATS, default=None, help="file format (default: from the extension)"
    )
    parser.add_argument(
        "--separator",
        metavar="SEP",
        help="CSV column separator: one character (';', '|'), tab, or whitespace for columns "
        "separated by runs of blanks (default ',', tab for .tsv)",
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

    times = parser.add_argument_group("times (the event time, and a subscription's start and end)")
    times.add_argument(
        "--ts-format",
        metavar="FORMAT",
        help="strftime-style format of times written as text or numbers, e.g. %%Y%%m%%d for "
        "19970101 or '%%d/%%m/%%Y %%H:%%M' (default: RFC 3339 / ISO 8601 text, epoch numbers)",
    )
    times.add_argument(
        "--ts-unit",
        choices=TS_UNITS,
        help="unit of epoch numbers without --ts-format (default auto: by magnitude)",
    )
    times.add_argument(
        "--ts-timezone",
        metavar="TZ",
        help="time zone of times without an offset, e.g. Europe/Berlin (default UTC)",
    )

    subscriptions = parser.add_argument_group(
        "subscriptions (one row per subscription: customer, start, end while it ran)"
    )
    subscriptions.add_argument(
        "--subscriptions-file",
        metavar="FILE",
        help="also replay this subscriptions table with the events of PATH, checked together",
    )
    subscriptions.add_argument(
        "--subscriptions",
        action="store_true",
        help="PATH itself is a subscriptions table (no events file)",
    )
    subscriptions.add_argument(
        "--subscriptions-customer-id-column",
        metavar="COLUMN",
        help="customer id column of --subscriptions-file (default: as --customer-id-column)",
    )
    subscriptions.add_argument(
        "--subscriptions-format",
        choices=FORMATS,
        help="format of --subscriptions-file (default: --format, else from the extension)",
    )
    subscriptions.add_argument(
        "--subscriptions-separator",
        metavar="SEP",
        help="CSV separator of --subscriptions-file (default: --separator)",
    )
    subscriptions.add_argument(
        "--subscriptions-ts-format",
        metavar="FORMAT",
        help="--ts-format of --subscriptions-file's start and end (default: --ts-format)",
    )
    subscriptions.add_argument(
        "--start-column", metavar="COLUMN", help="start time column (default started_at)"
    )
    subscriptions.add_argument(
        "--end-column",
        metavar="COLUMN",
        help="end time column, empty while active (default ended_at, if present)",
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
    subscriptions.add_argument(
        "--unmatched-customers",
        choices=UNMATCHED_CUSTOMERS,
        help="customers in only one of the two files: error (default) stops before producing, "
        "keep replays them, drop leaves their rows out",
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
    output.add_argument("--limit", type=int, help="replay at most this many rows of each file")
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


def _flags(fields) -> str:
    return ", ".join(f"--{f.replace('_', '-')}" for f in fields)


def mapping_from_args(args: argparse.Namespace) -> ReplayMapping | SubscriptionMapping:
    """The mapping of PATH the options describe; `UserError` for options that do not go together."""
    times = _given(args, _TIME_OPTIONS)
    events = _given(args, _EVENT_OPTIONS)
    subscriptions = _given(args, _SUBSCRIPTION_OPTIONS)
    customer = _given(args, (("customer_id_column", "customer_id_column"),))
    both_files = args.subscriptions_file is not None
    alone = [d for d in _SUBSCRIPTIONS_FILE_ONLY if getattr(args, d) is not None]
    try:
        if alone and not both_files:
            raise UserError(f"{_flags(alone)} need --subscriptions-file FILE")
        if args.subscriptions:
            if both_files:
                raise UserError(
                    "--subscriptions reads PATH as a subscriptions table; with "
                    "--subscriptions-file, PATH is the events file: drop --subscriptions"
                )
            if events or args.all_attributes:
                wrong = list(events) + (["all_attributes"] if args.all_attributes else [])
                raise UserError(
                    f"{_flags(wrong)} do not apply with --subscriptions: use --start-column, "
                    "--end-column, --plan-column, --mrr-column, --channel-column, --country-column"
                )
            return SubscriptionMapping(**customer, **times, **subscriptions)
        if subscriptions and not both_files:
            raise UserError(
                f"{_flags(subscriptions)} need a subscriptions table: --subscriptions-file FILE "
                "beside the events, or --subscriptions when PATH is one"
            )
        if "event_type" in events and "event_type_column" in events:
            raise UserError("give either --event-type or --event-type-column, not both")
        return ReplayMapping(**customer, **times, **events, all_attributes=args.all_attributes)
    except ReplayError as exc:
        raise UserError(str(exc)) from exc


def subscriptions_from_args(args: argparse.Namespace) -> ReplayInput | None:
    """The --subscriptions-file input, its customer column defaulting to PATH's."""
    if args.subscriptions_file is None:
        return None
    customer = args.subscriptions_customer_id_column or args.customer_id_column
    times = _given(args, _TIME_OPTIONS)
    if args.subscriptions_ts_format is not None:
        times["ts_format"] = args.subscriptions_ts_format
    try:
        mapping = SubscriptionMapping(
            **({"customer_id_column": customer} if customer else {}),
            **times,
            **_given(args, _SUBSCRIPTION_OPTIONS),
        )
        separator = args.subscriptions_separator or args.separator
        return ReplayInput(
            args.subscriptions_file,
            mapping,
            fmt=args.subscriptions_format or args.format,
            separator=None if separator is None else parse_separator(separator),
            options=(
                ("customer_id_column", "--subscriptions-customer-id-column"),
                *(
                    (("ts_format", "--subscriptions-ts-format"),)
                    if args.subscriptions_ts_format
                    else ()
                ),
            ),
        )
    except ReplayError as exc:
        raise UserError(str(exc)) from exc


def run(args: argparse.Namespace) -> int:
    if args.partitions < 1:
        raise UserError(f"--partitions must be at least 1 (got {args.partitions})")
    if args.limit is not None and args.limit < 1:
        raise UserError(f"--limit must be at least 1 (got {args.limit})")
    mapping = mapping_from_args(args)
    subscriptions = subscriptions_from_args(args)
    try:
        separator = None if args.separator is None else parse_separator(args.separator)
        settings = kafka_settings(args)
    except (ReplayError, KafkaConfigError) as exc:
        raise UserError(str(exc)) from exc
    try:
        summary = replay_file(
            settings,
            args.topic,
            args.path,
            mapping,
            fmt=args.format,
            separator=separator,
            subscriptions=subscriptions,
            unmatched_customers=args.unmatched_customers or "error",
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
    except ReplayProduceError as exc:
        raise UserError(str(exc)) from exc
    except ProduceError as exc:
        raise UserError(f"{exc}; rerunning the replay is safe (event ids repeat)") from exc
    except KafkaException as exc:
        raise kafka_client_failure(exc, settings) from None
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        print(_describe(summary))
    return 0


def _describe(summary: ReplaySummary) -> str:
    rate = summary.as_dict()["rows_per_second"]
    source = summary.source
    if summary.subscriptions_source:
        source = f"{summary.source} and {summary.subscriptions_source}"
    lines = [
        f"replayed {summary.rows_read:,} rows from {source} ({summary.files} file(s)) "
        f"→ {summary.events_produced:,} events on {summary.topic!r} "
        f"in {summary.seconds:.1f} s" + (f" ({rate:,} rows/s)" if rate else ""),
    ]
    if summary.customers:
        span = f", times {summary.first_ts} to {summary.last_ts}" if summary.first_ts else ""
        lines.append(f"{summary.customers:,} customers{span}")
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
    lines.extend(f"note: {note}" for note in summary.notes)
    return "\n".join(lines)

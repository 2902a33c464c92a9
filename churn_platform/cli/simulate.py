"""`churn-platform simulate`: produce a simulated subscription business to Kafka.

The model and its ground truth live in `churn_platform.events.simulator`; this
module only turns arguments into a `SimulatorConfig` and prints the summary.
`add_size_arguments` and `config_from_args` are shared with `demo`.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta

from churn_platform.cli import UserError
from churn_platform.cli.common import add_kafka_arguments, kafka_settings
from churn_platform.events.contract import EVENTS_TOPIC, TS_MAX_FUTURE_MS
from churn_platform.events.simulator import (
    SimulationSummary,
    SimulatorConfig,
    SimulatorConfigError,
    produce_simulation,
    run_live,
)
from churn_platform.kafka.admin import DEFAULT_PARTITIONS, BrokerUnavailable
from churn_platform.kafka.config import KafkaConfigError
from churn_platform.kafka.producer import ProduceError

_DEFAULTS = SimulatorConfig()


def add_size_arguments(
    parser: argparse.ArgumentParser,
    *,
    customers: int = _DEFAULTS.customers,
    days: int = _DEFAULTS.days,
    bad_fraction: float = _DEFAULTS.bad_fraction,
) -> None:
    """--customers, --days, --seed, --end, --bad-fraction (defaults can be overridden)."""
    group = parser.add_argument_group("simulation")
    group.add_argument(
        "--customers", type=int, default=customers, help=f"customers (default {customers})"
    )
    group.add_argument(
        "--days",
        type=int,
        default=days,
        help=f"days of history, ending at --end (default {days})",
    )
    group.add_argument(
        "--seed",
        type=int,
        default=_DEFAULTS.seed,
        help=f"random seed: the same seed gives the same events (default {_DEFAULTS.seed})",
    )
    group.add_argument(
        "--end",
        default=None,
        metavar="ISO",
        help="end of the simulated window, e.g. 2026-10-01 or 2026-10-01T12:00:00Z "
        "(default: now; a time without offset is UTC)",
    )
    group.add_argument(
        "--bad-fraction",
        type=float,
        default=bad_fraction,
        metavar="F",
        help="share of malformed messages, cycling through every rejection reason "
        f"(default {bad_fraction:g})",
    )


def parse_end(text: str | None) -> datetime | None:
    """--end as an aware UTC datetime; a date means its midnight UTC."""
    if text is None:
        return None
    try:
        end = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UserError(
            f"--end {text!r} is not an ISO date or date-time "
            "(examples: 2026-10-01, 2026-10-01T12:00:00Z)"
        ) from None
    if end.tzinfo is None:
        end = end.replace(tzinfo=UTC)
    end = end.astimezone(UTC)
    latest = datetime.now(UTC) + timedelta(milliseconds=TS_MAX_FUTURE_MS)
    if end > latest:
        raise UserError(
            f"--end {text} is more than 1 day in the future: consumers would reject the "
            "latest events as ts_out_of_range; use a time up to now (or leave --end out)"
        )
    return end


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    """The `SimulatorConfig` of parsed `add_size_arguments` options."""
    option = {
        "customers": "--customers",
        "days": "--days",
        "seed": "--seed",
        "end": "--end",
        "bad_fraction": "--bad-fraction",
    }
    try:
        return SimulatorConfig(
            customers=args.customers,
            days=args.days,
            seed=args.seed,
            end=parse_end(getattr(args, "end", None)),
            bad_fraction=getattr(args, "bad_fraction", 0.0),
        )
    except SimulatorConfigError as exc:
        message = str(exc)
        name = message.split(" ", 1)[0]
        if name in option:
            message = option[name] + message[len(name) :]
        raise UserError(message) from None


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="produce a simulated subscription business to Kafka",
        description="Simulates customers signing up, using the product and churning, and "
        "produces their events to Kafka: a window of history ending now (or --end), or with "
        "--live a real-time stream that continues that history.",
    )
    add_size_arguments(parser)
    parser.add_argument(
        "--topic", default=EVENTS_TOPIC, help=f"topic to produce to (default {EVENTS_TOPIC})"
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=DEFAULT_PARTITIONS,
        help=f"partitions if the topic is created (default {DEFAULT_PARTITIONS})",
    )
    live = parser.add_argument_group("live mode")
    live.add_argument(
        "--live",
        action="store_true",
        help="stream events with ts = now, continuing the history of the same "
        "--customers/--days/--seed, until Ctrl-C",
    )
    live.add_argument(
        "--rate", type=float, default=50.0, help="live messages per second (default 50)"
    )
    live.add_argument(
        "--max-events", type=int, default=None, help="stop live mode after this many messages"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--json", action="store_true", help="print the summary as one JSON object on stdout"
    )
    add_kafka_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if args.partitions < 1:
        raise UserError(f"--partitions must be >= 1 (got {args.partitions})")
    if args.live and not args.rate > 0:
        raise UserError(f"--rate must be > 0 messages per second (got {args.rate})")
    if args.max_events is not None and args.max_events < 1:
        raise UserError(f"--max-events must be >= 1 (got {args.max_events})")
    try:
        settings = kafka_settings(args)
    except KafkaConfigError as exc:
        raise UserError(str(exc)) from None
    progress = not args.no_progress
    try:
        if args.live:
            summary = run_live(
                settings,
                args.topic,
                config,
                rate=args.rate,
                max_events=args.max_events,
                progress=progress,
                partitions=args.partitions,
            )
        else:
            summary = produce_simulation(
                settings, args.topic, config, progress=progress, partitions=args.partitions
            )
    except (BrokerUnavailable, ProduceError) as exc:
        # Both messages name the bootstrap address.
        raise UserError(
            f"{exc}. Start the local broker with `churn-platform broker`, or set "
            "KAFKA_BOOTSTRAP_SERVERS (or --bootstrap-servers) to your cluster."
        ) from None
    if args.json:
        print(json.dumps(summary.as_dict()))
    else:
        print(format_summary(summary))
    return 0


def format_summary(summary: SimulationSummary) -> str:
    """A few human-readable lines about a simulation run."""
    bad = sum(summary.bad_by_reason.values())
    lines = [
        f"produced {summary.messages_produced:,} messages to {summary.topic} in "
        f"{summary.seconds:.1f} s ({summary.messages_per_second:,.0f}/s)",
        f"  valid events   {summary.events_valid_produced:,} "
        f"from {summary.customers:,} customers, {summary.churn_events:,} cancellations",
        f"  event time     {summary.first_ts} … {summary.last_ts}",
    ]
    if bad:
        reasons = ", ".join(f"{r} {n}" for r, n in summary.bad_by_reason.items())
        lines.append(f"  malformed      {bad:,} ({reasons})")
    return "\n".join(lines)

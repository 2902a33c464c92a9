"""`churn-platform broker`: run the embedded Kafka-protocol broker until Ctrl-C."""

from __future__ import annotations

import argparse
import signal
import threading

from churn_platform.cli import UserError
from churn_platform.events.contract import EVENTS_TOPIC
from churn_platform.kafka.admin import BrokerUnavailable, ensure_topic
from churn_platform.kafka.broker import DEFAULT_HOST, DEFAULT_PORT, EmbeddedBroker


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "broker",
        help="run the embedded Kafka-protocol broker (Tansu) on 127.0.0.1",
        description="Run the embedded Tansu broker (memory storage: topics are lost when it stops).",
    )
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--topic", default=EVENTS_TOPIC, help="topic to create at start (default %(default)s)"
    )
    parser.add_argument(
        "--partitions", type=int, default=6, help="partitions of that topic (default 6)"
    )
    parser.add_argument(
        "--log", default="var/broker.log", help="broker log file (default %(default)s)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.partitions < 1:
        raise UserError("--partitions must be at least 1")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        broker = EmbeddedBroker(port=args.port, host=args.host, log_path=args.log).start()
    except BrokerUnavailable as exc:
        raise UserError(str(exc)) from exc
    try:
        ensure_topic(broker.settings, args.topic, partitions=args.partitions)
        print(
            f"broker listening on {broker.bootstrap_servers} (pid {broker.pid}); topic "
            f"{args.topic!r} with {args.partitions} partitions; log {args.log}\n"
            f"use it with: export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap_servers}\n"
            "Ctrl-C stops it (its data is in memory and goes with it).",
            flush=True,
        )
        while not stop.wait(0.5):
            if broker._process is None or broker._process.poll() is not None:
                raise UserError(f"the broker exited unexpectedly; see {args.log}")
    finally:
        broker.stop()
    print("broker stopped", flush=True)
    return 0

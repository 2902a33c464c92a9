"""`churn-platform serve`: the streaming scorer (one consumer-group member per process)."""

from __future__ import annotations

import argparse
import logging
import signal

from churn_platform.cli import UserError
from churn_platform.cli.common import (
    add_kafka_arguments,
    add_lake_argument,
    kafka_client_failure,
    kafka_settings,
    lake_root,
)
from churn_platform.events.contract import EVENTS_TOPIC, SCORES_TOPIC


def add_parser(subparsers) -> None:
    from churn_platform.serving.metrics import DEFAULT_METRICS_HOST, DEFAULT_METRICS_PORT
    from churn_platform.serving.scorer import DEFAULT_GROUP, ServeConfig

    defaults = ServeConfig()
    parser = subparsers.add_parser(
        "serve",
        help="score customers in real time: customer-events → churn-scores",
        description="Joins the consumer group, bootstraps per-customer state from the lake, "
        "scores every new event's customer with the champion model and produces to the scores "
        "topic; offsets are committed after the scores are delivered (at-least-once). Run more "
        "processes with the same --group to share the partitions. SIGTERM/SIGINT stop it cleanly.",
    )
    add_kafka_arguments(parser)
    parser.add_argument("--topic", default=EVENTS_TOPIC, help="events topic (default %(default)s)")
    parser.add_argument(
        "--scores-topic", default=SCORES_TOPIC, help="scores topic (default %(default)s)"
    )
    parser.add_argument(
        "--group", default=DEFAULT_GROUP, help="consumer group (default %(default)s)"
    )
    add_lake_argument(parser)
    parser.add_argument(
        "--max-batch", type=int, default=defaults.max_batch, help="messages per micro-batch"
    )
    parser.add_argument(
        "--max-wait-ms",
        type=int,
        default=defaults.max_wait_ms,
        help="micro-batch window in ms (default %(default)s)",
    )
    parser.add_argument(
        "--risk-band-cutoffs",
        default="0.1,0.3",
        help="ascending probabilities between low/medium/high (default %(default)s)",
    )
    parser.add_argument(
        "--no-bootstrap", action="store_true", help="start with empty state instead of the lake's"
    )
    parser.add_argument(
        "--log-interval", type=float, default=defaults.log_interval_s, help="seconds between stats"
    )
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    # off by default: several scorers of one group may run on one machine
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        metavar="PORT",
        help="serve Prometheus metrics on http://METRICS_HOST:PORT/metrics (events consumed, "
        "scored and rejected, latency, lag per partition, champion); off unless given, e.g. "
        f"{DEFAULT_METRICS_PORT}; 0 picks a free port",
    )
    parser.add_argument(
        "--metrics-host",
        default=DEFAULT_METRICS_HOST,
        help="address the metrics endpoint binds (default %(default)s: this machine only; "
        "0.0.0.0 exposes it)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from churn_platform.lake.store import Lake
    from churn_platform.ml.score import bands_from_setting
    from churn_platform.serving.scorer import ServeConfig, StreamingScorer

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        bands = bands_from_setting(args.risk_band_cutoffs)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if args.max_batch < 1 or args.max_wait_ms < 0:
        raise UserError("--max-batch must be ≥ 1 and --max-wait-ms ≥ 0")
    config = ServeConfig(
        topic=args.topic,
        scores_topic=args.scores_topic,
        group_id=args.group,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        bands=bands,
        bootstrap=not args.no_bootstrap,
        log_interval_s=args.log_interval,
    )
    scorer = StreamingScorer(kafka_settings(args), Lake(args.lake or lake_root()), config)
    metrics = None
    if args.metrics_port is not None:
        from churn_platform.serving.metrics import serve_metrics

        try:
            metrics = serve_metrics(scorer, args.metrics_port, args.metrics_host)
        except OSError as exc:
            raise UserError(
                f"cannot serve metrics on {args.metrics_host}:{args.metrics_port} ({exc.strerror}): "
                "another scorer may use that port; choose another --metrics-port (0: any free one)"
            ) from None
        logging.getLogger("churn_platform.serve").info("metrics on %s", metrics.url)

    def stop(signum, _frame) -> None:
        logging.getLogger("churn_platform.serve").info("signal %d: stopping", signum)
        scorer.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    from confluent_kafka import KafkaException

    from churn_platform.kafka.admin import BrokerUnavailable

    try:
        scorer.run(max_seconds=args.seconds)
    except BrokerUnavailable as exc:
        raise UserError(str(exc)) from None
    except KafkaException as exc:  # a setting librdkafka refuses, or undeliverable scores
        raise kafka_client_failure(exc, scorer.settings) from None
    finally:
        if metrics is not None:
            metrics.close()
    return 0

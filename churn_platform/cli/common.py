"""Helpers shared by the subcommands: Kafka settings from the environment."""

from __future__ import annotations

import argparse

from churn_platform.kafka.broker import DEFAULT_HOST, DEFAULT_PORT
from churn_platform.kafka.config import KafkaSettings

DEFAULT_BOOTSTRAP = f"{DEFAULT_HOST}:{DEFAULT_PORT}"


def add_kafka_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help="Kafka host:port list (default: $KAFKA_BOOTSTRAP_SERVERS, else "
        f"{DEFAULT_BOOTSTRAP}, where `churn-platform broker` listens)",
    )


def kafka_settings(args: argparse.Namespace) -> KafkaSettings:
    """Settings from --bootstrap-servers or the KAFKA_* environment variables."""
    settings = KafkaSettings.from_env(default_bootstrap=DEFAULT_BOOTSTRAP)
    if getattr(args, "bootstrap_servers", None):
        settings = KafkaSettings(args.bootstrap_servers, settings.security)
    return settings


def lake_root() -> str:
    """The lake root: $CHURN_LAKE, else var/lake."""
    import os

    from churn_platform.lake.store import DEFAULT_LAKE_ROOT

    return os.environ.get("CHURN_LAKE") or DEFAULT_LAKE_ROOT

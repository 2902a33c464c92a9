"""Helpers shared by the subcommands: Kafka settings, the lake root, shared options."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable

from churn_platform.cli import UserError
from churn_platform.kafka.broker import DEFAULT_HOST, DEFAULT_PORT
from churn_platform.kafka.config import KafkaSettings, mask

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
        settings = dataclasses.replace(settings, bootstrap_servers=args.bootstrap_servers)
    return settings


def add_lake_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lake", default=None, help="lake root (default: $CHURN_LAKE, else var/lake)"
    )


def add_max_rejected_rate_argument(parser: argparse.ArgumentParser, more: str = "") -> None:
    """--max-rejected-rate: the extract's limit on quarantined messages (`more` adds to the help)."""
    parser.add_argument(
        "--max-rejected-rate",
        type=float,
        default=None,
        help=f"the extract's limit on quarantined messages (default 0.01{more})",
    )


def max_rejected_rate(args: argparse.Namespace) -> float | None:
    """--max-rejected-rate, refused outside [0, 1]; None: the extract's default."""
    rate = args.max_rejected_rate
    if rate is not None and not 0 <= rate <= 1:
        raise UserError(f"--max-rejected-rate must be in [0, 1] (got {rate})")
    return rate


def progress_printer(json_output: bool) -> Callable[[str], None]:
    """Prints progress lines: to stderr when stdout is one JSON object (--json), else stdout."""
    return lambda message: print(
        message, file=sys.stderr if json_output else sys.stdout, flush=True
    )


def lake_root() -> str:
    """The lake root: $CHURN_LAKE, else var/lake."""
    import os

    from churn_platform.lake.store import DEFAULT_LAKE_ROOT

    return os.environ.get("CHURN_LAKE") or DEFAULT_LAKE_ROOT


def kafka_client_failure(exc: Exception, settings: KafkaSettings) -> UserError:
    """One line for a librdkafka failure: the address, the KAFKA_* setting it names, the fix.

    `KafkaSettings.check` turns what librdkafka refuses when a client is
    created into a `KafkaConfigError`; what fails later (a handshake, a
    certificate the broker rejects) arrives as a bare `KafkaException`, which
    this turns into the CLI's error line, secrets masked.
    """
    error = exc.args[0] if exc.args else None
    detail = mask(error.str() if hasattr(error, "str") else str(exc), settings.secrets())
    named = settings.named_in(detail)
    if not named and "SASL mechanism" in detail:
        named = ["KAFKA_SASL_MECHANISM (sasl.mechanism)"]
    if not named and ("SSL" in detail or "ssl" in detail):
        named = ["KAFKA_SECURITY_PROTOCOL and the KAFKA_SSL_* settings"]
    where = f"; check {', '.join(named)}" if named else ""
    return UserError(
        f"Kafka client for {settings.bootstrap_servers} failed: {detail}{where} "
        "(or --bootstrap-servers / KAFKA_BOOTSTRAP_SERVERS)"
    )

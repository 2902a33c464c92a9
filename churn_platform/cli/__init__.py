"""The `churn-platform` command: one subcommand per module in this package.

Each subcommand module exposes `add_parser(subparsers)`, which registers its
arguments and sets `handler` to a function `(args) -> int` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("broker", "simulate", "replay", "extract", "demo", "up", "serve")


class UserError(Exception):
    """An error caused by input or settings; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="churn-platform",
        description="Churn Platform: Kafka events → Parquet lake → features → churn scores.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"churn_platform.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    from churn_platform.kafka.config import KafkaConfigError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        return 130
    except (UserError, KafkaConfigError) as exc:
        print(f"churn-platform {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""The `churn-platform` command: one subcommand per module in this package.

Each subcommand module exposes `add_parser(subparsers)`, which registers its
arguments and sets `handler` to a function `(args) -> int` (the exit code).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

SUBCOMMANDS = (
    "broker",
    "simulate",
    "replay",
    "extract",
    "train",
    "training_set",
    "demo",
    "up",
    "serve",
    "deployment",
    "lake",
)
# The streaming scorer's features are a few small polars queries per micro-batch:
# waking a pool of threads for them cost more than it saved (benchmarks/streaming.py;
# the numbers are in docs/benchmarks.md, Streaming).
SERVE_POLARS_THREADS = 1


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

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:
        # before polars is imported (it sizes its thread pool then); see cli/serve.py
        os.environ.setdefault("POLARS_MAX_THREADS", str(SERVE_POLARS_THREADS))
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

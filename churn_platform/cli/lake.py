"""`churn-platform lake …`: operations on the lake's tables (`maintain`: compaction, vacuum;
`migrate`: a lake of the layout before Delta tables, converted in place)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from churn_platform.cli import UserError
from churn_platform.cli.common import add_lake_argument, lake_root


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "lake",
        help="maintain the lake's Delta tables",
        description="Operations on the lake's tables, each safe while extracts run.",
    )
    commands = parser.add_subparsers(dest="lake_command", required=True, metavar="LAKE_COMMAND")
    add_maintain_parser(commands)
    add_migrate_parser(commands)


def add_migrate_parser(commands) -> None:
    parser = commands.add_parser(
        "migrate",
        help="convert a lake written before Delta tables (range files + ledger), once",
        description="Convert a lake of the old layout (Parquet range files and a JSON offset "
        "ledger per topic) into Delta tables in place: the rows the ledger committed become "
        "the raw and quarantine tables' rows, once, and the ledger's offsets the tables' "
        "application transactions, so the extract goes on where it was. The old files move "
        "under _legacy/ (nothing is deleted); features, labels and scores are recomputed. "
        "Stop the platform first; an interrupted run goes on where it stopped when run again.",
    )
    add_lake_argument(parser)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(handler=run_migrate)


def run_migrate(args: argparse.Namespace) -> int:
    from churn_platform.lake.migrate import migrate
    from churn_platform.lake.store import Lake, LakeError

    try:
        lake = Lake(args.lake or lake_root())
        done = migrate(lake)
    except LakeError as exc:
        raise UserError(str(exc)) from None
    print(json.dumps(done.as_dict()) if args.json else done.describe())
    return 0


def add_maintain_parser(commands) -> None:
    parser = commands.add_parser(
        "maintain",
        help="compact small files and vacuum what no commit needs",
        description="Compact every partition holding many small files into target-size files, "
        "then delete data files and log entries no commit of the retention period needs "
        "(also files of writers killed before their commit). Safe while extracts run. The "
        "Dagster job lake_maintenance_job runs the same code (hourly; vacuum daily).",
    )
    add_lake_argument(parser)
    parser.add_argument(
        "--table",
        action="append",
        default=None,
        metavar="NAME",
        help="only this table (e.g. raw/customer_events; repeatable; default every table)",
    )
    parser.add_argument(
        "--retention-hours",
        default=None,
        metavar="H",
        help="keep files and log entries this many hours (default $CHURN_LAKE_RETENTION_HOURS "
        "or 168, a week; at least 1 and longer than the longest Dagster run)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="report what would be compacted and removed"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    parser.set_defaults(handler=run_maintain)


def retention(args: argparse.Namespace) -> int:
    """--retention-hours, else the environment's, checked against the longest Dagster run."""
    from churn_platform.lake import maintenance

    if args.retention_hours is not None:
        hours = maintenance.parse_retention(args.retention_hours, "--retention-hours")
        name = "--retention-hours"
    else:
        hours = maintenance.retention_from_env()
        name = maintenance.RETENTION_ENV
    longest, run_id = longest_dagster_run()
    where = f"{name} (longest run: {run_id})" if run_id else name
    return maintenance.check_retention(hours, longest, name=where)


def longest_dagster_run() -> tuple[float, str]:
    """The longest run of the Dagster instance at $DAGSTER_HOME, when one is set."""
    if not os.environ.get("DAGSTER_HOME"):
        return 0.0, ""
    import dagster as dg

    from churn_platform.defs.runs import longest_run

    try:
        with dg.DagsterInstance.get() as instance:
            return longest_run(instance)
    except Exception as exc:  # an unreachable instance must not stop maintenance: say so
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(
            f"churn-platform lake maintain: could not read the runs of the Dagster instance at "
            f"$DAGSTER_HOME ({first}); the retention is checked against 1 h only",
            file=sys.stderr,
        )
        return 0.0, ""


def run_maintain(args: argparse.Namespace) -> int:
    from churn_platform.lake import maintenance
    from churn_platform.lake.store import Lake, LakeError

    try:
        specs = maintenance.find_tables(args.table)
        hours = retention(args)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        lake = Lake(args.lake or lake_root())
        done = maintenance.maintain(lake, specs, retention_hours=hours, dry_run=args.dry_run)
    except LakeError as exc:
        raise UserError(str(exc)) from None
    if args.json:
        print(
            json.dumps(
                {
                    "lake": lake.uri,
                    "retention_hours": hours,
                    "dry_run": args.dry_run,
                    "tables": [m.as_dict() for m in done],
                }
            )
        )
    else:
        for line in maintenance.describe(done):
            print(line)
    return 0

"""`churn-platform deployment check`: is a team's deployment ready to start?

Reads $DAGSTER_HOME/dagster.yaml (deploy/dagster.postgres.yaml copied there)
and the workspace file (deploy/workspace.yaml), then tries PostgreSQL and the
code server they name (`churn_platform.deploy.check`). Prints one line per
check: `ok ...`, or on stderr what is wrong, the setting that holds it and the
fix; never a password. Exit 0 when every check passed, 1 otherwise.
docs/deployment.md has the commands that start the deployment.
"""

from __future__ import annotations

import os
import sys

from churn_platform.deploy import GRPC_WORKSPACE_YAML

FAILED = 1


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "deployment",
        help="check a deployment (PostgreSQL, code server) before starting it",
        description="Commands for a deployment of Dagster on PostgreSQL with the webserver, "
        "the daemon and the code location as separate processes (docs/deployment.md).",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check",
        help="try DAGSTER_HOME's dagster.yaml and the workspace's code servers",
        description="Tries what $DAGSTER_HOME/dagster.yaml and the workspace file point at: "
        "PostgreSQL (server, user, password, database, permission to make Dagster's tables) "
        "and each gRPC code server (it answers and its code loads). One line per problem "
        "names the setting and the fix; passwords are never printed. Exit 1 on any problem.",
    )
    check.add_argument(
        "--dagster-home",
        default=None,
        help="the instance's directory (default: $DAGSTER_HOME)",
    )
    check.add_argument(
        "-w",
        "--workspace",
        default=None,
        help=f"workspace file (default: {GRPC_WORKSPACE_YAML.relative_to(GRPC_WORKSPACE_YAML.parents[1])} "
        "of this repository; the file the webserver and the daemon get with -w)",
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=5.0,
        help="seconds to wait for each server (default %(default)s)",
    )
    parser.set_defaults(handler=run)


def run(args) -> int:
    from churn_platform.deploy.check import check_deployment

    home = args.dagster_home or os.environ.get("DAGSTER_HOME")
    report = check_deployment(home, args.workspace or GRPC_WORKSPACE_YAML, timeout=args.timeout)
    for finding in report.lines():
        if finding.ok:
            print(f"ok  {finding.text}", flush=True)
        else:
            print(f"churn-platform deployment check: {finding.text}", file=sys.stderr, flush=True)
    return 0 if report.ok else FAILED

"""Freshness in a team's deployment: Dagster on PostgreSQL against the same on SQLite.

The three processes of docs/deployment.md (`dagster code-server start`,
`dagster-webserver`, `dagster-daemon run`, the webserver and the daemon reaching
the code location over gRPC) run twice in one benchmark, identical but for the
instance's storage: SQLite files in DAGSTER_HOME (the project's dagster.yaml, the
reference) and a throw-away PostgreSQL cluster (deploy/dagster.postgres.yaml;
Debian's postgresql, as the tests start it). Each gets its own embedded broker,
the same simulated history, a champion trained by the project's own path as runs
of that instance, and then the rounds of benchmarks/freshness.py: one event for
an active customer → committed in the lake by the sensor's extract (`to_lake`) →
that customer's row in today's churn_scores scored after it by automation
(`to_scores`). The ratio PostgreSQL / SQLite of the medians says what the
storage costs; the sensor, the run queue and each run's event log all go
through it.

    .venv/bin/python benchmarks/deployment.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from freshness import (
    one_round,
    percentiles,
    wait_for_scores,
)  # benchmarks/ is this script's directory

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "deployment.json"
TOPIC = "customer-events"


def measure(storage: str, root: Path, args, postgres=None) -> dict:
    """One deployment on `storage`: history, champion, the three processes, the rounds."""
    from threadpoolctl import threadpool_limits

    from churn_platform.defs.ml.schedules import TRAINING_CRON_ENV
    from churn_platform.defs.resources.drift import THRESHOLD_ENV
    from churn_platform.environ import temporary_environ
    from churn_platform.events.simulator import SimulatorConfig, produce_simulation
    from churn_platform.instance import PROJECT_DAGSTER_YAML
    from churn_platform.kafka.broker import EmbeddedBroker
    from churn_platform.lake.store import Lake
    from churn_platform.runner import PathOptions, run_platform
    from churn_platform.testing.deployment import Deployment

    lake = Lake(str(root / "lake"))
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker(log_path=root / "broker.log"))
        history = SimulatorConfig(
            customers=args.customers, days=args.history_days, seed=23, end=datetime.now(UTC)
        )
        produce_simulation(broker.settings, TOPIC, history, partitions=3)
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "CHURN_EVENTS_TOPIC": TOPIC,
            "CHURN_LAKE": lake.uri,
            # no drift-triggered or nightly training while the rounds run
            THRESHOLD_ENV: "1000",
            TRAINING_CRON_ENV: "0 0 1 1 *",
        }
        if postgres is not None:
            env |= postgres.environment(postgres.create_database())
        # the instance reads DAGSTER_PG_*, the runs the rest
        stack.enter_context(temporary_environ(env))
        deployment = Deployment(root / "deployment", env)
        if postgres is None:  # the reference: the project's dagster.yaml, SQLite
            shutil.copyfile(PROJECT_DAGSTER_YAML, deployment.home / "dagster.yaml")
        started = time.monotonic()
        with threadpool_limits(1), deployment.instance() as instance:
            trained = run_platform(
                instance, options=PathOptions(engine="polars", score=False), log=lambda _: None
            )
        train_s = time.monotonic() - started
        if not trained.get("champion_version"):
            raise RuntimeError(f"{storage}: no champion: {trained.get('stopped')}")
        stack.callback(deployment.stop)
        started = time.monotonic()
        deployment.start_all()
        ready_s = time.monotonic() - started

        today = datetime.now(UTC).date()
        scores = wait_for_scores(lake, today, 1)  # automation's first run scores today
        first_scores_s = time.monotonic() - started
        if scores is None:
            raise RuntimeError(f"{storage}: no churn scores for {today} after 5 minutes")
        customers = sorted(scores["customer_id"].to_list())
        rng = np.random.default_rng(7)
        rounds = []
        for i in range(args.rounds):
            result = one_round(broker.settings, lake, str(rng.choice(customers)), args.timeout)
            rounds.append(result)
            print(f"{storage} round {i + 1}: {result}", flush=True)
            time.sleep(3)
    return {
        "train_s": round(train_s, 1),
        "processes_ready_s": round(ready_s, 1),
        "first_scores_s": round(first_scores_s, 1),
        "rounds": rounds,
        "to_lake": percentiles([r["to_lake_s"] for r in rounds]),
        "to_scores": percentiles([r["to_scores_s"] for r in rounds]),
        "missed": sum(r["to_scores_s"] is None for r in rounds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--history-days", type=int, default=120)
    parser.add_argument("--timeout", type=float, default=240.0, help="per round")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    from churn_platform.testing.postgres import postgres_bin_dir, throwaway_cluster

    if postgres_bin_dir() is None:
        raise SystemExit("deployment benchmark: PostgreSQL is not installed: make postgresql")
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="deployment-bench-"))
    results = {"sqlite": measure("sqlite", root / "sqlite", args)}
    with throwaway_cluster() as postgres:
        results["postgres"] = measure("postgres", root / "postgres", args, postgres)
        server = postgres.connect().server_version
    shutil.rmtree(root, ignore_errors=True)

    def ratio(key: str, stat: str) -> float | None:
        pg, ref = results["postgres"][key].get(stat), results["sqlite"][key].get(stat)
        return round(pg / ref, 2) if pg and ref else None

    result = {
        "benchmark": "deployment",
        "what": "freshness (event → lake → today's score) in the three-process deployment "
        "(code server over gRPC, webserver, daemon), on PostgreSQL and on SQLite (reference)",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "postgresql": server,
            "load_average_before": load_before,
            "load_average_at_end": os.getloadavg(),
        },
        "parameters": vars(args) | {"output": str(args.output)},
        **results,
        "ratio_postgres_to_sqlite": {
            "to_lake_p50": ratio("to_lake", "p50_s"),
            "to_scores_p50": ratio("to_scores", "p50_s"),
            "to_scores_p95": ratio("to_scores", "p95_s"),
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    summary = {s: {k: results[s][k] for k in ("to_lake", "to_scores", "missed")} for s in results}
    print(json.dumps(summary | {"ratio": result["ratio_postgres_to_sqlite"]}, indent=2))


if __name__ == "__main__":
    main()

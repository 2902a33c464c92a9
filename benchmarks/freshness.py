"""Freshness through the sensor path: an event produced → its customer's row in churn_scores.

Starts `churn-platform up` (embedded broker, history, bootstrap training, the
Dagster daemon with `customer_events_sensor` and the automation sensor on,
the live simulator) with default Dagster settings, then for each round
produces one event for an existing customer and measures:

- `to_lake`: until the event is committed in the lake (the sensor's extract);
- `to_scores`: until `scores/churn_scores/as_of=<today>` holds a row for that
  customer scored after the extract committed it (the automated features +
  scores run), i.e. a score that has seen the event.

Results: p50/p95 over the rounds in `benchmarks/results/freshness.json`. The
target is p95 < 60 s.

    .venv/bin/python benchmarks/freshness.py [--rounds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "freshness.json"


def free_port() -> int:
    from churn_platform.kafka.broker import free_port as pick

    return pick()


def start_up(state: Path, customers: int, days: int, rate: float) -> tuple[subprocess.Popen, str]:
    broker_port, ui_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}
    env["DAGSTER_HOME"] = str(state / "dagster")
    log = (state / "up.log").open("w")
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "churn_platform.cli", "up"),
            *("--state-dir", str(state), "--ui-port", str(ui_port)),
            *("--broker-port", str(broker_port), "--customers", str(customers)),
            *("--history-days", str(days), "--rate", str(rate)),
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        text = (state / "up.log").read_text()
        if "Churn Platform is up" in text:
            return process, f"127.0.0.1:{broker_port}"
        if process.poll() is not None:
            raise RuntimeError(f"up exited early:\n{text[-3000:]}")
        time.sleep(1)
    raise RuntimeError("up did not become ready in 10 minutes")


def committed(lake, event_id: str, today) -> bool:
    from churn_platform.lake.raw import raw_files, raw_path, read_raw_file

    for f in raw_files(lake, start=today, end=today):
        ids = read_raw_file(lake, raw_path(f), ["event_id"])["event_id"]
        if (ids == event_id).any():
            return True
    return False


def scores_of(lake, today):
    """Today's churn scores, or None before the first scoring run committed them."""
    from churn_platform.ml.score import ScoresMissing, read_scores

    try:
        return read_scores(lake, today)
    except ScoresMissing:
        return None


def wait_for_scores(lake, today, poll_s: float):
    """Today's scores once the first automated run committed them (None after 5 minutes)."""
    deadline = time.monotonic() + 300
    while (scores := scores_of(lake, today)) is None and time.monotonic() < deadline:
        time.sleep(poll_s)
    return scores


def scored_after(lake, customer: str, today, after: datetime) -> bool:
    scores = scores_of(lake, today)  # a committed version: never half a file
    if scores is None:
        return False
    row = scores.filter(pl.col("customer_id") == customer)
    return row.height == 1 and row["scored_at"][0] > after


def one_round(settings, lake, customer: str, timeout: float) -> dict:
    from churn_platform.kafka.producer import EventProducer

    now = datetime.now(UTC)
    event_id = f"fresh-{uuid.uuid4().hex[:10]}"
    body = {
        "event_id": event_id,
        "customer_id": customer,
        "event_type": "login",
        "ts": now.isoformat(),
    }
    started = time.monotonic()
    with EventProducer(settings) as producer:
        producer.send("customer-events", json.dumps(body).encode(), customer.encode())
    today = now.date()
    to_lake = to_scores = None
    lake_at = None
    while time.monotonic() - started < timeout:
        if to_lake is None and committed(lake, event_id, today):
            to_lake = time.monotonic() - started
            lake_at = datetime.now(UTC)
        if lake_at is not None and scored_after(lake, customer, today, lake_at):
            to_scores = time.monotonic() - started
            break
        time.sleep(0.5)
    return {"customer": customer, "to_lake_s": to_lake, "to_scores_s": to_scores}


def percentiles(values: list[float | None]) -> dict:
    """p50, p95 and max of the rounds that finished (None: missed)."""
    done = [v for v in values if v is not None]
    if not done:
        return {"n": 0}
    return {
        "n": len(done),
        "p50_s": round(float(np.percentile(done, 50)), 2),
        "p95_s": round(float(np.percentile(done, 95)), 2),
        "max_s": round(max(done), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--history-days", type=int, default=120)
    parser.add_argument("--rate", type=float, default=20.0, help="live simulator events/s")
    parser.add_argument("--timeout", type=float, default=240.0, help="per round")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    from churn_platform.kafka.config import KafkaSettings
    from churn_platform.lake.raw import read_raw_events
    from churn_platform.lake.store import Lake

    state = Path(tempfile.mkdtemp(prefix="freshness-"))
    started = time.monotonic()
    process, bootstrap = start_up(state, args.customers, args.history_days, args.rate)
    ready_s = time.monotonic() - started
    print(f"up ready after {ready_s:.0f} s ({state})", flush=True)
    try:
        settings = KafkaSettings(bootstrap)
        lake = Lake(str(state / "lake"))
        # active customers only: an event of a cancelled customer scores nobody
        today = datetime.now(UTC).date()
        scores = wait_for_scores(lake, today, 2)  # the first automated run scores today
        if scores is not None:
            customers = sorted(scores["customer_id"].to_list())
        else:
            customers = sorted(read_raw_events(lake)["customer_id"].unique().to_list())
        rng = np.random.default_rng(7)
        rounds = []
        for i in range(args.rounds):
            result = one_round(settings, lake, str(rng.choice(customers)), args.timeout)
            rounds.append(result)
            print(f"round {i + 1}: {result}", flush=True)
            time.sleep(3)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)

    def stats(key: str) -> dict:
        return percentiles([r[key] for r in rounds])

    result = {
        "benchmark": "freshness",
        "what": "event produced → committed in the lake (sensor extract) → its customer's "
        "row in churn_scores scored after that (automation), default Dagster settings",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
        },
        "parameters": vars(args) | {"output": str(args.output)},
        "up_ready_s": round(ready_s, 1),
        "rounds": rounds,
        "to_lake": stats("to_lake_s"),
        "to_scores": stats("to_scores_s"),
        "missed": sum(r["to_scores_s"] is None for r in rounds),
        "target": "p95 to_scores < 60 s",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("to_lake", "to_scores", "missed")}, indent=2))


if __name__ == "__main__":
    main()

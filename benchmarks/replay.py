"""`replay_file` throughput beside a bare produce loop of the same messages, in the same run.

    python benchmarks/replay.py [--rows 6500000] [--rounds 3] [--keep-file PATH]

Builds a seeded synthetic events Parquet file with numpy (`--rows` events of
8 activity types over 90 days, 70k customers with string ids, a value column
with 30% missing, two attribute columns), then, each round, starts a fresh
embedded broker (Tansu keeps topics in memory, so a broker per round keeps
the rounds alike) and measures, in alternating order:

* the reference: a bare confluent-kafka loop that calls `produce()` for
  every one of the same messages, pre-built in memory (the messages replay
  makes for this file, ~200 bytes), with the project's producer settings
  (`THROUGHPUT_PRODUCER_CONFIG`), serving callbacks every 10k messages, then
  `flush()`; what any replay must at least do;
* `replay_file` on the file, as `churn-platform replay` runs it: read,
  convert, check against the contract, produce, flush.

Rows/s of both and their ratio per round, the load average before and after
each round (the machine's 2 cores are shared) and machine facts go to
benchmarks/results/replay.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import confluent_kafka
import numpy as np
import polars as pl

from churn_platform.events.replay import ReplayMapping, iter_messages, replay_file
from churn_platform.kafka.admin import ensure_topic
from churn_platform.kafka.broker import EmbeddedBroker
from churn_platform.kafka.producer import THROUGHPUT_PRODUCER_CONFIG

RESULTS = Path(__file__).parent / "results"
TARGET_ROWS_PER_S = 300_000
ACTIVITY_TYPES = [
    "login",
    "page_view",
    "search",
    "add_to_cart",
    "purchase",
    "support_ticket",
    "payment_failed",
    "feature_used",
]
PLANS = ["basic_monthly", "pro_monthly", "enterprise_annual"]
DEVICES = ["ios_app", "android_app", "web_browser", "desktop_app"]
MAPPING = ReplayMapping(value_column="amount", attribute_columns=("plan", "device"))
START = datetime(2026, 1, 1, tzinfo=UTC)


def build_file(path: Path, rows: int, seed: int = 7) -> None:
    """`rows` events in time order: customer_id (text), event_type, ts, amount, plan, device.

    The messages replay makes of them are ~200 bytes, like the simulator's.
    """
    rng = np.random.default_rng(seed)
    customers = rng.integers(0, 70_000, rows)
    start_us = int(START.timestamp() * 1_000_000)
    ts = np.sort(rng.integers(start_us, start_us + 90 * 86_400 * 1_000_000, rows))
    amount = rng.gamma(2.0, 20.0, rows).round(2)
    amount[rng.random(rows) < 0.3] = np.nan
    types = np.array(ACTIVITY_TYPES)[
        rng.choice(8, rows, p=[0.25, 0.3, 0.15, 0.1, 0.08, 0.05, 0.02, 0.05])
    ]
    pl.DataFrame(
        {
            "customer_id": "customer_" + pl.Series(customers).cast(pl.String).str.zfill(7),
            "event_type": types,
            "ts": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
            "amount": pl.Series(amount).fill_nan(None),
            "plan": np.array(PLANS)[rng.integers(0, len(PLANS), rows)],
            "device": np.array(DEVICES)[rng.integers(0, len(DEVICES), rows)],
        }
    ).write_parquet(path, row_group_size=250_000)


def bare_produce(settings, topic: str, keys: list, values: list) -> float:
    """Seconds for a plain produce() loop over the messages, flush included."""
    producer = confluent_kafka.Producer(settings.client_config(**THROUGHPUT_PRODUCER_CONFIG))
    produce, poll = producer.produce, producer.poll
    started = time.perf_counter()
    for i, (key, value) in enumerate(zip(keys, values, strict=True)):
        while True:
            try:
                produce(topic, value, key)
                break
            except BufferError:
                poll(0.05)
        if i % 10_000 == 0:
            poll(0)
    left = producer.flush(120)
    seconds = time.perf_counter() - started
    assert left == 0, f"{left} reference messages undelivered"
    return seconds


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=6_500_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep-file", type=Path, help="build the file here (reused if present)")
    parser.add_argument("--note", default="", help="recorded in the results")
    args = parser.parse_args()

    load_start = _load()
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        path = args.keep_file or Path(tmp) / "events.parquet"
        if not path.exists():
            started = time.perf_counter()
            build_file(path, args.rows)
            print(f"built {path} ({args.rows:,} rows) in {time.perf_counter() - started:.1f} s")
        rows = pl.scan_parquet(path).select(pl.len()).collect().item()
        keys, values = [], []
        for batch in iter_messages(path, MAPPING):
            for key, value in batch:
                keys.append(key)
                values.append(value)
        mean_bytes = round(sum(map(len, values)) / len(values))
        print(f"{len(values):,} reference messages, {mean_bytes} bytes on average")

        rounds = []
        for number in range(args.rounds):
            load_before = _load()
            measured = {}
            with EmbeddedBroker() as broker:
                settings = broker.settings
                order = ["reference", "replay"] if number % 2 == 0 else ["replay", "reference"]
                for what in order:
                    topic = f"bench-{what}-{uuid.uuid4().hex[:6]}"
                    if what == "reference":
                        ensure_topic(settings, topic, 3)
                        measured[what] = len(values) / bare_produce(settings, topic, keys, values)
                    else:
                        started = time.perf_counter()
                        summary = replay_file(settings, topic, path, MAPPING)
                        seconds = time.perf_counter() - started
                        assert summary.rows_read == rows == summary.events_produced
                        assert summary.invalid == 0, summary.invalid_by_reason
                        measured[what] = rows / seconds
            rounds.append(
                {
                    "reference_rows_per_s": round(measured["reference"]),
                    "replay_rows_per_s": round(measured["replay"]),
                    "ratio_replay_to_reference": round(
                        measured["replay"] / measured["reference"], 3
                    ),
                    "order": order,
                    "load_average_before": load_before,
                    "load_average_after": _load(),
                }
            )
            print(json.dumps(rounds[-1]))

    replay = statistics.median(r["replay_rows_per_s"] for r in rounds)
    reference = statistics.median(r["reference_rows_per_s"] for r in rounds)
    summary = {
        "benchmark": "replay",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "polars": pl.__version__,
            "confluent_kafka": confluent_kafka.version(),
            "librdkafka": confluent_kafka.libversion()[0],
        },
        "file": {
            "rows": rows,
            "activity_types": len(ACTIVITY_TYPES),
            "columns": ["customer_id", "event_type", "ts", "amount", "plan", "device"],
            "message_bytes_mean": mean_bytes,
        },
        "replay_rows_per_s_median": round(replay),
        "reference_rows_per_s_median": round(reference),
        "ratio_median": round(statistics.median(r["ratio_replay_to_reference"] for r in rounds), 3),
        "target_rows_per_s": TARGET_ROWS_PER_S,
        "rounds": rounds,
        "load_average_start": load_start,
        "load_average_end": _load(),
        "peak_rss_mib_this_process_with_reference_messages": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ),
        "note": args.note,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "replay.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

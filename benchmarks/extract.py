"""Extract throughput beside a raw consume loop on the same topic, in the same run.

    python benchmarks/extract.py [--events 2000000] [--rounds 2]

Starts the embedded broker, produces simulated events, then alternates a raw
loop (`assign()`, `consume()` in large batches to EOF, reading each message's
value, partition and offset and nothing more) with the full extract (validate,
write Parquet and quarantine, ledger) into a fresh lake. Writes
benchmarks/results/extract.json with events/s of both and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from common import raw_consume, result_header

from churn_platform.ingestion.extract import ExtractConfig, extract_topic
from churn_platform.lake.store import Lake

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bad-fraction", type=float, default=0.0)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    load_before = os.getloadavg()
    # Imported here, not above: the extract's spawned worker imports this script's
    # module again (as `churn-platform extract`'s worker imports the CLI's), and
    # the simulator would add polars to its start-up, which no user's worker pays.
    from churn_platform.events.simulator import SimulatorConfig, produce_simulation
    from churn_platform.kafka.broker import EmbeddedBroker

    # the simulator makes ~1 event per customer-day at the scale plan's density
    customers = max(100, round(args.events / 89))  # ~89 events per customer over 90 days
    config = SimulatorConfig(
        customers=customers, days=90, seed=7, end=datetime.now(UTC), bad_fraction=args.bad_fraction
    )
    topic = "bench-events"
    with EmbeddedBroker() as broker:
        settings = broker.settings
        produced = produce_simulation(settings, topic, config, progress=True)
        print(f"produced {produced.messages_produced:,} messages in {produced.seconds:.1f} s")
        raw_runs, extract_runs = [], []
        for round_number in range(args.rounds):
            n, seconds = raw_consume(settings, topic)
            raw_runs.append(n / seconds)
            lake_dir = Path(tempfile.mkdtemp(prefix="bench-lake-"))
            try:
                result = extract_topic(
                    settings, Lake(lake_dir), ExtractConfig(topic=topic, workers=args.workers)
                )
            finally:
                shutil.rmtree(lake_dir, ignore_errors=True)
            assert result.messages == n == produced.messages_produced, (result.messages, n)
            extract_runs.append(result.messages_per_second)
            print(
                f"round {round_number + 1}: raw {raw_runs[-1]:,.0f}/s, extract "
                f"{extract_runs[-1]:,.0f}/s ({result.workers} workers), "
                f"ratio {extract_runs[-1] / raw_runs[-1]:.2f}"
            )
    raw_best, extract_best = max(raw_runs), max(extract_runs)
    summary = {
        **result_header("extract", args.note, load_before),
        "messages": produced.messages_produced,
        "bad_fraction": args.bad_fraction,
        "raw_consume_per_s": round(raw_best),
        "extract_per_s": round(extract_best),
        "ratio_extract_to_raw": round(extract_best / raw_best, 3),
        "ratio_per_round": [round(e / r, 3) for e, r in zip(extract_runs, raw_runs, strict=True)],
        "target_ratio": 0.7,
        "raw_runs_per_s": [round(x) for x in raw_runs],
        "extract_runs_per_s": [round(x) for x in extract_runs],
        "peak_rss_mib_this_process": round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ),
        "peak_rss_mib_largest_child_broker_or_worker": round(
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        ),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = "extract.json" if args.bad_fraction == 0 else f"extract-bad{args.bad_fraction}.json"
    (RESULTS / name).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

"""Soak: kill -9 the extract at seeded random points, round after round, then check exactly once.

    python benchmarks/soak.py [--rounds 25] [--seed 7] [--customers 150] [--days 30]

Starts the embedded broker and a 3-partition topic. Every round produces
another simulated batch (5% malformed messages, each labelled with the reason
validation must give it; every message's partition and offset recorded from the
delivery reports), starts the extract in a child process that commits in steps
(`--cap` messages per partition per commit, small chunks and flushes, so many
files and many commit points) and SIGKILLs it after a seeded delay spread over
the whole run. After every kill it checks what readers see (exactly the
produced data below the committed offsets) and records the state the kill
left: committed offsets and files, data files no commit references, temporary
files. A clean run then completes the extract and the lake is compared with
what was produced: lost and duplicate events must be 0, the quarantine exactly
the malformed messages with their reasons, the offsets the end of the topic, no
temporary file left. Writes benchmarks/results/soak.json; exits 1 if anything was lost
or duplicated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from churn_platform.kafka.admin import ensure_topic
from churn_platform.kafka.broker import EmbeddedBroker
from churn_platform.lake.store import Lake
from churn_platform.testing.faults import (
    Produced,
    assert_exactly_once,
    check_exactly_once,
    extract_child_command,
    kill_rounds,
    run_child_to_completion,
)

RESULTS = Path(__file__).parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--customers", type=int, default=150, help="per produced batch")
    parser.add_argument("--days", type=int, default=30, help="per produced batch")
    parser.add_argument("--bad-fraction", type=float, default=0.05)
    parser.add_argument("--cap", type=int, default=1_500, help="messages/partition per commit")
    parser.add_argument("--chunk-size", type=int, default=200)
    parser.add_argument("--flush-rows", type=int, default=500)
    args = parser.parse_args()
    load_before = os.getloadavg()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    started = time.perf_counter()
    child_options = {
        "cap": args.cap,
        "chunk_size": args.chunk_size,
        "flush_rows": args.flush_rows,
    }
    sizes = {"customers": args.customers, "days": args.days, "bad_fraction": args.bad_fraction}
    topic = "soak-events"
    with tempfile.TemporaryDirectory(prefix="soak-") as work, EmbeddedBroker() as broker:
        settings = broker.settings
        ensure_topic(settings, topic, partitions=3)
        lake = Lake(Path(work) / "lake")
        produced = Produced()
        records = kill_rounds(
            settings,
            topic,
            lake,
            produced,
            rounds=args.rounds,
            seed=args.seed,
            sizes=sizes,
            child_options=child_options,
        )
        for r in records:
            print(
                f"round {r['round']:>2}: backlog {r['backlog']:>6}, kill after "
                f"{r['kill_after_s']:.2f} s ({'killed' if r['killed'] else 'had finished'}): "
                f"{r['phase']}; offsets {r['offsets_total']}, files {r['committed_files']} "
                f"committed + {r['unreferenced_files']} unreferenced, {r['temp_files']} temp"
            )
        rerun_started = time.perf_counter()
        steps = run_child_to_completion(
            extract_child_command(settings.bootstrap_servers, lake.root, topic, **child_options),
            timeout=600,
        )
        rerun_seconds = time.perf_counter() - rerun_started
        figures = check_exactly_once(lake, topic, produced)

    seconds = time.perf_counter() - started
    phases = Counter(r["phase"] for r in records)
    result = {
        "benchmark": "soak: kill -9 of the extract at seeded random points, then a clean rerun",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "settings": {"seed": args.seed, "topic_partitions": 3, **sizes, **child_options},
        "rounds": args.rounds,
        "killed": sum(r["killed"] for r in records),
        "kill_phases": dict(sorted(phases.items())),
        "unreferenced_files_at_kills": sum(r["unreferenced_files"] for r in records),
        "temp_files_at_kills": sum(r["temp_files"] for r in records),
        "final_rerun": {
            "seconds": round(rerun_seconds, 2),
            "steps": len(steps),
        },
        **figures,
        "seconds": round(seconds, 1),
        "kills": records,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{args.rounds} rounds, {result['killed']} kills {dict(phases)}; "
        f"{figures['events_produced']:,} messages produced, {figures['events_checked']:,} events "
        f"checked, {figures['quarantined_checked']:,} quarantined checked; lost "
        f"{figures['lost']}, duplicates {figures['duplicates']}; {seconds:.0f} s "
        f"→ {RESULTS / 'soak.json'}"
    )
    try:
        assert_exactly_once(figures)
    except AssertionError as exc:
        print(f"EXACTLY-ONCE VIOLATED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Feature computation: the Beam pipeline (DirectRunner) beside the polars reference, same run.

    python benchmarks/features.py [--events 2000000,10000000] [--rounds 3]
        [--shards N] [--read-tasks N] [--modes in_memory:1,multi_processing:2]
        [--lake-dir DIR]   # keep and reuse the simulated lakes there

For each size, simulates a business (90 days, about 88 events per customer)
into a fresh lake (written day by day, as the extract would), then alternates
rounds of, each in its own process so every peak RSS is that engine's alone:

* polars: `reference_features` (the reference: pyarrow reads + compute_features);
* polars, same reader: compute_features over the files read the way the
  pipeline reads them (pl.read_parquet), to show what the reader contributes;
* beam: `run_feature_pipeline` on the DirectRunner, in the first `--modes`
  entry every round and in the others once (mode:direct_num_workers).

Times cover the work, not interpreter start-up or imports; Beam's include
building the pipeline and writing its Parquet output. A last process checks
that the Beam table equals the reference. Writes
benchmarks/results/features.json: events/s of each engine (median over the
rounds), the ratio beam/polars, and peak RSS of each process (Beam's worker
processes, in multi_processing mode, separately).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
END = datetime(2026, 11, 21, tzinfo=UTC)  # fixed, so lakes are reproducible
AS_OF = (END - timedelta(days=1)).date()
DAYS = 90
EVENTS_PER_CUSTOMER = 88  # the simulator's density over 90 days
TARGET_RATIO = 0.5


# --- children: one engine, one process ------------------------------------------------


def _peaks() -> dict[str, int]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    return {"peak_rss_mib": own, "peak_rss_mib_worker_processes": children}


def child_polars(lake_root: str, as_of: date) -> dict:
    from churn_platform.features.reference import reference_features
    from churn_platform.lake.store import Lake

    lake = Lake(lake_root)
    started = time.perf_counter()
    table = reference_features(lake, as_of)
    return {"seconds": time.perf_counter() - started, "rows": table.height}


def child_polars_same_reader(lake_root: str, as_of: date) -> dict:
    import polars as pl

    from churn_platform.events.contract import LIFECYCLE_EVENT_TYPES
    from churn_platform.features.definitions import compute_features
    from churn_platform.features.inputs import feature_inputs
    from churn_platform.features.pipeline import read_events
    from churn_platform.lake.store import Lake

    lake = Lake(lake_root)
    started = time.perf_counter()
    inputs = feature_inputs(lake, as_of)
    lifecycle = sorted(LIFECYCLE_EVENT_TYPES)
    frames = [
        read_events(lake, p).filter(pl.col("event_type").is_in(lifecycle))
        for p in inputs.history_files
    ]
    frames += [read_events(lake, p) for p in inputs.window_files]
    table = compute_features(pl.concat(frames, how="vertical_relaxed"), as_of)
    return {"seconds": time.perf_counter() - started, "rows": table.height}


def child_beam(lake_root: str, as_of: date, mode: str, workers: int, shards: int, tasks: int):
    from churn_platform.features.options import BeamRunnerSettings
    from churn_platform.features.pipeline import run_feature_pipeline

    settings = BeamRunnerSettings(direct_num_workers=workers, direct_running_mode=mode)
    started = time.perf_counter()
    result = run_feature_pipeline(lake_root, as_of, settings, shards=shards, read_tasks=tasks)
    return {
        "seconds": time.perf_counter() - started,
        "rows": result.rows,
        "events_read": result.events_read,
        "customers": result.customers,
    }


def child_check(lake_root: str, as_of: date) -> dict:
    from polars.testing import assert_frame_equal

    from churn_platform.features.materialize import read_features
    from churn_platform.features.reference import reference_features
    from churn_platform.lake.store import Lake

    lake = Lake(lake_root)
    beam = read_features(lake, as_of)
    assert_frame_equal(beam, reference_features(lake, as_of))
    return {"identical": True, "rows": beam.height, "columns": beam.width}


def child_build(lake_root: str, events: int) -> dict:
    from churn_platform.lake.store import Lake
    from churn_platform.testing.lakes import simulated_lake

    started = time.perf_counter()
    summary = simulated_lake(
        Lake(lake_root), customers=max(100, round(events / EVENTS_PER_CUSTOMER)), days=DAYS, end=END
    )
    return {
        "events": summary.events,
        "customers": summary.customers,
        "files": summary.files,
        "seconds": time.perf_counter() - started,
    }


def child_main(args: list[str]) -> None:
    kind, lake_root, *rest = args
    if kind == "build":
        out = child_build(lake_root, int(rest[0]))
    else:
        as_of = date.fromisoformat(rest[0])
        if kind == "polars":
            out = child_polars(lake_root, as_of)
        elif kind == "polars_same_reader":
            out = child_polars_same_reader(lake_root, as_of)
        elif kind == "check":
            out = child_check(lake_root, as_of)
        else:
            mode, workers, shards, tasks = rest[1], int(rest[2]), int(rest[3]), int(rest[4])
            out = child_beam(lake_root, as_of, mode, workers, shards, tasks)
    print(json.dumps({**out, **_peaks()}))


# --- parent ------------------------------------------------------------------------------


def run_child(*args: object) -> dict:
    command = [sys.executable, __file__, "--child", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: list[dict], events: int) -> dict:
    seconds = [r["seconds"] for r in runs]
    median = statistics.median(seconds)
    return {
        "runs_s": [round(s, 2) for s in seconds],
        "median_s": round(median, 2),
        "best_s": round(min(seconds), 2),
        "events_per_s": round(events / median),
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "peak_rss_mib_worker_processes": max(r["peak_rss_mib_worker_processes"] for r in runs),
    }


def bench_size(events: int, args, lake_root: Path) -> dict:
    marker = lake_root / ".built.json"
    if marker.exists():
        built = json.loads(marker.read_text())
        print(f"reusing {lake_root}: {built['events']:,} events")
    else:
        shutil.rmtree(lake_root, ignore_errors=True)
        built = run_child("build", lake_root, events)
        marker.write_text(json.dumps(built))
        print(
            f"built {built['events']:,} events, {built['customers']:,} customers, "
            f"{built['files']} files in {built['seconds']:.1f} s"
        )
    n = built["events"]
    modes = [m.split(":") for m in args.modes.split(",")]
    polars, same_reader = [], []
    beam: dict[str, list[dict]] = {f"{m}:{w}": [] for m, w in modes}
    for round_number in range(args.rounds):
        polars.append(run_child("polars", lake_root, AS_OF))
        same_reader.append(run_child("polars_same_reader", lake_root, AS_OF))
        line = [
            f"polars {polars[-1]['seconds']:.2f} s",
            f"same reader {same_reader[-1]['seconds']:.2f} s",
        ]
        for index, (mode, workers) in enumerate(modes):
            if index == 0 or round_number == 0:
                key = f"{mode}:{workers}"
                beam[key].append(
                    run_child("beam", lake_root, AS_OF, mode, workers, args.shards, args.read_tasks)
                )
                line.append(f"beam {key} {beam[key][-1]['seconds']:.2f} s")
        print(f"round {round_number + 1}: " + ", ".join(line))
    check = run_child("check", lake_root, AS_OF)
    primary = f"{modes[0][0]}:{modes[0][1]}"
    polars_summary = summarise(polars, n)
    beam_summaries = {
        key: {
            "direct_running_mode": key.split(":")[0],
            "direct_num_workers": int(key.split(":")[1]),
            **summarise(runs, n),
        }
        for key, runs in beam.items()
    }
    ratio = beam_summaries[primary]["events_per_s"] / polars_summary["events_per_s"]
    return {
        "events": n,
        "customers": built["customers"],
        "raw_files": built["files"],
        "as_of": AS_OF.isoformat(),
        "feature_rows": check["rows"],
        "feature_columns": check["columns"],
        "beam_equals_reference": check["identical"],
        "polars_reference": polars_summary,
        "polars_with_pipeline_reader": summarise(same_reader, n),
        "beam": beam_summaries,
        "beam_settings": {
            "runner": "DirectRunner (FnApiRunner)",
            "shards": args.shards,
            "read_tasks": args.read_tasks,
            "primary_mode": primary,
        },
        "ratio_beam_to_polars": round(ratio, 3),
        "ratio_per_round": [
            round(p["seconds"] / b["seconds"], 3)
            for p, b in zip(polars, beam[primary], strict=False)
        ],
        "ratio_beam_to_polars_same_reader": round(
            beam_summaries[primary]["events_per_s"] / summarise(same_reader, n)["events_per_s"], 3
        ),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", default="2000000,10000000")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shards", type=int, default=None, help="default: the pipeline's")
    parser.add_argument("--read-tasks", type=int, default=None, help="default: the pipeline's")
    parser.add_argument(
        "--modes",
        default="in_memory:1,multi_processing:2,multi_threading:2",
        help="direct_running_mode:direct_num_workers, the first every round, the others once",
    )
    parser.add_argument("--lake-dir", default=None, help="keep (and reuse) the lakes here")
    parser.add_argument("--output", default=str(RESULTS / "features.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    from churn_platform.features.pipeline import DEFAULT_READ_TASKS, DEFAULT_SHARDS

    args.shards = args.shards or DEFAULT_SHARDS
    args.read_tasks = args.read_tasks or DEFAULT_READ_TASKS

    work = (
        Path(args.lake_dir) if args.lake_dir else Path(tempfile.mkdtemp(prefix="bench-features-"))
    )
    work.mkdir(parents=True, exist_ok=True)
    sizes = []
    try:
        for events in (int(e) for e in args.events.split(",")):
            result = bench_size(events, args, work / f"lake-{events}")
            sizes.append(result)
            print(
                f"{result['events']:,} events: polars {result['polars_reference']['events_per_s']:,}/s, "
                f"beam {result['beam'][result['beam_settings']['primary_mode']]['events_per_s']:,}/s, "
                f"ratio {result['ratio_beam_to_polars']}"
            )
    finally:
        if not args.lake_dir:
            shutil.rmtree(work, ignore_errors=True)
    body = {
        "benchmark": "features",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}  cores={os.cpu_count()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "target": f"beam >= {TARGET_RATIO} x polars at the largest size",
        "target_met": sizes[-1]["ratio_beam_to_polars"] >= TARGET_RATIO if sizes else None,
        "sizes": sizes,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

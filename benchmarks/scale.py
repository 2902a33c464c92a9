"""The scale curve: the whole batch pipeline at 1M, 3M and 10M events, stage by stage.

    python benchmarks/scale.py [--sizes 1000000,3000000,10000000] [--days 150]
        [--work-dir DIR] [--keep]

For each size, on a fresh embedded broker: simulate `--days` days of a business
sized so it emits about that many events and produce them to Kafka, then run
each stage in its own process (so every peak RSS is that stage's alone), the
way a user runs it — Dagster materializations against a real instance, with
the project's assets, resources and jobs:

* raw_consume (reference): a bare consumer reading every message to EOF;
* extract: `raw_customer_events` (Kafka → Parquet lake, exactly once);
* features_latest: `features_job` for the latest as-of date (Beam DirectRunner);
* polars_reference (reference): `reference_features` for the same date;
* features_range: the 12 weekly as-of dates of the training range as `train`
  makes them (training_set's `ensure_inputs`: one Beam pipeline for every date,
  then each date's feature checks and labels);
* training_set, model (`churn_model` + its gate + `churn_champion`), scores
  (`churn_scores` of the latest date: lake + topic churn-scores);
* incremental: ~100k new events for the next day are produced, then
  incremental_extract (`raw_customer_events` again: only the new offsets) and
  incremental_features (`features_job` for the one new as-of date).

The pipeline's end-to-end time is extract + features_latest + features_range +
training_set + model + scores (not the simulation, not the references, not
the incremental runs). Times are of the work inside each process (Dagster's
in-process run included, interpreter start-up and imports not). Dagster's own
step durations are recorded beside them.

Why `--days 150` and not 90: twelve weekly training as-of dates, each with
28 days of history before it and a 30-day label horizon after it, need at least
135 days of events. The event counts are the ones asked for; the customers are
fewer (events / ~135 per customer over 150 days).

Writes benchmarks/results/scale.json and prints the table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
END = datetime(2026, 11, 1, tzinfo=UTC)  # fixed, so every size simulates the same calendar
TOPIC = "scale-events"
PARTITIONS = 6
SEED = 7
INCREMENT_EVENTS = 100_000
INCREMENT_SEED = 8
# stages that make up the pipeline's end-to-end time
PIPELINE = ("extract", "features_latest", "features_range", "training_set", "model", "scores")
TARGET_SECONDS_10M = 600
TARGET_PEAK_MIB = 6 * 1024
TARGET_GROWTH = 1.3
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


# --- children: one stage, one process --------------------------------------------------


def _peaks() -> dict[str, int]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    return {"peak_rss_mib": own, "peak_rss_mib_children": children}


def _settings(bootstrap: str):
    from churn_platform.kafka.config import KafkaSettings

    return KafkaSettings(bootstrap_servers=bootstrap)


def _definitions(lake_root: str, bootstrap: str, first: date):
    import dagster as dg

    from churn_platform.defs.features.definitions import features_definitions
    from churn_platform.defs.ingestion.definitions import ingestion_definitions
    from churn_platform.defs.ml.assets import churn_champion, churn_model, training_set
    from churn_platform.defs.ml.definitions import ml_definitions
    from churn_platform.defs.resources.beam import BeamRunnerResource
    from churn_platform.defs.resources.churn import ChurnDefinitionResource
    from churn_platform.defs.resources.gate import GateResource
    from churn_platform.defs.resources.kafka import KafkaResource
    from churn_platform.defs.resources.lake import LakeResource

    partitions = dg.DailyPartitionsDefinition(
        start_date=first.isoformat(), timezone="UTC", end_offset=1
    )
    return dg.Definitions.merge(
        ingestion_definitions(),
        features_definitions(partitions=partitions),
        ml_definitions(partitions=partitions),
        dg.Definitions(
            jobs=[
                dg.define_asset_job("scale_training_set", selection=[training_set]),
                dg.define_asset_job(
                    "scale_model", selection=dg.AssetSelection.assets(churn_model, churn_champion)
                ),
            ],
            resources={
                "lake": LakeResource(root=lake_root),
                "beam": BeamRunnerResource(),
                "kafka": KafkaResource.from_settings(_settings(bootstrap), TOPIC),
                "churn": ChurnDefinitionResource(),
                "gate": GateResource(),
            },
        ),
    )


def _run_job(definitions, name: str, partition: str | None = None) -> dict[str, float]:
    """Run a job in process; returns Dagster's step durations (s) by step key."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    result = definitions.resolve_job_def(name).execute_in_process(
        instance=instance, partition_key=partition, run_config=QUIET, raise_on_error=False
    )
    if not result.success:
        raise RuntimeError(f"{name} ({partition}) failed: run {result.run_id}")
    failed = [c for c in result.get_asset_check_evaluations() if not c.passed]
    if failed:
        raise RuntimeError(f"{name} ({partition}): checks failed: {[c.check_name for c in failed]}")
    return {
        s.step_key: round(s.end_time - s.start_time, 2)
        for s in instance.get_run_step_stats(result.run_id)
        if s.end_time and s.start_time
    }


def stage_produce(args: dict) -> dict:
    from churn_platform.events.simulator import SimulatorConfig, produce_simulation

    config = SimulatorConfig(
        customers=args["customers"],
        days=args["days"],
        seed=args["seed"],
        end=datetime.fromisoformat(args["end"]),
    )
    started = time.perf_counter()
    summary = produce_simulation(_settings(args["bootstrap"]), TOPIC, config, partitions=PARTITIONS)
    return {
        "seconds": time.perf_counter() - started,
        "events": summary.messages_produced,
        "customers": summary.customers,
    }


def stage_raw_consume(args: dict) -> dict:
    from common import raw_consume

    n, seconds = raw_consume(_settings(args["bootstrap"]), TOPIC)
    return {"seconds": seconds, "events": n}


def stage_extract(args: dict) -> dict:
    import dagster as dg

    # the extract is not partitioned: any first as-of date will do before the lake has one
    first = date.fromisoformat(args.get("first") or "2020-01-01")
    definitions = _definitions(args["lake"], args["bootstrap"], first)
    started = time.perf_counter()
    result = definitions.resolve_job_def("raw_customer_events_job").execute_in_process(
        instance=dg.DagsterInstance.get(), run_config=QUIET, raise_on_error=False
    )
    seconds = time.perf_counter() - started
    if not result.success:
        raise RuntimeError(f"raw_customer_events_job failed: run {result.run_id}")
    meta = result.asset_materializations_for_node("raw_customer_events")[0].metadata
    return {
        "seconds": seconds,
        "events": meta["rows"].value if "rows" in meta else None,
        "messages": meta["messages"].value if "messages" in meta else None,
        "files_written": meta["files"].value if "files" in meta else None,
    }


def _features_job(args: dict, dates: list[date]) -> dict:
    definitions = _definitions(args["lake"], args["bootstrap"], date.fromisoformat(args["first"]))
    started = time.perf_counter()
    steps: dict[str, float] = {}
    for as_of in dates:
        for key, value in _run_job(definitions, "features_job", as_of.isoformat()).items():
            steps[key] = round(steps.get(key, 0.0) + value, 2)
    return {"seconds": time.perf_counter() - started, "dagster_steps_s": steps}


def stage_features_latest(args: dict) -> dict:
    from churn_platform.features.materialize import read_features
    from churn_platform.lake.store import Lake

    as_of = date.fromisoformat(args["as_of"])
    out = _features_job(args, [as_of])
    out["rows"] = read_features(Lake(args["lake"]), as_of, ["customer_id"]).height
    return out


def stage_polars_reference(args: dict) -> dict:
    from churn_platform.features.reference import reference_features
    from churn_platform.lake.store import Lake

    started = time.perf_counter()
    table = reference_features(Lake(args["lake"]), date.fromisoformat(args["as_of"]))
    return {"seconds": time.perf_counter() - started, "rows": table.height}


def stage_check_features(args: dict) -> dict:
    """The Beam table of the latest date equals the polars reference (outside the timings)."""
    from polars.testing import assert_frame_equal

    from churn_platform.features.materialize import read_features
    from churn_platform.features.reference import reference_features
    from churn_platform.lake.store import Lake

    lake = Lake(args["lake"])
    as_of = date.fromisoformat(args["as_of"])
    beam = read_features(lake, as_of).sort("customer_id")
    assert_frame_equal(beam, reference_features(lake, as_of).sort("customer_id"))
    return {"seconds": 0.0, "identical": True, "rows": beam.height}


def stage_features_range(args: dict) -> dict:
    """The training dates' features, checks and labels as `train` makes them: what
    training_set runs first (`ensure_inputs`: one Beam pass over the events for every
    date, then each date's checks and labels)."""
    from churn_platform.defs.resources.beam import BeamRunnerResource
    from churn_platform.lake.store import Lake
    from churn_platform.ml.training_set import ensure_inputs, training_dates

    lake = Lake(args["lake"])
    dates = training_dates(lake).dates
    checks: list[str] = []
    started = time.perf_counter()
    computed = ensure_inputs(
        lake,
        dates,
        engine="beam",
        runner=BeamRunnerResource().settings(),
        on_checked=lambda d, outcomes: checks.extend(
            n for n, o in outcomes.items() if not o.passed
        ),
    )
    seconds = time.perf_counter() - started
    if checks:
        raise RuntimeError(f"features_range: checks failed: {checks}")
    return {
        "seconds": seconds,
        "as_of_dates": [d.isoformat() for d in dates],
        "computed": len(computed),
    }


def _ml_job(args: dict, name: str, partition: str | None = None) -> dict:
    definitions = _definitions(args["lake"], args["bootstrap"], date.fromisoformat(args["first"]))
    started = time.perf_counter()
    steps = _run_job(definitions, name, partition)
    return {"seconds": time.perf_counter() - started, "dagster_steps_s": steps}


def stage_training_set(args: dict) -> dict:
    from churn_platform.lake.store import Lake
    from churn_platform.ml.training_set import read_training_set

    out = _ml_job(args, "scale_training_set")
    training = read_training_set(Lake(args["lake"]))
    out.update(rows=training.rows, features=len(training.features))
    return out


def stage_model(args: dict) -> dict:
    from churn_platform.lake.store import Lake
    from churn_platform.ml import registry

    out = _ml_job(args, "scale_model")
    lake = Lake(args["lake"])
    champion = registry.read_champion(lake)
    record = registry.read_record(lake, champion.version) if champion else None
    if record is not None:
        out.update(
            version=champion.version,
            holdout_roc_auc=round(record.evaluation.candidate.roc_auc, 4),
            baseline_roc_auc=round(record.evaluation.baseline.roc_auc, 4),
            fitted_rows=record.training.get("train_rows"),
            served_rows=record.training.get("served_rows"),
        )
    return out


def stage_scores(args: dict) -> dict:
    from churn_platform.lake.store import Lake
    from churn_platform.ml.score import read_scores

    out = _ml_job(args, "scoring_job", args["as_of"])
    out["customers_scored"] = read_scores(
        Lake(args["lake"]), date.fromisoformat(args["as_of"])
    ).height
    return out


STAGES = {
    "produce": stage_produce,
    "raw_consume": stage_raw_consume,
    "extract": stage_extract,
    "features_latest": stage_features_latest,
    "polars_reference": stage_polars_reference,
    "check_features": stage_check_features,
    "features_range": stage_features_range,
    "training_set": stage_training_set,
    "model": stage_model,
    "scores": stage_scores,
}


def child_main(stage: str, args_json: str) -> None:
    args = json.loads(args_json)
    out = STAGES[stage](args)
    print(json.dumps({**out, **_peaks()}, default=str))


# --- parent ------------------------------------------------------------------------------


def run_stage(stage: str, args: dict, env: dict[str, str]) -> dict:
    """Run one stage in a child process, sampling its process tree's memory (PSS) as it runs.

    A stage's peak memory is the larger of the child's own peak RSS and the
    highest sum of PSS over the child and its descendants (extract workers,
    Dagster's helpers) seen by sampling every 0.2 s; PSS splits shared pages
    between processes, so forked children are not counted twice.
    """
    import psutil

    command = [sys.executable, __file__, "--child", stage, json.dumps(args)]
    started = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_file, tempfile.TemporaryFile("w+") as err_file:
        process = subprocess.Popen(command, stdout=out_file, stderr=err_file, cwd=REPO, env=env)
        tree_peak = 0
        root = psutil.Process(process.pid)
        while process.poll() is None:
            total = 0
            with contextlib.suppress(psutil.NoSuchProcess):
                for member in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                        total += member.memory_full_info().pss
            tree_peak = max(tree_peak, total)
            time.sleep(0.2)
        out_file.seek(0)
        err_file.seek(0)
        stdout, stderr = out_file.read(), err_file.read()
    if process.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{stderr[-6000:]}")
    out = json.loads(stdout.strip().splitlines()[-1])
    out["process_s"] = round(time.perf_counter() - started, 2)
    out["seconds"] = round(out["seconds"], 2)
    out["peak_pss_mib_tree"] = tree_peak // 2**20
    out["peak_mib"] = max(out["peak_rss_mib"], out["peak_pss_mib_tree"])
    return out


def _broker_rss_mib(pid: int | None) -> int | None:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss // 2**20 if pid else None
    except Exception:
        return None


def bench_size(target_events: int, days: int, work: Path, per_customer: float) -> dict:
    from churn_platform.kafka.broker import EmbeddedBroker

    root = work / f"events-{target_events}"
    shutil.rmtree(root, ignore_errors=True)
    (root / "dagster").mkdir(parents=True)
    (root / "dagster" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    lake = str(root / "lake")
    env = {**os.environ, "DAGSTER_HOME": str(root / "dagster"), "CHURN_LAKE": lake}
    customers = max(100, round(target_events / per_customer))
    stages: dict[str, dict] = {}
    with EmbeddedBroker(log_path=root / "broker.log") as broker:
        base = {"bootstrap": broker.settings.bootstrap_servers, "lake": lake}

        def stage(name: str, **extra) -> dict:
            out = run_stage(name, {**base, **extra}, env)
            stages[name] = out
            line = f"  {name:<22} {out['seconds']:>8.1f} s  peak {out['peak_mib']:>6,} MiB"
            print(line, flush=True)
            return out

        produced = stage("produce", customers=customers, days=days, seed=SEED, end=END.isoformat())
        events = produced["events"]
        print(f"  {events:,} events from {produced['customers']:,} customers", flush=True)
        broker_after_produce = _broker_rss_mib(broker.pid)
        stage("raw_consume")
        stage("extract")

        from churn_platform.features.materialize import first_event_date
        from churn_platform.lake.store import Lake
        from churn_platform.ml.labels import complete_through

        first = first_event_date(Lake(lake))
        latest = complete_through(Lake(lake))
        dated = {"first": first.isoformat(), "as_of": latest.isoformat()}
        stage("features_latest", **dated)
        stage("polars_reference", **dated)
        stage("check_features", **dated)
        stage("features_range", **dated)
        stage("training_set", **dated)
        stage("model", **dated)
        stage("scores", **dated)

        # incremental: the next day's events for a slice of new customers
        increment_customers = max(100, round(INCREMENT_EVENTS / INCREMENT_PER_CUSTOMER))
        more = run_stage(
            "produce",
            {
                **base,
                "customers": increment_customers,
                "days": 1,
                "seed": INCREMENT_SEED,
                "end": (END + timedelta(days=1)).isoformat(),
            },
            env,
        )
        stages["incremental_produce"] = more
        stage_inc = run_stage("extract", base, env)
        stages["incremental_extract"] = stage_inc
        new_as_of = latest + timedelta(days=1)
        through = complete_through(Lake(lake))
        if through < new_as_of:
            raise RuntimeError(f"the increment did not complete {new_as_of} (through {through})")
        stages["incremental_features"] = run_stage(
            "features_latest",
            {**base, "first": first.isoformat(), "as_of": new_as_of.isoformat()},
            env,
        )
        for name in ("incremental_extract", "incremental_features"):
            out = stages[name]
            print(
                f"  {name:<22} {out['seconds']:>8.1f} s  peak {out['peak_rss_mib']:>6,} MiB",
                flush=True,
            )
        broker_peak = _broker_rss_mib(broker.pid)

    pipeline_s = sum(stages[s]["seconds"] for s in PIPELINE)
    peak = max(stages[s]["peak_mib"] for s in PIPELINE)
    return {
        "target_events": target_events,
        "events": events,
        "customers": produced["customers"],
        "days": days,
        "latest_as_of": latest.isoformat(),
        "increment_events": more["events"],
        "stages": stages,
        "pipeline_seconds": round(pipeline_s, 1),
        "pipeline_events_per_s": round(events / pipeline_s),
        "pipeline_peak_rss_mib": peak,
        "broker_rss_mib": {"after_produce": broker_after_produce, "at_end": broker_peak},
        "ratios": {
            "extract_to_raw_consume_throughput": round(
                stages["raw_consume"]["seconds"] / stages["extract"]["seconds"], 3
            ),
            "beam_to_polars_throughput": round(
                stages["polars_reference"]["seconds"]
                / stages["features_latest"]["dagster_steps_s"].get(
                    "customer_features", stages["features_latest"]["seconds"]
                ),
                3,
            ),
            "incremental_extract_to_full": round(
                stages["incremental_extract"]["seconds"] / stages["extract"]["seconds"], 3
            ),
            "incremental_features_to_full_rebuild": round(
                stages["incremental_features"]["seconds"]
                / (stages["features_range"]["seconds"] + stages["features_latest"]["seconds"]),
                3,
            ),
        },
    }


INCREMENT_PER_CUSTOMER = 2.0  # one new customer-day ≈ subscription_started + a day's activity


def growth(sizes: list[dict]) -> dict:
    """Per stage: time per event at the largest size ÷ time per event at the smallest."""
    small, large = sizes[0], sizes[-1]
    out = {}
    for name in (*PIPELINE, "raw_consume", "polars_reference"):
        a = small["stages"][name]["seconds"] / small["events"]
        b = large["stages"][name]["seconds"] / large["events"]
        out[name] = round(b / a, 3) if a else None
    out["pipeline"] = round(
        (large["pipeline_seconds"] / large["events"])
        / (small["pipeline_seconds"] / small["events"]),
        3,
    )
    return out


def table(sizes: list[dict]) -> str:
    head = "| stage | " + " | ".join(f"{s['events'] / 1e6:.1f}M events" for s in sizes) + " |"
    rows = [head, "|---|" + "---|" * len(sizes)]
    names = (
        "raw_consume",
        *PIPELINE[:2],
        "polars_reference",
        *PIPELINE[2:],
        "incremental_extract",
        "incremental_features",
    )
    for name in names:
        cells = []
        for s in sizes:
            st = s["stages"][name]
            cells.append(
                f"{st['seconds']:.1f} s · {s['events'] / st['seconds'] / 1e3:,.0f}k ev/s · "
                f"{st['peak_mib']:,} MiB"
            )
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    rows.append(
        "| **pipeline** | "
        + " | ".join(
            f"**{s['pipeline_seconds']:.0f} s** · {s['pipeline_events_per_s'] / 1e3:,.0f}k ev/s · "
            f"peak {s['pipeline_peak_rss_mib']:,} MiB"
            for s in sizes
        )
        + " |"
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,3000000,10000000")
    parser.add_argument("--days", type=int, default=150)
    parser.add_argument(
        "--per-customer",
        type=float,
        default=None,
        help="events per customer over --days (default: measured density)",
    )
    parser.add_argument("--work-dir", default=None, help="where lakes go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the lakes")
    parser.add_argument("--out", default=str(RESULTS / "scale.json"))
    args = parser.parse_args()

    sizes = [int(s) for s in args.sizes.split(",")]
    per_customer = args.per_customer or 135.0 * args.days / 150
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="churn-scale-"))
    load_before = os.getloadavg()
    results = []
    started = time.perf_counter()
    try:
        for target in sizes:
            print(f"{target:,} events ...", flush=True)
            results.append(bench_size(target, args.days, work, per_customer))
            r = results[-1]
            print(
                f"  pipeline {r['pipeline_seconds']:.1f} s, {r['pipeline_events_per_s']:,} events/s, "
                f"peak {r['pipeline_peak_rss_mib']:,} MiB; ratios {r['ratios']}",
                flush=True,
            )
            if not args.keep:
                shutil.rmtree(work / f"events-{target}", ignore_errors=True)
    finally:
        if not args.keep and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    largest = results[-1]
    grow = growth(results) if len(results) > 1 else {}
    report = {
        "benchmark": "scale",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}  cores={os.cpu_count()}",
        "load_average_1_5_15": {"start": load_before, "end": os.getloadavg()},
        "days": args.days,
        "sizes": results,
        "growth_time_per_event_largest_vs_smallest": grow,
        "targets": {
            "pipeline_seconds_at_10M": TARGET_SECONDS_10M,
            "peak_rss_mib": TARGET_PEAK_MIB,
            "growth_per_event": TARGET_GROWTH,
        },
        "targets_met": {
            "pipeline_under_10_min_at_largest": largest["pipeline_seconds"] < TARGET_SECONDS_10M,
            "peak_under_6_gib": all(r["pipeline_peak_rss_mib"] < TARGET_PEAK_MIB for r in results),
            "growth_within_1_3x": {k: v <= TARGET_GROWTH for k, v in grow.items() if v is not None},
        },
        "seconds": round(time.perf_counter() - started, 1),
        "table_markdown": table(results),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(report["table_markdown"])
    print("growth (time per event, largest ÷ smallest):", grow)
    print(f"wrote {out}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3])
    else:
        main()

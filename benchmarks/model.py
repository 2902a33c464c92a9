"""The churn model: training time, batch scoring rows/s, single-customer latency, same run.

    python benchmarks/model.py [--rounds 3] [--train-rows 100000] [--customers N]
        [--score-rows 100000] [--calls 2000] [--keep] [--work-dir DIR]

Simulates a business (160 days) into a fresh lake, materializes its feature
tables (polars) and labels at the default 12 weekly training dates and builds
the training set, as the `training_set` asset does; the lake is sized (and,
if short, given older dates) so that the rows the models are *fitted* on (the
time split's train dates, not the calibration, purged or holdout ones) are at
least `--train-rows`, over the full feature set. Then, each step in its own
process so every peak RSS is that step's alone:

* train, `--rounds` times: `train_models` as the `churn_model` asset calls it.
  Its own clocks give the candidate's (gradient boosting) fit + calibration
  and, as the reference, the logistic baseline's on the same rows; the whole
  call adds the split, the holdout scores and permutation importance. The
  first round saves its models with `registry.save_model`.
* batch scoring: `registry.load_model`, then, each round, `score_table` over a
  `--score-rows` feature table, the loaded model's `predict_proba` (model
  input + predict) on it, and the reference: the bare estimator's
  `predict_proba` on the model input made beforehand; `score_table` once
  more with `threadpoolctl.threadpool_limits(1)`.
* single customer: the loaded model's `predict_proba` on one-row feature
  tables, `--calls` customers per round after a warm-up, with the default
  thread pools and with `threadpoolctl.threadpool_limits(1)`; also the bare
  estimator on prepared one-row inputs, to show what the model input costs.

The scoring table stacks real feature tables of the latest training dates
(customer ids made unique per date), since one date has fewer customers.
Times cover the work, not interpreter start-up or imports. Writes
benchmarks/results/model.json: medians over the rounds, every round, ratios
and peak RSS. The lake lives in a temporary directory, removed afterwards
unless `--keep` (or `--work-dir`, which keeps and reuses it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

from common import result_header

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
END = datetime(2026, 6, 30, 12, tzinfo=UTC)  # fixed, so lakes are reproducible
DAYS = 160
SEED = 7
DATE_COUNT = 12  # training_set's default
# Fitted rows per simulated customer with 12 weekly dates over 160 days: 5 of
# the dates fit (2 holdout, 1 calibration, 4 purged), ~64% of customers active.
TRAIN_ROWS_PER_CUSTOMER = 3.1


# --- children: one step, one process --------------------------------------------------


def _peak_mib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def child_build(lake_root: str, customers: int, train_rows: int) -> dict:
    from churn_platform.lake.store import Lake
    from churn_platform.ml.train import TrainConfig, split_by_time
    from churn_platform.ml.training_set import (
        build_training_set,
        ensure_inputs,
        training_dates,
        write_training_set,
    )
    from churn_platform.testing.lakes import simulated_lake

    lake = Lake(lake_root)
    started = time.perf_counter()
    summary = simulated_lake(lake, customers=customers, days=DAYS, seed=SEED, end=END)
    simulate_s = time.perf_counter() - started
    started = time.perf_counter()
    count = DATE_COUNT
    while True:  # older dates only add fitted rows: the split takes the latest for the rest
        chosen = training_dates(lake, count=count).dates
        ensure_inputs(lake, chosen, engine="polars")
        training = build_training_set(lake, chosen)
        split = split_by_time(training.table, TrainConfig())
        if split.train.height >= train_rows or len(chosen) < count:
            break
        count += 1
    write_training_set(lake, training)
    return {
        "events": summary.events,
        "customers": summary.customers,
        "raw_files": summary.files,
        "simulate_s": simulate_s,
        "features_labels_training_set_s": time.perf_counter() - started,
        "dates": [d.isoformat() for d in training.dates],
        "training_set_rows": training.rows,
        "churned": training.positives,
        "features": training.features,
        "split": split.describe(),
        "peak_rss_mib": _peak_mib(),
    }


def child_train(lake_root: str, save: bool) -> dict:
    from churn_platform.lake.store import Lake
    from churn_platform.ml import registry
    from churn_platform.ml.train import TrainConfig, model_card, train_models
    from churn_platform.ml.training_set import read_training_set

    lake = Lake(lake_root)
    training = read_training_set(lake)
    loaded_mib = _peak_mib()
    started = time.perf_counter()
    trained = train_models(training.table, training.features, TrainConfig())
    total = time.perf_counter() - started
    out = {
        "train_models_s": total,
        **{f"{k}_s": v for k, v in trained.seconds.items()},
        "rows_fitted": trained.split.train.height,
        "calibration_rows": trained.split.calibration.height,
        "holdout_rows": trained.split.holdout.height,
        "features": len(trained.features),
        "holdout_roc_auc": {
            "candidate": trained.metrics.candidate.roc_auc,
            "baseline": trained.metrics.baseline.roc_auc,
        },
        "peak_rss_mib_after_reading_training_set": loaded_mib,
        "peak_rss_mib": _peak_mib(),
    }
    if save:  # as the churn_model asset does; the scoring children load this version
        version = registry.new_version()
        dates = training.dates
        data_range = f"{dates[0].isoformat()}..{dates[-1].isoformat()}"
        reasons = ["benchmark: not gated"]
        started = time.perf_counter()
        registry.save_model(
            lake,
            version,
            trained.candidate,
            baseline=trained.baseline,
            features=trained.features,
            metrics=trained.metrics,
            gate={"passed": True, "reasons": reasons},
            training={"data_range": data_range, **trained.split.describe()},
            card=model_card(version, trained, training.rows, data_range, reasons, True),
        )
        out["save_model_s"] = time.perf_counter() - started
        out["version"] = version
        model_file = f"{registry.version_dir(version)}/{registry.MODEL_FILES['model']}"
        out["model_file_bytes"] = len(lake.read_bytes(model_file))
    return out


def scoring_table(lake, dates: list[date], rows: int):
    """`rows` feature rows of the latest dates, one as-of date, customer ids unique."""
    import polars as pl

    from churn_platform.features.materialize import read_features

    frames, have = [], 0
    for as_of in sorted(dates, reverse=True):
        frame = read_features(lake, as_of)
        frames.append(frame.with_columns(pl.col("customer_id") + pl.lit(f"@{as_of.isoformat()}")))
        have += frame.height
        if have >= rows:
            break
    if have < rows:
        raise SystemExit(f"the lake holds {have} feature rows, fewer than {rows}: lower the rows")
    stacked = pl.concat(frames, how="diagonal_relaxed").head(rows)
    return stacked.with_columns(pl.lit(max(dates), pl.Date).alias("as_of"))


def child_score(lake_root: str, version: str, dates: list[date], rows: int, rounds: int):
    from threadpoolctl import threadpool_limits

    from churn_platform.lake.store import Lake
    from churn_platform.ml import registry
    from churn_platform.ml.frame import model_input
    from churn_platform.ml.score import RiskBands, score_table

    lake = Lake(lake_root)
    started = time.perf_counter()
    model = registry.load_model(lake, version)
    load_s = time.perf_counter() - started
    table = scoring_table(lake, dates, rows)
    as_of = max(dates)
    x = model_input(table, model.features)
    bands = RiskBands()
    score_table(model, table.head(1000), as_of, bands)  # warm-up
    runs: dict[str, list[float]] = {
        "score_table": [],
        "score_table_threads_1": [],
        "loaded_model": [],
        "raw_estimator": [],
    }
    for _ in range(rounds):
        started = time.perf_counter()
        scores = score_table(model, table, as_of, bands)
        runs["score_table"].append(time.perf_counter() - started)
        with threadpool_limits(limits=1):
            started = time.perf_counter()
            score_table(model, table, as_of, bands)
            runs["score_table_threads_1"].append(time.perf_counter() - started)
        started = time.perf_counter()
        loaded = model.predict_proba(table)
        runs["loaded_model"].append(time.perf_counter() - started)
        started = time.perf_counter()
        raw = model.estimator.predict_proba(x)
        runs["raw_estimator"].append(time.perf_counter() - started)
    assert scores.height == rows and (abs(loaded - raw[:, 1]) < 1e-12).all()
    return {
        "load_model_s": load_s,
        "rows": table.height,
        "runs_s": runs,
        "bands": dict(scores.group_by("risk_band").len().iter_rows()),
        "peak_rss_mib": _peak_mib(),
    }


def child_latency(lake_root: str, version: str, dates: list[date], calls: int, rounds: int):
    import contextlib

    import numpy as np
    from threadpoolctl import threadpool_info, threadpool_limits

    from churn_platform.lake.store import Lake
    from churn_platform.ml import registry
    from churn_platform.ml.frame import model_input

    lake = Lake(lake_root)
    model = registry.load_model(lake, version)
    table = scoring_table(lake, dates, calls)
    singles = [table.slice(i, 1) for i in range(table.height)]
    inputs = [model_input(one, model.features) for one in singles]
    warmup = max(50, calls // 10)

    def timed(call, items) -> list[float]:
        for item in items[:warmup]:
            call(item)
        ms = []
        for item in items:
            started = time.perf_counter_ns()
            call(item)
            ms.append((time.perf_counter_ns() - started) / 1e6)
        return ms

    def limits(mode: str):
        return threadpool_limits(limits=1) if mode == "threads_1" else contextlib.nullcontext()

    modes = ("default_threads", "threads_1")
    out: dict[str, dict] = {mode: {"loaded_model": [], "estimator_only": []} for mode in modes}
    threads = {}
    for round_number in range(rounds):
        for mode in modes if round_number % 2 == 0 else modes[::-1]:  # alternate who goes first
            with limits(mode):
                threads[mode] = sorted(
                    {f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()}
                )
                out[mode]["loaded_model"].append(timed(model.predict_proba, singles))
                out[mode]["estimator_only"].append(timed(model.estimator.predict_proba, inputs))

    def stats(ms: list[float]) -> dict:
        a = np.asarray(ms)
        return {
            "p50_ms": float(np.percentile(a, 50)),
            "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()),
            "max_ms": float(a.max()),
        }

    return {
        "calls_per_round": len(singles),
        "warmup_calls": warmup,
        "thread_pools": threads,
        "rounds": {
            mode: {path: [stats(r) for r in runs] for path, runs in paths.items()}
            for mode, paths in out.items()
        },
        "pooled": {
            mode: {path: stats([x for r in runs for x in r]) for path, runs in paths.items()}
            for mode, paths in out.items()
        },
        "peak_rss_mib": _peak_mib(),
    }


def child_main(args: list[str]) -> None:
    kind, lake_root, *rest = args
    if kind == "build":
        out = child_build(lake_root, int(rest[0]), int(rest[1]))
    elif kind == "train":
        out = child_train(lake_root, rest[0] == "save")
    else:
        version, dates = rest[0], [date.fromisoformat(d) for d in rest[1].split(",")]
        if kind == "score":
            out = child_score(lake_root, version, dates, int(rest[2]), int(rest[3]))
        else:
            out = child_latency(lake_root, version, dates, int(rest[2]), int(rest[3]))
    print(json.dumps(out))


# --- parent ------------------------------------------------------------------------------


LOADS: dict[str, list[float]] = {}  # 1-minute load average before each step


def run_child(*args: object) -> dict:
    LOADS.setdefault(str(args[0]), []).append(round(os.getloadavg()[0], 2))
    command = [sys.executable, __file__, "--child", *map(str, args)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def timing(seconds: list[float], rows: int | None = None) -> dict:
    median = statistics.median(seconds)
    out = {
        "runs_s": [round(s, 3) for s in seconds],
        "median_s": round(median, 3),
        "best_s": round(min(seconds), 3),
    }
    if rows is not None:
        out["rows_per_s"] = round(rows / median)
    return out


def latency_summary(result: dict, mode: str, path: str) -> dict:
    rounds = result["rounds"][mode][path]
    return {
        "p50_ms": round(statistics.median(r["p50_ms"] for r in rounds), 3),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in rounds), 3),
        "mean_ms": round(statistics.median(r["mean_ms"] for r in rounds), 3),
        "p50_ms_per_round": [round(r["p50_ms"], 3) for r in rounds],
        "p99_ms_per_round": [round(r["p99_ms"], 3) for r in rounds],
        "mean_ms_per_round": [round(r["mean_ms"], 3) for r in rounds],
        "max_ms_per_round": [round(r["max_ms"], 3) for r in rounds],
        "pooled": {k: round(v, 3) for k, v in result["pooled"][mode][path].items()},
    }


def build(args, lake_root: Path) -> dict:
    marker = lake_root.parent / ".built.json"
    if marker.exists():
        built = json.loads(marker.read_text())
        print(f"reusing {lake_root}: {built['events']:,} events")
        return built
    shutil.rmtree(lake_root, ignore_errors=True)
    print(f"simulating {args.customers:,} customers x {DAYS} days into {lake_root} ...")
    built = run_child("build", lake_root, args.customers, args.train_rows)
    marker.write_text(json.dumps(built))
    print(
        f"built {built['events']:,} events in {built['simulate_s']:.0f} s; features, labels and "
        f"training set at {len(built['dates'])} dates in "
        f"{built['features_labels_training_set_s']:.0f} s: {built['training_set_rows']:,} rows "
        f"x {len(built['features'])} features, {built['split']['train_rows']:,} fitted"
    )
    return built


def bench(args, work: Path) -> dict:
    lake_root = work / "lake"
    built = build(args, lake_root)
    if built["split"]["train_rows"] < args.train_rows:
        print(f"WARNING: only {built['split']['train_rows']:,} fitted rows: raise --customers")
    trains = []
    for round_number in range(args.rounds):
        trains.append(run_child("train", lake_root, "save" if round_number == 0 else "no"))
        t = trains[-1]
        print(
            f"train round {round_number + 1}: candidate {t['candidate_fit_s']:.2f} s, baseline "
            f"{t['baseline_fit_s']:.2f} s, importance {t['importance_s']:.2f} s, "
            f"train_models {t['train_models_s']:.2f} s"
        )
    version = trains[0]["version"]
    dates = ",".join(built["dates"])
    scored = run_child("score", lake_root, version, dates, args.score_rows, args.rounds)
    rows = scored["rows"]
    print(
        "batch scoring: "
        + ", ".join(f"{k} {statistics.median(v):.3f} s" for k, v in scored["runs_s"].items())
    )
    latency = run_child("latency", lake_root, version, dates, args.calls, args.rounds)

    first = trains[0]
    candidate = [t["candidate_fit_s"] for t in trains]
    baseline = [t["baseline_fit_s"] for t in trains]
    training = {
        "rows_fitted": first["rows_fitted"],
        "calibration_rows": first["calibration_rows"],
        "holdout_rows": first["holdout_rows"],
        "features": first["features"],
        "candidate_fit_and_calibration": timing(candidate, first["rows_fitted"]),
        "baseline_fit_and_calibration": timing(baseline, first["rows_fitted"]),
        "ratio_candidate_to_baseline": round(
            statistics.median(candidate) / statistics.median(baseline), 2
        ),
        "ratio_per_round": [round(c / b, 2) for c, b in zip(candidate, baseline, strict=True)],
        "permutation_importance": timing([t["importance_s"] for t in trains]),
        "train_models_total": timing([t["train_models_s"] for t in trains]),
        "holdout_roc_auc": first["holdout_roc_auc"],
        "peak_rss_mib_after_reading_training_set": max(
            t["peak_rss_mib_after_reading_training_set"] for t in trains
        ),
        "peak_rss_mib": max(t["peak_rss_mib"] for t in trains),
    }
    runs = scored["runs_s"]
    batch = {
        "rows": rows,
        "score_table": timing(runs["score_table"], rows),
        "score_table_threads_1": timing(runs["score_table_threads_1"], rows),
        "loaded_model_predict_proba": timing(runs["loaded_model"], rows),
        "raw_estimator_predict_proba": timing(runs["raw_estimator"], rows),
        "ratio_score_table_to_raw": round(
            statistics.median(runs["raw_estimator"]) / statistics.median(runs["score_table"]), 3
        ),
        "ratio_per_round": [
            round(r / s, 3) for s, r in zip(runs["score_table"], runs["raw_estimator"], strict=True)
        ],
        "risk_bands": scored["bands"],
        "peak_rss_mib": scored["peak_rss_mib"],
    }
    single: dict = {
        "calls_per_round": latency["calls_per_round"],
        "warmup_calls_per_block": latency["warmup_calls"],
        "thread_pools": latency["thread_pools"],
    }
    for mode in ("default_threads", "threads_1"):
        single[mode] = {
            "loaded_model_predict_proba": latency_summary(latency, mode, "loaded_model"),
            "estimator_only_predict_proba": latency_summary(latency, mode, "estimator_only"),
        }
    default = single["default_threads"]["loaded_model_predict_proba"]
    limited = single["threads_1"]["loaded_model_predict_proba"]
    single["better"] = "threads_1" if limited["p50_ms"] < default["p50_ms"] else "default_threads"
    single["speedup_p50_threads_1"] = round(default["p50_ms"] / limited["p50_ms"], 2)
    single["speedup_p99_threads_1"] = round(default["p99_ms"] / limited["p99_ms"], 2)
    single["peak_rss_mib"] = latency["peak_rss_mib"]
    return {
        "data": {
            "events": built["events"],
            "customers": built["customers"],
            "days": DAYS,
            "raw_files": built["raw_files"],
            "as_of_dates": len(built["dates"]),
            "first_as_of": built["dates"][0],
            "last_as_of": built["dates"][-1],
            "training_set_rows": built["training_set_rows"],
            "churned": built["churned"],
            "features": len(built["features"]),
            "split": built["split"],
            "build_s": {
                "simulate": round(built["simulate_s"], 1),
                "features_labels_training_set": round(built["features_labels_training_set_s"], 1),
            },
            "build_peak_rss_mib": built["peak_rss_mib"],
        },
        "registry": {
            "version": version,
            "save_model_s": round(first["save_model_s"], 3),
            "load_model_s": round(scored["load_model_s"], 3),
            "model_file_bytes": first["model_file_bytes"],
        },
        "training": training,
        "batch_scoring": batch,
        "single_customer": single,
    }


def print_table(body: dict) -> None:
    t, b, s = body["training"], body["batch_scoring"], body["single_customer"]
    lines = [
        f"training: {t['rows_fitted']:,} rows x {t['features']} features (median of "
        f"{len(t['train_models_total']['runs_s'])})",
        f"  candidate fit+calibration  {t['candidate_fit_and_calibration']['median_s']:8.2f} s",
        f"  baseline fit+calibration   {t['baseline_fit_and_calibration']['median_s']:8.2f} s"
        f"   (candidate/baseline {t['ratio_candidate_to_baseline']})",
        f"  train_models (all)         {t['train_models_total']['median_s']:8.2f} s"
        f"   peak RSS {t['peak_rss_mib']} MiB",
        f"batch scoring: {b['rows']:,} rows",
        f"  score_table                {b['score_table']['rows_per_s']:>10,} rows/s",
        f"  score_table, threads_1     {b['score_table_threads_1']['rows_per_s']:>10,} rows/s",
        f"  LoadedModel.predict_proba  {b['loaded_model_predict_proba']['rows_per_s']:>10,} rows/s",
        f"  raw estimator              {b['raw_estimator_predict_proba']['rows_per_s']:>10,} rows/s"
        f"   (score_table/raw {b['ratio_score_table_to_raw']})",
        f"single customer ({s['calls_per_round']} calls/round)     p50 ms    p99 ms   mean ms",
    ]
    for mode in ("default_threads", "threads_1"):
        for path in ("loaded_model_predict_proba", "estimator_only_predict_proba"):
            r = s[mode][path]
            lines.append(
                f"  {mode:15} {path.split('_predict')[0]:14} {r['p50_ms']:9.3f} "
                f"{r['p99_ms']:9.3f} {r['mean_ms']:9.3f}"
            )
    lines.append(f"  better: {s['better']} (p50 speed-up x{s['speedup_p50_threads_1']})")
    print("\n".join(lines))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child_main(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train-rows", type=int, default=100_000, help="rows to fit, at least")
    parser.add_argument("--customers", type=int, default=None, help="default: from --train-rows")
    parser.add_argument("--score-rows", type=int, default=100_000)
    parser.add_argument("--calls", type=int, default=2000, help="single-customer calls a round")
    parser.add_argument("--keep", action="store_true", help="keep the temporary lake")
    parser.add_argument("--work-dir", default=None, help="keep (and reuse) the lake here")
    parser.add_argument("--output", default=str(RESULTS / "model.json"))
    parser.add_argument("--note", default="", help="recorded as is, e.g. what else ran")
    args = parser.parse_args()
    if args.customers is None:
        args.customers = math.ceil(args.train_rows / TRAIN_ROWS_PER_CUSTOMER / 1000) * 1000

    load_before = os.getloadavg()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-model-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = bench(args, work)
    finally:
        if args.keep or args.work_dir:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    import sklearn
    from threadpoolctl import threadpool_info

    header = result_header("model", args.note, load_before)
    header["load_average_1_5_15"]["1m_before_each_step"] = LOADS
    body = {
        **header,
        "versions": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "polars": __import__("polars").__version__,
            "numpy": __import__("numpy").__version__,
        },
        "default_thread_pools": sorted(
            {f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()}
        ),
        "parameters": {
            "rounds": args.rounds,
            "train_rows_target": args.train_rows,
            "customers": args.customers,
            "days": DAYS,
            "seed": SEED,
            "end": END.isoformat(),
            "score_rows": args.score_rows,
            "single_customer_calls": args.calls,
            "train_config": "TrainConfig() defaults (churn_model's)",
        },
        **result,
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(body, indent=2) + "\n")
    print_table(body)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

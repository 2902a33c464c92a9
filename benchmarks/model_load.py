"""Loading the champion in a fresh process: where `registry.load_champion`'s seconds go.

    python benchmarks/model_load.py [--rounds 5] [--customers 2000] [--keep] [--work-dir DIR]

Simulates a business (160 days), trains on it and registers a served model as
`churn_model` does (`train.fit_served`: the calibrated gradient boosting, 150
trees of depth 4; a model file's size depends on its trees, not on the rows)
and promotes it. Then, `--rounds` times, alternating, each in a new process
as every Dagster run is:

* `cold`: `registry.load_champion` timed from the first call, imports included
  (what a `python -c` pays);
* `arrays` and `arrays_in_run`: `registry.load_champion(lake, lazy_estimator=True)`,
  which scores from the version's `model.npz` without scikit-learn or skops, as
  `churn_scores` does (`cold` and `cold_in_run` load the same champion with its
  skops object); each then scores 1,000 rows;
* `phases` and `phases_in_run`: the same call split into what it does in turn:
  import scikit-learn (`sklearn.base`), import the modules of the model's
  classes, import `skops.io`, then the load itself (champion and manifest
  files, sha256, skops' schema, audit and construction, the record files).
  `phases_in_code_location` first imports the code location
  (`churn_platform.definitions`), as every run's process does before its
  first step; `phases_in_run` also Beam, which today's features imported
  before the scores in the scoring run's process. `skops.io` builds its
  default trusted-type list at import, looking each scipy ufunc's module up
  by scanning every loaded module, so its import costs more in a process
  with more modules.

And, in one process with everything imported, the load alone, one skops pass
(`skops.io.loads` with the trusted list, as `registry._load_trusted` does)
against two (`get_untrusted_types`, then `loads`, as it did), alternating.
Writes benchmarks/results/model_load.json: medians and every round. The lake
lives in a temporary directory, removed afterwards unless `--keep` (or
`--work-dir`, which keeps and reuses it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
END = datetime(2026, 6, 30, 12, tzinfo=UTC)  # fixed, so lakes are reproducible
CODE_LOCATION = ("churn_platform.definitions",)
RUN_MODULES = (*CODE_LOCATION, "apache_beam")
MODEL_MODULES = (
    "sklearn.calibration",
    "sklearn.pipeline",
    "sklearn.compose",
    "sklearn.ensemble",
    "sklearn.preprocessing",
    "sklearn.frozen",
)

# Run in a child: argv = lake, mode, modules to import first (comma-separated).
CHILD = """
import importlib, json, sys, time
lake_dir, mode, first = sys.argv[1], sys.argv[2], sys.argv[3]
for name in filter(None, first.split(",")):
    importlib.import_module(name)
from churn_platform.lake.store import Lake
from churn_platform.ml import registry
lake = Lake(lake_dir)
out = {"modules_before": len(sys.modules)}
clock = time.perf_counter()
def lap(name):
    global clock
    now = time.perf_counter()
    out[name] = round(now - clock, 4)
    clock = now
start = clock
if mode == "phases":
    import sklearn.base
    lap("import_sklearn")
    for name in MODEL_MODULES:
        importlib.import_module(name)
    lap("import_model_modules")
    import skops.io
    lap("import_skops_io")
model = registry.load_champion(lake, lazy_estimator=mode == "arrays")
lap("load" if mode == "phases" else "load_champion")
if mode != "phases":
    import polars as pl
    from churn_platform.ml.frame import categorical_features
    text = set(categorical_features(model.features, model.record.spec))
    frame = pl.DataFrame({f: ["x"] * 1000 if f in text else [1.0] * 1000 for f in model.features})
    model.predict_proba(frame)
    lap("score_1000_rows")
    out["imported_sklearn"] = "sklearn" in sys.modules
out["total"] = round(clock - start, 4)
print(json.dumps(out))
"""

# Run in a child: argv = lake, rounds.
PASSES = """
import glob, json, statistics, sys, time
import skops.io
from churn_platform.ml.registry import TRUSTED_TYPES
data = open(glob.glob(sys.argv[1] + "/models/churn/*/model.skops")[0], "rb").read()
trusted = list(TRUSTED_TYPES)
def two():
    assert not set(skops.io.get_untrusted_types(data=data)) - set(trusted)
    return skops.io.loads(data, trusted=trusted)
def one():
    return skops.io.loads(data, trusted=trusted)
one(); two()
times = {"two_passes": [], "one_pass": []}
for _ in range(int(sys.argv[2])):
    for name, fn in (("two_passes", two), ("one_pass", one)):
        t = time.perf_counter(); fn(); times[name].append(round(time.perf_counter() - t, 4))
print(json.dumps(times))
"""


def build(lake_dir: Path, customers: int) -> dict:
    """A lake whose champion is a served model as churn_model registers it."""
    from churn_platform.lake.store import Lake
    from churn_platform.ml import registry
    from churn_platform.ml.train import TrainConfig, fit_served, train_models
    from churn_platform.ml.training_set import build_training_set, ensure_inputs, training_dates
    from churn_platform.testing.lakes import simulated_lake

    lake = Lake(str(lake_dir))
    simulated_lake(lake, customers=customers, days=160, seed=11, end=END)
    dates = training_dates(lake)
    ensure_inputs(lake, dates.dates, engine="polars")
    training = build_training_set(lake, dates.dates)
    config = TrainConfig(importance_repeats=1, importance_rows=200)
    trained = train_models(training.table, training.features, config)
    served = fit_served(training.table, trained.features, config)
    version = registry.new_version()
    registry.save_model(
        lake,
        version,
        served.estimator,
        baseline=trained.baseline,
        evaluated=trained.candidate,
        features=trained.features,
        metrics=trained.metrics,
        gate={"passed": True, "reasons": []},
        training={"churn_definition": training.churn.to_dict(), **served.describe()},
        card="# benchmark model\n",
    )
    registry.promote(lake, version, reason="benchmark")
    classifier = served.estimator.calibrated_classifiers_[0].estimator.steps[-1][1]
    return {
        "version": version,
        "fitted_rows": served.rows,
        "trees": len(classifier._predictors),
        "nodes": sum(len(tree[0].nodes) for tree in classifier._predictors),
        "model_skops_bytes": (lake_dir / "models/churn" / version / "model.skops").stat().st_size,
        "model_npz_bytes": (lake_dir / "models/churn" / version / "model.npz").stat().st_size,
    }


def child(code: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def median(rows: list[dict], key: str) -> float:
    return round(statistics.median(row[key] for row in rows), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--work-dir", type=Path)
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="model-load-"))
    lake_dir = work / "lake"
    try:
        if (lake_dir / "models/churn/champion.json").exists():
            model = json.loads((work / "model.json").read_text())
        else:
            model = build(lake_dir, args.customers)
            (work / "model.json").write_text(json.dumps(model))
        print(f"champion {model}", flush=True)
        code = f"MODEL_MODULES = {MODEL_MODULES!r}\n{CHILD}"
        contexts = {
            "cold": ("cold", ()),
            "arrays": ("arrays", ()),
            "cold_in_run": ("cold", RUN_MODULES),
            "arrays_in_run": ("arrays", RUN_MODULES),
            "phases": ("phases", ()),
            "phases_in_code_location": ("phases", CODE_LOCATION),
            "phases_in_run": ("phases", RUN_MODULES),
        }
        runs: dict[str, list[dict]] = {name: [] for name in contexts}
        for round_ in range(args.rounds):
            for name, (mode, first) in contexts.items():
                runs[name].append(child(code, str(lake_dir), mode, ",".join(first)))
            print(f"round {round_ + 1}: " + json.dumps({k: v[-1] for k, v in runs.items()}))
        passes = child(PASSES, str(lake_dir), str(max(15, args.rounds)))
        phase_keys = ("import_sklearn", "import_model_modules", "import_skops_io", "load")
        result = {
            "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "load_average": os.getloadavg(),
            },
            "model": model,
            "rounds": args.rounds,
            "medians": {
                "cold_load_champion": median(runs["cold"], "load_champion"),
                **{
                    name: {k: median(runs[name], k) for k in ("load_champion", "score_1000_rows")}
                    for name in ("cold", "arrays", "cold_in_run", "arrays_in_run")
                },
                "arrays_imported_sklearn": any(
                    row["imported_sklearn"] for row in runs["arrays"] + runs["arrays_in_run"]
                ),
                "phases": {k: median(runs["phases"], k) for k in (*phase_keys, "total")},
                **{
                    name: {
                        k: median(runs[name], k) for k in ("modules_before", *phase_keys, "total")
                    }
                    for name in ("phases_in_code_location", "phases_in_run")
                },
                "load_two_passes": round(statistics.median(passes["two_passes"]), 4),
                "load_one_pass": round(statistics.median(passes["one_pass"]), 4),
            },
            "runs": runs,
            "passes": passes,
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "model_load.json").write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result["medians"], indent=2))
    finally:
        if not (args.keep or args.work_dir):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

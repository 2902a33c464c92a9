"""Reasons with every score: what they cost in batch and per micro-batch, and against `shap`.

    python benchmarks/reasons.py [--customers 12000] [--score-rows 90000] [--rounds 3]
        [--shap-rows 5000] [--note TEXT]

Simulates a business (160 days, seeded) into a temporary lake, materializes its
features and labels at the 12 weekly training dates, trains the candidate as
the `churn_model` asset does (`train_models`, a calibrated gradient boosting),
records the typical values, and then, in the same process and run:

* batch: `score_table` over `--score-rows` rows (feature tables of the latest
  dates stacked, ids made unique) without reasons, the reference, and with the
  champion's `Reasoner` (one walk down the trees for both the probabilities and
  the reasons); the ratio is the issue's "within 2×". Also its parts: finding
  the leaves, the contributions from them, and the model's `predict_proba`.
* micro-batch: a streaming batch of 5 customers as `ChampionWatcher.score_rows`
  scores it (matrix, leaves, probability), without and with `Reasoner.rows`
  on the same leaves, µs per call.
* shap (when installed: `pip install shap`): `shap.TreeExplainer` on the
  classifier (path-dependent TreeSHAP, the package's exact algorithm for trees)
  over `--shap-rows` rows of the same matrix: rows/s against this project's
  walk, each method's worst |base + Σ contributions − margin|, and how often
  the two name the same first reason and share the top 3.

Writes benchmarks/results/reasons.json with the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from common import result_header

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
END = datetime(2026, 6, 30, 12, tzinfo=UTC)


def timed(call, rounds: int) -> list[float]:
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return seconds


def bench(args, work: Path) -> dict:
    import numpy as np
    from model import scoring_table

    from churn_platform.lake.store import Lake
    from churn_platform.ml.estimators import small_batch_predictor
    from churn_platform.ml.frame import input_rows, model_input
    from churn_platform.ml.reasons import CONTRIBUTION_CHUNK_ROWS, Reasoner, typical_values
    from churn_platform.ml.score import RiskBands, score_table
    from churn_platform.ml.train import TrainConfig, train_models
    from churn_platform.ml.training_set import build_training_set, ensure_inputs, training_dates
    from churn_platform.testing.lakes import simulated_lake

    lake = Lake(str(work / "lake"))
    simulated_lake(lake, customers=args.customers, days=160, seed=7, end=END)
    dates = training_dates(lake)
    ensure_inputs(lake, dates.dates, engine="polars")
    training = build_training_set(lake, dates.dates)
    trained = train_models(
        training.table, training.features, TrainConfig(importance_repeats=1, importance_rows=500)
    )
    typical = typical_values(training.table, trained.features, training.spec)["values"]

    class Model:  # what score_table asks of the registry's LoadedModel
        version = "bench"
        features = trained.features

        @staticmethod
        def predict_proba(table):
            x = model_input(table, trained.features, training.spec)
            return trained.candidate.predict_proba(x)[:, 1]

    reasoner = Reasoner.build(trained.candidate, trained.features, training.spec, typical)
    assert reasoner is not None
    table = scoring_table(lake, dates.dates, args.score_rows)
    as_of = max(dates.dates)
    bands = RiskBands()
    score_table(Model, table.head(1000), as_of, bands, reasoner=reasoner)  # warm-up
    x = model_input(table, trained.features, training.spec)
    matrix = reasoner.predictor.matrix(x)
    # in the slices Reasoner.score_table works in
    slices = [
        matrix[i : i + CONTRIBUTION_CHUNK_ROWS]
        for i in range(0, len(matrix), CONTRIBUTION_CHUNK_ROWS)
    ]
    leaves = [reasoner.predictor.leaves(m) for m in slices]
    runs = {"without": [], "with": [], "leaves": [], "contributions": [], "predict_proba": []}
    for _ in range(args.rounds):
        runs["without"] += timed(lambda: score_table(Model, table, as_of, bands), 1)
        runs["with"] += timed(lambda: score_table(Model, table, as_of, bands, reasoner=reasoner), 1)
        runs["leaves"] += timed(lambda: [reasoner.predictor.leaves(m) for m in slices], 1)
        runs["contributions"] += timed(
            lambda: [reasoner.contributions(m, lv) for m, lv in zip(slices, leaves, strict=True)],
            1,
        )
        runs["predict_proba"] += timed(lambda: Model.predict_proba(table), 1)
    scores = score_table(Model, table, as_of, bands, reasoner=reasoner)
    ratio = statistics.median(runs["with"]) / statistics.median(runs["without"])
    print(
        f"batch {table.height:,} rows: without {statistics.median(runs['without']):.2f} s, "
        f"with reasons {statistics.median(runs['with']):.2f} s (×{ratio:.2f}); leaves "
        f"{statistics.median(runs['leaves']):.2f} s, contributions "
        f"{statistics.median(runs['contributions']):.2f} s, predict_proba "
        f"{statistics.median(runs['predict_proba']):.2f} s"
    )

    # a streaming micro-batch: five customers
    predictor = small_batch_predictor(trained.candidate, trained.features)
    rows = input_rows(x.head(5).to_dicts(), trained.features, training.spec)
    calls = 2000

    def score(with_reasons: bool):  # what ChampionWatcher.score_rows does
        matrix = predictor.matrix_rows(rows)
        leaves = predictor.leaves(matrix)
        predictor.probability(matrix, leaves)
        if with_reasons:
            reasoner.rows(rows, matrix, leaves)

    probability_s = timed(lambda: [score(False) for _ in range(calls)], 3)
    reasons_s = timed(lambda: [score(True) for _ in range(calls)], 3)
    micro = {
        "customers": len(rows),
        "probability_us_per_call": round(min(probability_s) / calls * 1e6, 1),
        "with_reasons_us_per_call": round(min(reasons_s) / calls * 1e6, 1),
    }
    print(
        f"micro-batch of 5: probability {micro['probability_us_per_call']} µs, "
        f"with reasons {micro['with_reasons_us_per_call']} µs"
    )

    classifier = predictor.classifier
    sample = matrix[: args.shap_rows]
    margin = classifier.decision_function(sample)

    def walk():
        return reasoner.contributions(sample, reasoner.predictor.leaves(sample))

    ours_s = timed(walk, args.rounds)
    ours = walk()
    ours_error = float(np.abs(reasoner.base + ours.sum(axis=1) - margin).max())
    comparison: dict = {
        "rows": len(sample),
        "walk": {
            "rows_per_s": round(len(sample) / statistics.median(ours_s)),
            "max_additivity_error": ours_error,
        },
    }
    try:
        import shap
    except ImportError:
        comparison["shap"] = "not installed (pip install shap) — not measured"
    else:
        explainer = shap.TreeExplainer(classifier)
        shap_s = timed(lambda: explainer.shap_values(sample, check_additivity=False), 1)
        values = np.asarray(explainer.shap_values(sample, check_additivity=False))
        base = float(np.ravel(explainer.expected_value)[0])
        # per explained feature: a category's one-hot columns add up
        index = {n: i for i, n in enumerate(reasoner.features)}
        to_feature = np.array([index[n] for n in reasoner.predictor.column_features()])
        grouped = np.zeros((len(sample), len(reasoner.features)))
        np.add.at(grouped.T, to_feature, values.T)
        shap_error = float(np.abs(base + values.sum(axis=1) - margin).max())
        top1 = float((grouped.argmax(axis=1) == ours.argmax(axis=1)).mean())
        ours_top = np.argsort(-ours, axis=1)[:, :3]
        shap_top = np.argsort(-grouped, axis=1)[:, :3]
        overlap = float(
            np.mean([len(set(a) & set(b)) / 3 for a, b in zip(ours_top, shap_top, strict=True)])
        )
        comparison["shap"] = {
            "version": shap.__version__,
            "algorithm": "TreeExplainer, tree_path_dependent",
            "rows_per_s": round(len(sample) / statistics.median(shap_s)),
            "max_additivity_error": shap_error,
        }
        comparison["walk_over_shap_speed"] = round(
            comparison["walk"]["rows_per_s"] / comparison["shap"]["rows_per_s"], 1
        )
        comparison["same_first_reason"] = round(top1, 3)
        comparison["top3_overlap"] = round(overlap, 3)
    print(json.dumps(comparison, indent=1))
    return {
        "rows": table.height,
        "trees": len(reasoner.contributions.trees.roots),
        "explained_features": len(reasoner.features),
        "batch_s": {k: [round(v, 4) for v in vs] for k, vs in runs.items()},
        "batch_median_s": {k: round(statistics.median(vs), 4) for k, vs in runs.items()},
        "ratio_with_reasons_to_without": round(ratio, 3),
        "ratio_per_round": [
            round(w / o, 3) for w, o in zip(runs["with"], runs["without"], strict=True)
        ],
        "scores_with_reasons_share": round(float((scores["reasons"].list.len() > 0).mean()), 4),
        "micro_batch": micro,
        "against_shap": comparison,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=12_000)
    parser.add_argument("--score-rows", type=int, default=90_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shap-rows", type=int, default=5000)
    parser.add_argument("--output", default=str(RESULTS / "reasons.json"))
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-reasons-"))
    try:
        result = bench(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    body = {
        **result_header("reasons", args.note, load_before),
        "parameters": vars(args),
        **result,
    }
    Path(args.output).write_text(json.dumps(body, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

"""Which features carry to other businesses: the same ablation on real purchases and the simulator.

    python benchmarks/feature_evidence.py

Data sets: CDNOW purchases (a CD retailer, 1997-98; churn = no purchase in
90 days) and the simulator's subscription business at two seeds (6,000
customers × 180 days; churn = a cancellation within 30 days). For each, the
feature table of `compute_features` at weekly as-of dates (the training
set's dates), labels from the raw events, the evaluation split of
`ml.train` (holdout = the latest 2 dates, dates whose horizon reaches into it
purged), then gradient boosting and the logistic baseline fitted on the train
dates with feature sets that differ in one family:

- `without long window`: today's features minus the 365-day measures
  (`events_365d`, `active_days_365d`, `activity_rate_vs_365d`): what the
  platform had before this ablation;
- `+ counts over 365 days`, `+ activity rate vs own year`: one family each;
- `all (current)`: what `compute_features` computes now;
- candidates left out: `+ account attributes` (channel and country from the
  subscription events), `+ type shares` (each type's share of the last 28 days'
  activity), `+ days since subscription start` (the latest start).

Holdout ROC AUC and PR AUC of each; benchmarks/results/feature_evidence.json.
The decision it supports is written in docs/own-data.md.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl

RESULTS = Path(__file__).parent / "results"
LONG_WINDOW = ["events_365d", "active_days_365d", "activity_rate_vs_365d"]
ACCOUNT = ["channel", "country"]


def cdnow_events() -> pl.DataFrame:
    from churn_platform.testing.public_data import cdnow_master_path

    lines = pl.read_csv(
        cdnow_master_path(), separator="\t", has_header=False, new_columns=["line"]
    )["line"]
    parts = lines.str.strip_chars().str.replace_all(r"\s+", " ").str.split(" ")
    table = pl.DataFrame({"p": parts}).slice(1)
    return table.with_row_index("i").select(
        pl.format("cd-{}", "i").alias("event_id"),
        pl.col("p").list.get(0).alias("customer_id"),
        pl.lit("purchase").alias("event_type"),
        pl.col("p")
        .list.get(1)
        .str.strptime(pl.Datetime("ms"), "%Y%m%d")
        .dt.replace_time_zone("UTC")
        .alias("ts"),
        pl.col("p").list.get(3).cast(pl.Float64).alias("value"),
        pl.lit(None, pl.String).alias("attributes"),
    )


def simulated_events(seed: int) -> pl.DataFrame:
    from churn_platform.events.simulator import SimulatorConfig, simulate

    config = SimulatorConfig(
        customers=6000, days=180, seed=seed, end=datetime(2026, 11, 1, tzinfo=UTC)
    )
    values = [m.value for m in simulate(config) if m.expected_reason is None]
    text = pl.Series("v", values, dtype=pl.Binary).cast(pl.String).to_frame()
    field = pl.col("v").str.json_path_match
    return text.select(
        field("$.event_id").alias("event_id"),
        field("$.customer_id").alias("customer_id"),
        field("$.event_type").alias("event_type"),
        field("$.ts").str.to_datetime(time_zone="UTC").dt.cast_time_unit("ms").alias("ts"),
        field("$.value").cast(pl.Float64).alias("value"),
        field("$.attributes").alias("attributes"),
    )


def table(events: pl.DataFrame, churn) -> tuple[pl.DataFrame, list[date]]:
    from churn_platform.features.definitions import as_of_end, compute_features
    from churn_platform.ml.labels import compute_labels
    from churn_platform.ml.training_set import SplitNeeds

    last = events["ts"].max().date() - timedelta(days=1)
    latest = last - timedelta(days=churn.horizon_days)
    count = SplitNeeds().default_count(churn.horizon_days, 7)
    dates = sorted(latest - timedelta(days=7 * i) for i in range(count))
    frames = []
    for as_of in dates:
        features = compute_features(events, as_of, churn=churn)
        labels = compute_labels(features["customer_id"], events, as_of, churn)
        end = as_of_end(as_of)
        past = events.filter(pl.col("ts") < end)
        starts = (
            past.filter(pl.col("event_type") == "subscription_started")
            .sort("ts")
            .group_by("customer_id")
            .agg(
                pl.col("attributes").last().str.json_path_match("$.channel").alias("channel"),
                pl.col("attributes").last().str.json_path_match("$.country").alias("country"),
                pl.col("ts").last().alias("_start"),
            )
            .with_columns(
                (pl.lit(as_of) - pl.col("_start").dt.date())
                .dt.total_days()
                .alias("days_since_subscription_start")
            )
            .drop("_start")
        )
        shares = [
            (pl.col(c) / pl.col("events_28d")).alias(c.replace("_count_28d", "_share_28d"))
            for c in features.columns
            if c.endswith("_count_28d")
        ]
        frames.append(
            features.with_columns(shares)
            .join(labels.select("customer_id", "churned"), on="customer_id")
            .join(starts, on="customer_id", how="left")
            .with_columns(pl.col(ACCOUNT).fill_null("unknown"))
        )
    return pl.concat(frames, how="diagonal_relaxed"), dates


class _WithAccount:
    """The spec a feature list implies, with the experiment's account attributes as categories."""

    def __init__(self, names: list[str]) -> None:
        from churn_platform.features.definitions import FeatureSpec

        self.spec = FeatureSpec.from_columns(names)

    def column(self, name: str):
        from churn_platform.features.definitions import FeatureColumn, Kind

        return FeatureColumn(name, Kind.CATEGORY) if name in ACCOUNT else self.spec.column(name)


def ablation(name: str, events: pl.DataFrame, churn) -> dict:
    from churn_platform.ml.estimators import build_estimator, positive_probability
    from churn_platform.ml.frame import model_input
    from churn_platform.ml.train import TrainConfig, split_by_time, usable_features

    started = time.perf_counter()
    rows, dates = table(events, churn)
    split = split_by_time(rows, TrainConfig(horizon_days=churn.horizon_days))
    train = pl.concat([split.train, split.calibration])
    current = [c for c in rows.columns if c in _current_columns(rows)]
    shares = [c for c in rows.columns if c.endswith("_share_28d")]
    base = [c for c in current if c not in LONG_WINDOW]
    sets = {
        "without long window": base,
        "+ counts over 365 days": base + ["events_365d", "active_days_365d"],
        "+ activity rate vs own year": base + ["activity_rate_vs_365d"],
        "all (current)": current,
        "+ account attributes": current + ACCOUNT,
        "+ type shares": current + shares,
        "+ days since subscription start": current + ["days_since_subscription_start"],
    }
    y = split.holdout["churned"].cast(pl.Int8).to_numpy()
    out = {}
    for label, features in sets.items():
        spec = _WithAccount(features)
        kept, _ = usable_features(train, features, spec)
        out[label] = {}
        for kind in ("gradient_boosting", "logistic_regression"):
            model = build_estimator(kind, kept, 42, spec=spec).fit(
                model_input(train, kept, spec), train["churned"].cast(pl.Int8).to_numpy()
            )
            p = positive_probability(model, model_input(split.holdout, kept, spec))
            out[label][kind] = _scores(y, p)
    return {
        "data": name,
        "churn": churn.describe(),
        "dates": [dates[0].isoformat(), dates[-1].isoformat(), len(dates)],
        "train_rows": train.height,
        "holdout_rows": split.holdout.height,
        "holdout_churn_rate": round(float(y.mean()), 4),
        "results": out,
        "seconds": round(time.perf_counter() - started, 1),
    }


def _current_columns(rows: pl.DataFrame) -> list[str]:
    from churn_platform.features.definitions import FeatureSpec

    types = tuple(c.removesuffix("_count_7d") for c in rows.columns if c.endswith("_count_7d"))
    valued = tuple(t for t in types if f"{t}_value_sum_28d" in rows.columns)
    return FeatureSpec(types, valued).columns()


def _scores(y, p) -> dict:
    from sklearn.metrics import average_precision_score, roc_auc_score

    return {
        "roc_auc": round(float(roc_auc_score(y, p)), 4),
        "pr_auc": round(float(average_precision_score(y, p)), 4),
    }


def main() -> None:
    from threadpoolctl import threadpool_limits

    from churn_platform.features.churn import ChurnDefinition

    load_before = [round(x, 2) for x in os.getloadavg()]
    runs = []
    with threadpool_limits(1):
        runs.append(ablation("CDNOW", cdnow_events(), ChurnDefinition("inactivity", 90)))
        for seed in (42, 7):
            runs.append(
                ablation(f"simulator seed {seed}", simulated_events(seed), ChurnDefinition())
            )
    out = {
        "benchmark": "feature_evidence",
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_before": load_before,
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "runs": runs,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "feature_evidence.json").write_text(json.dumps(out, indent=2) + "\n")
    for run in runs:
        print(f"\n{run['data']} ({run['churn']}): holdout {run['holdout_rows']} rows")
        for label, result in run["results"].items():
            gb, lr = result["gradient_boosting"], result["logistic_regression"]
            print(f"  {label:34s} GB {gb['roc_auc']:.4f}  LR {lr['roc_auc']:.4f}")


if __name__ == "__main__":
    main()

"""Data no one here wrote, through the default path: CDNOW purchases to a champion and scores.

    python benchmarks/own_data.py [--rounds 1] [--engine beam]

CDNOW_master.txt (the `lifetimes` package's copy: 69,659 purchases of 23,570
customers of a CD retailer, 1997-01-01..1998-06-30; see
churn_platform/testing/public_data.py for how it is found) is replayed with
column mapping only into a fresh embedded broker, then the default path runs
as `churn-platform train` runs it (`runner.run_platform`: extract, features
and labels for the training dates with Beam, training set, gated model,
champion, scores) under the inactivity definition: churned = no purchase in
the 90 days after the as-of date. Each step's seconds come from its Dagster
run.

On the same holdout rows (the champion's evaluation split), the evaluated
champion is compared with the logistic baseline fitted on the same rows and
with two plain rules computed from the raw purchases, not from the
platform's features: recency (days since the last purchase) and a
recency-frequency score (quintiles of recency and of lifetime purchase count,
summed, the classic RF segmentation). ROC AUC, PR AUC and top-decile lift of
each, and the champion's difference to each with a 95% interval (bootstrap
over customers). References for speed, in the same run: a bare produce loop
of the same messages beside the replay, and the polars reference beside Beam
for the latest as-of date. Results: benchmarks/results/own_data.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import polars as pl

RESULTS = Path(__file__).parent / "results"
TOPIC = "customer-events"
CHURN = {"CHURN_DEFINITION": "inactivity", "CHURN_HORIZON_DAYS": "90"}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def replay_cdnow(settings, path: Path) -> dict:
    from churn_platform.events.replay import replay_file
    from churn_platform.testing.public_data import CDNOW_FILE_FORMAT, cdnow_mapping

    summary = replay_file(settings, TOPIC, path, cdnow_mapping(), **CDNOW_FILE_FORMAT, partitions=2)
    return summary.as_dict()


def produce_reference(settings, count: int) -> float:
    """A bare produce loop of `count` ~110-byte messages: what any replay must at least do."""
    from confluent_kafka import Producer

    from churn_platform.kafka.admin import ensure_topic
    from churn_platform.kafka.producer import THROUGHPUT_PRODUCER_CONFIG

    topic = "bench-produce-reference"
    ensure_topic(settings, topic, partitions=2)
    value = (
        b'{"event_id":"cdnow-0000000","customer_id":"00001","event_type":"purchase",'
        b'"ts":"1997-01-01T00:00:00Z","value":11.77}'
    )
    producer = Producer({**settings.client_config(), **THROUGHPUT_PRODUCER_CONFIG})
    started = time.perf_counter()
    for i in range(count):
        producer.produce(topic, value, str(i % 23570).encode())
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush()
    return time.perf_counter() - started


def purchases_before(raw: pl.DataFrame, rows: pl.DataFrame) -> pl.DataFrame:
    """Lifetime recency and frequency of each (customer, as_of) row, from the raw purchases."""
    from churn_platform.features.definitions import as_of_end

    out = []
    for (as_of,), group in rows.group_by("as_of"):
        seen = (
            raw.filter(pl.col("ts") < as_of_end(as_of))
            .group_by("customer_id")
            .agg(pl.len().alias("frequency"), pl.col("ts").max().alias("last"))
        )
        out.append(
            group.select("customer_id", "as_of")
            .join(seen, on="customer_id", how="left")
            .with_columns(
                (pl.lit(as_of) - pl.col("last").dt.date()).dt.total_days().alias("recency")
            )
        )
    return pl.concat(out)


def ranking_metrics(y: np.ndarray, score: np.ndarray) -> dict:
    """What a ranking is worth, for models and rules alike (rules have no probabilities)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from churn_platform.ml.train import top_decile

    lift, capture = top_decile(y, score)
    return {
        "roc_auc": round(float(roc_auc_score(y, score)), 4),
        "pr_auc": round(float(average_precision_score(y, score)), 4),
        "top_decile_lift": round(lift, 3),
        "top_decile_capture": round(capture, 4),
    }


def quintile(values: np.ndarray) -> np.ndarray:
    """1..5 by quintile of `values` (ties share a quintile)."""
    ranks = pl.Series(values).rank("average").to_numpy()
    return np.ceil(ranks / len(values) * 5).clip(1, 5)


def comparison(lake, version: str) -> dict:
    from churn_platform.lake.raw import read_raw_events
    from churn_platform.ml import registry
    from churn_platform.ml.gate import bootstrap_aucs
    from churn_platform.ml.train import evaluate
    from churn_platform.ml.training_set import read_training_set

    record = registry.read_record(lake, version)
    first, last = record.training["holdout_dates"].split("..")
    training = read_training_set(lake)
    holdout = training.table.filter(
        pl.col("as_of").is_between(date.fromisoformat(first), date.fromisoformat(last))
    ).sort("customer_id", "as_of")
    y = holdout["churned"].cast(pl.Int8).to_numpy()
    champion = registry.load_evaluated(lake, version).predict_proba(holdout)
    baseline = registry.load_model(lake, version, which="baseline").predict_proba(holdout)
    rf = purchases_before(read_raw_events(lake), holdout).sort("customer_id", "as_of")
    recency = rf["recency"].to_numpy().astype(float)
    frequency = rf["frequency"].to_numpy().astype(float)
    # higher = more likely to churn: long since the last purchase, few purchases
    rf_score = quintile(recency) + (6 - quintile(frequency))
    scores = {
        "champion (gradient boosting)": champion,
        "logistic baseline": baseline,
        "recency-frequency rule": rf_score,
        "recency rule": recency,
    }
    metrics = {name: ranking_metrics(y, s) for name, s in scores.items()}
    customers = holdout["customer_id"].to_numpy()
    samples = bootstrap_aucs(y, scores, customers, rounds=1000, seed=1)
    differences = {}
    for name in list(scores)[1:]:
        diff = samples["champion (gradient boosting)"] - samples[name]
        differences[f"champion - {name}"] = {
            "roc_auc": round(float(np.nanmean(diff)), 4),
            "interval_95": [round(float(q), 4) for q in np.nanquantile(diff, [0.025, 0.975])],
        }
    return {
        "holdout_dates": record.training["holdout_dates"],
        "holdout_rows": int(len(y)),
        "holdout_churn_rate": round(float(y.mean()), 4),
        "metrics": {
            name: {**m, **({"brier": evaluate(y, s).brier} if s.max() <= 1 else {})}
            for (name, m), s in zip(metrics.items(), scores.values(), strict=True)
        },
        "champion_minus": differences,
        "gate": record.gate.reasons,
        "dropped_features": record.training.get("dropped_features", {}),
    }


def features_reference(lake, as_of: date) -> dict:
    """Beam (the default engine) beside the polars reference for one as-of date."""
    from churn_platform.features.churn import ChurnDefinition
    from churn_platform.features.pipeline import run_feature_pipeline
    from churn_platform.features.reference import reference_features

    churn = ChurnDefinition("inactivity", 90)
    started = time.perf_counter()
    expected = reference_features(lake, as_of, churn=churn)
    polars_s = time.perf_counter() - started
    started = time.perf_counter()
    result = run_feature_pipeline(lake.uri, as_of, churn=churn)
    beam_s = time.perf_counter() - started
    return {
        "as_of": as_of.isoformat(),
        "rows": expected.height,
        "beam_rows": result.rows,
        "polars_s": round(polars_s, 2),
        "beam_s": round(beam_s, 2),
        "beam_over_polars_time": round(beam_s / polars_s, 2),
    }


def one_round(engine: str) -> dict:
    import dagster as dg

    from churn_platform.instance import prepare_dagster_home
    from churn_platform.kafka.broker import EmbeddedBroker
    from churn_platform.lake.store import Lake
    from churn_platform.runner import PathOptions, run_platform
    from churn_platform.testing.public_data import cdnow_master_path

    path = cdnow_master_path()
    result: dict = {"load_before": load()}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker() as broker:
        settings = broker.settings
        started = time.perf_counter()
        replayed = replay_cdnow(settings, path)
        replay_s = time.perf_counter() - started
        reference_s = produce_reference(settings, replayed["events_produced"])
        result["replay"] = {
            "rows": replayed["rows_read"],
            "customers": replayed.get("customers"),
            "seconds": round(replay_s, 2),
            "rows_per_second": round(replayed["rows_read"] / replay_s),
            "reference_produce_rows_per_second": round(replayed["events_produced"] / reference_s),
            "ratio_to_reference": round(reference_s / replay_s, 3),
        }
        lake = Lake(str(Path(tmp) / "lake"))
        home = prepare_dagster_home(Path(tmp) / "dagster")
        os.environ["DAGSTER_HOME"] = str(home)
        environ = {
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "CHURN_LAKE": lake.uri,
            "CHURN_EVENTS_TOPIC": TOPIC,
            **CHURN,
        }
        started = time.perf_counter()
        with dg.DagsterInstance.get() as instance:
            summary = run_platform(
                instance, environ=environ, options=PathOptions(engine=engine), log=print
            )
        path_s = time.perf_counter() - started
        runs = summary["runs"]

        def seconds(job: str) -> float:
            return round(sum(r["seconds"] for r in runs if r["job"] == job), 2)

        result["path"] = {
            "engine": engine,
            "seconds": round(path_s, 1),
            "extract_s": seconds("raw_customer_events_job"),
            "extract_messages_per_second": summary["extract_messages_per_second"],
            "features_s": seconds("features_job"),
            "features_dates": sum(r["job"] == "features_job" for r in runs),
            "training_s": seconds("training_job"),
            "scoring_s": seconds("scoring_job"),
            "training_rows": summary["training_rows"],
            "served_rows": summary["served_rows"],
            "training_as_of_dates": summary["training_as_of_dates"],
            "champion": summary["champion_version"],
            "customers_scored": summary["customers_scored"],
            "scores_as_of": summary["scores_as_of"],
            "risk_bands": summary["risk_bands"],
        }
        result["comparison"] = comparison(lake, summary["champion_version"])
        latest = date.fromisoformat(summary["scores_as_of"])
        result["features_reference"] = features_reference(lake, latest)
    result["load_after"] = load()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--engine", choices=("beam", "polars"), default="beam")
    args = parser.parse_args()
    rounds = []
    for i in range(args.rounds):
        print(f"round {i + 1}/{args.rounds} ...", flush=True)
        rounds.append(one_round(args.engine))
    out = {
        "benchmark": "own_data (CDNOW, inactivity: no purchase in 90 days)",
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "rounds": rounds,
    }
    RESULTS.mkdir(exist_ok=True)
    target = RESULTS / "own_data.json"
    target.write_text(json.dumps(out, indent=2) + "\n")
    last = rounds[-1]
    print(json.dumps({k: last[k] for k in ("replay", "path")}, indent=2))
    print(json.dumps(last["comparison"]["metrics"], indent=2))
    print(json.dumps(last["comparison"]["champion_minus"], indent=2))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

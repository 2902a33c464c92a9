"""The end-to-end demo: simulate → Kafka → extract → features → model → scores → summary.

Used by `churn-platform demo` (and so `make demo`) and by the end-to-end test.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import dagster as dg

from churn_platform.defs.ingestion.assets import raw_customer_events
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.events.contract import EVENTS_TOPIC
from churn_platform.events.simulator import SimulatorConfig, produce_simulation
from churn_platform.instance import prepare_dagster_home
from churn_platform.kafka.broker import EmbeddedBroker
from churn_platform.kafka.config import KafkaSettings
from churn_platform.lake.ledger import read_ledger
from churn_platform.lake.raw import committed_raw_files, read_quarantine, read_raw_events
from churn_platform.lake.store import Lake

DEMO_DIR = Path("var/demo")


def run_demo(
    sim: SimulatorConfig,
    *,
    settings: KafkaSettings | None = None,
    lake_root: str | None = None,
    topic: str = EVENTS_TOPIC,
    partitions: int = 6,
    instance: dg.DagsterInstance | None = None,
    progress: bool = False,
    log=print,
) -> dict:
    """Run the platform once; with no `settings`, on a fresh embedded broker and lake."""
    started = time.perf_counter()
    with ExitStack() as stack:
        if settings is None:
            if lake_root is None:
                shutil.rmtree(DEMO_DIR, ignore_errors=True)
                lake_root = str(DEMO_DIR / "lake")
            broker = stack.enter_context(EmbeddedBroker(log_path=DEMO_DIR / "broker.log"))
            settings = broker.settings
            log(f"started the embedded broker on {settings.bootstrap_servers}")
        lake = Lake(lake_root or os.environ.get("CHURN_LAKE") or "var/lake")
        log(f"lake: {lake.uri}")

        log(f"simulating {sim.customers} customers over {sim.days} days (seed {sim.seed}) ...")
        produced = produce_simulation(
            settings, topic, sim, partitions=partitions, progress=progress
        )
        log(
            f"produced {produced.messages_produced} messages "
            f"({produced.events_valid_produced} valid) in {produced.seconds:.1f} s"
        )

        log("materializing raw_customer_events with Dagster ...")
        if instance is None:
            instance = stack.enter_context(_instance())
        result = extract_events(lake, settings, topic, instance)
        metadata = result.asset_materializations_for_node("raw_customer_events")[0].metadata

        events = read_raw_events(lake, [topic])
        quarantine = read_quarantine(lake, [topic])
        ledger = read_ledger(lake, topic)
        files = committed_raw_files(lake, [topic])
        features = _model_pipeline(lake, settings, topic, instance, log)
        return {
            "bootstrap_servers": settings.bootstrap_servers,
            "topic": topic,
            "events_produced": produced.messages_produced,
            "events_valid_produced": produced.events_valid_produced,
            "bad_produced_by_reason": produced.bad_by_reason,
            "customers": produced.customers,
            "events_extracted": events.height,
            "events_quarantined": quarantine.height,
            "quarantined_by_reason": dict(
                sorted(quarantine.group_by("reason").len().iter_rows()) if quarantine.height else []
            ),
            "offsets": {str(p): o for p, o in sorted(ledger.offsets.items())},
            "extract_messages_per_second": metadata["messages_per_second"].value,
            "lake_root": lake.uri,
            "lake_files": len(files),
            "event_dates": len({f.path.split("/")[2] for f in files}),
            "dagster_run_id": result.run_id,
            **features,
            "seconds": round(time.perf_counter() - started, 2),
        }


QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def extract_events(
    lake: Lake, settings: KafkaSettings, topic: str, instance: dg.DagsterInstance
) -> dg.ExecuteInProcessResult:
    """Materialize raw_customer_events in this process (shared by `demo` and `up`)."""
    result = dg.materialize(
        [raw_customer_events],
        instance=instance,
        # the caller prints its own summary; Dagster's step-by-step log is in the UI
        run_config=QUIET,
        resources={
            "kafka": KafkaResource.from_settings(settings, topic),
            "lake": LakeResource(root=lake.uri),
        },
    )
    if not result.success:
        raise RuntimeError(
            f"the raw_customer_events run {result.run_id} failed; see its Dagster logs"
        )
    return result


def _model_pipeline(
    lake: Lake, settings: KafkaSettings, topic: str, instance: dg.DagsterInstance, log
) -> dict:
    """Features over the training range (Beam) → labels → training set → model → scores."""
    from churn_platform.defs.features.definitions import features_definitions
    from churn_platform.defs.ml.definitions import ml_definitions
    from churn_platform.defs.resources.beam import BeamRunnerResource
    from churn_platform.ml.labels import complete_through
    from churn_platform.ml.training_set import TrainingSetError, training_dates

    through = complete_through(lake)
    if through is None:
        return {}
    try:
        dates = training_dates(lake).dates
    except TrainingSetError as exc:
        log(f"no model: {exc}")
        dates = []
    partitions = dg.DailyPartitionsDefinition(
        start_date=min([*dates, through]).isoformat(), timezone="UTC", end_offset=0
    )
    from churn_platform.defs.resources.churn import ChurnDefinitionResource
    from churn_platform.defs.resources.gate import GateResource

    resources = {
        "lake": LakeResource(root=lake.uri),
        "beam": BeamRunnerResource(),
        "kafka": KafkaResource.from_settings(settings, topic),
        "churn": ChurnDefinitionResource.from_env(),
        "gate": GateResource.from_env(),
    }
    definitions = dg.Definitions.merge(
        features_definitions(partitions=partitions),
        ml_definitions(partitions),
        dg.Definitions(resources=resources),
    )
    summary: dict = {"checks_passed": 0, "checks_failed": 0}

    def run(job_name: str, partition: str | None = None) -> dg.ExecuteInProcessResult:
        outcome = definitions.resolve_job_def(job_name).execute_in_process(
            instance=instance, partition_key=partition, run_config=QUIET, raise_on_error=False
        )
        checks = outcome.get_asset_check_evaluations()
        summary["checks_passed"] += sum(c.passed for c in checks)
        summary["checks_failed"] += sum(not c.passed for c in checks)
        if not outcome.success:
            raise RuntimeError(f"the {job_name} run {outcome.run_id} failed; see its Dagster logs")
        return outcome

    as_of_dates = sorted({*dates, through})
    started = time.perf_counter()
    log(
        f"materializing customer_features (Beam) and churn_labels for {len(as_of_dates)} as-of "
        f"dates, {as_of_dates[0]} .. {as_of_dates[-1]} ..."
    )
    for as_of in as_of_dates:
        run("features_job", as_of.isoformat())
    summary["features_seconds"] = round(time.perf_counter() - started, 1)
    summary.update(_feature_summary(lake, through))
    if not dates:
        return summary

    log("materializing training_set → churn_model (gated) → churn_champion ...")
    training = run("training_job")
    summary.update(_model_summary(lake, training))
    if not summary["gate_passed"]:
        log("the candidate did not pass its gate: " + "; ".join(summary["gate_reasons"]))
        return summary

    log(f"materializing churn_scores as of {through} (lake and Kafka topic churn-scores) ...")
    scoring = run("scoring_job", through.isoformat())
    summary.update(_scores_summary(lake, through, scoring))
    return summary


def _feature_summary(lake: Lake, as_of) -> dict:
    from churn_platform.features.materialize import read_features

    table = read_features(lake, as_of)
    return {
        "features_as_of": as_of.isoformat(),
        "customers_with_features": table.height,
        "feature_count": table.width - 2,
    }


def _model_summary(lake: Lake, outcome: dg.ExecuteInProcessResult) -> dict:
    from churn_platform.ml import registry
    from churn_platform.ml.training_set import read_training_set

    materialized = outcome.asset_materializations_for_node("churn_model")
    version = materialized[0].metadata["version"].value
    record = registry.read_record(lake, version)
    champion = registry.read_champion(lake) or {}
    training = read_training_set(lake)
    candidate, baseline = record.metrics["candidate"], record.metrics["baseline"]
    return {
        "training_rows": training.rows,
        "training_as_of_dates": [d.isoformat() for d in training.dates],
        "training_churn_rate": round(training.positives / max(training.rows, 1), 4),
        "split": {k: v for k, v in record.training.items() if k.endswith(("_dates", "_rows"))},
        "candidate_version": version,
        "gate_passed": bool(record.gate["passed"]),
        "gate_reasons": list(record.gate["reasons"]),
        "champion_version": champion.get("version"),
        "champion_holdout_roc_auc": candidate["roc_auc"],
        "champion_holdout_pr_auc": candidate["pr_auc"],
        "champion_holdout_brier": candidate["brier"],
        "champion_top_decile_lift": candidate["top_decile_lift"],
        "champion_top_decile_capture": candidate["top_decile_capture"],
        "baseline_holdout_roc_auc": baseline["roc_auc"],
        "baseline_holdout_pr_auc": baseline["pr_auc"],
        "baseline_holdout_brier": baseline["brier"],
        "baseline_top_decile_lift": baseline["top_decile_lift"],
        "holdout_rows": candidate["rows"],
        "holdout_churn_rate": candidate["base_rate"],
    }


def _scores_summary(lake: Lake, as_of, outcome: dg.ExecuteInProcessResult) -> dict:
    from churn_platform.ml.score import read_scores, top_at_risk

    metadata = outcome.asset_materializations_for_node("churn_scores")[0].metadata
    scores = read_scores(lake, as_of)
    bands = {
        key.removeprefix("band_"): value.value
        for key, value in metadata.items()
        if key.startswith("band_")
    }
    top = top_at_risk(scores, 10)
    return {
        "scores_as_of": as_of.isoformat(),
        "customers_scored": scores.height,
        "scores_produced_to_kafka": metadata["produced_to_kafka"].value,
        "risk_bands": bands,
        "top_at_risk": [
            {
                "customer_id": row["customer_id"],
                "churn_probability": round(row["churn_probability"], 4),
                "risk_band": row["risk_band"],
            }
            for row in top.iter_rows(named=True)
        ],
    }


def _instance():
    """The project instance when DAGSTER_HOME is set (runs show in the UI), else a throwaway one."""
    if os.environ.get("DAGSTER_HOME"):
        from contextlib import nullcontext

        prepare_dagster_home()
        return nullcontext(dg.DagsterInstance.get())
    return dg.instance_for_test()


def format_summary(summary: dict) -> str:
    lines = [
        "",
        "Churn Platform demo",
        f"  Kafka                {summary['bootstrap_servers']}  topic {summary['topic']}",
        f"  events produced      {summary['events_produced']:>10,}  "
        f"({summary['events_valid_produced']:,} valid, {summary['customers']:,} customers)",
        f"  events extracted     {summary['events_extracted']:>10,}  "
        f"at {summary['extract_messages_per_second']:,.0f} messages/s",
        f"  events quarantined   {summary['events_quarantined']:>10,}  {summary['quarantined_by_reason']}",
        "  offsets (ledger)     " + ", ".join(f"p{p}={o}" for p, o in summary["offsets"].items()),
        f"  lake                 {summary['lake_root']}  "
        f"({summary['lake_files']} Parquet files over {summary['event_dates']} event dates)",
        f"  Dagster run          {summary['dagster_run_id']}",
        *_model_lines(summary),
        f"  took                 {summary['seconds']} s",
    ]
    return "\n".join(lines)


def _model_lines(summary: dict) -> list[str]:
    lines: list[str] = []
    if "features_as_of" in summary:
        lines.append(
            f"  features             {summary['customers_with_features']:,} active customers × "
            f"{summary['feature_count']} features as of {summary['features_as_of']} (Beam; "
            f"{summary['features_seconds']} s for all as-of dates)"
        )
    if "training_rows" in summary:
        dates = summary["training_as_of_dates"]
        lines += [
            f"  training set         {summary['training_rows']:,} rows over {len(dates)} as-of "
            f"dates {dates[0]} .. {dates[-1]}, {summary['training_churn_rate']:.1%} churned",
            f"  holdout              {summary['split'].get('holdout_dates')} "
            f"({summary['holdout_rows']:,} rows, {summary['holdout_churn_rate']:.1%} churned)",
            "                       ROC AUC  PR AUC  Brier    top-decile lift",
            f"  gradient boosting    {summary['champion_holdout_roc_auc']:.4f}   "
            f"{summary['champion_holdout_pr_auc']:.4f}  {summary['champion_holdout_brier']:.4f}   "
            f"{summary['champion_top_decile_lift']:.2f}",
            f"  logistic baseline    {summary['baseline_holdout_roc_auc']:.4f}   "
            f"{summary['baseline_holdout_pr_auc']:.4f}  {summary['baseline_holdout_brier']:.4f}   "
            f"{summary['baseline_top_decile_lift']:.2f}",
            f"  gate                 {'passed' if summary['gate_passed'] else 'FAILED'}: "
            + "; ".join(summary["gate_reasons"]),
            f"  champion             {summary['champion_version'] or '(none)'}",
        ]
    if "customers_scored" in summary:
        bands = ", ".join(f"{name} {count:,}" for name, count in summary["risk_bands"].items())
        lines += [
            f"  scores               {summary['customers_scored']:,} customers as of "
            f"{summary['scores_as_of']} ({bands}); {summary['scores_produced_to_kafka']:,} "
            "produced to churn-scores",
            "  most at risk         "
            + "\n                       ".join(
                f"{row['customer_id']}  {row['churn_probability']:.3f}  {row['risk_band']}"
                for row in summary["top_at_risk"]
            ),
        ]
    if "checks_passed" in summary:
        lines.append(
            f"  checks               {summary['checks_passed']} passed, "
            f"{summary['checks_failed']} failed"
        )
    return lines

"""The end-to-end demo: simulate → Kafka → Dagster materializes the lake → summary.

Used by `churn-platform demo` (and so `make demo`) and by the end-to-end test.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack
from datetime import timedelta
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
        result = dg.materialize(
            [raw_customer_events],
            instance=instance,
            # the demo prints its own summary; Dagster's step-by-step log is in the UI
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            resources={
                "kafka": KafkaResource.from_settings(settings, topic),
                "lake": LakeResource(root=lake.uri),
            },
        )
        if not result.success:
            raise RuntimeError("the raw_customer_events run failed; see the Dagster logs above")
        metadata = result.asset_materializations_for_node("raw_customer_events")[0].metadata

        events = read_raw_events(lake, [topic])
        quarantine = read_quarantine(lake, [topic])
        ledger = read_ledger(lake, topic)
        files = committed_raw_files(lake, [topic])
        features = _features_and_labels(lake, instance, log)
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


def _features_and_labels(lake: Lake, instance: dg.DagsterInstance, log) -> dict:
    """Features (Beam) for the latest complete as-of date and the latest labelable one."""
    from churn_platform.defs.features.definitions import features_definitions
    from churn_platform.defs.resources.beam import BeamRunnerResource
    from churn_platform.features.materialize import read_features
    from churn_platform.ml.labels import DEFAULT_HORIZON_DAYS, complete_through, read_labels

    through = complete_through(lake)
    if through is None:
        return {}
    latest = through
    labelable = through - timedelta(days=DEFAULT_HORIZON_DAYS)
    definitions = features_definitions(
        {"CHURN_LAKE": lake.uri, "CHURN_FEATURES_START_DATE": labelable.isoformat()}
    )
    resources = {"lake": LakeResource(root=lake.uri), "beam": BeamRunnerResource()}
    job = dg.Definitions.merge(definitions, dg.Definitions(resources=resources)).resolve_job_def(
        "features_job"
    )
    summary: dict = {}
    for as_of in sorted({labelable, latest}):
        log(f"materializing customer_features and churn_labels as of {as_of} (Beam) ...")
        outcome = job.execute_in_process(
            instance=instance,
            partition_key=as_of.isoformat(),
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            raise_on_error=False,
        )
        if not outcome.success:
            raise RuntimeError(f"the features run for {as_of} failed; see the Dagster logs above")
        checks = outcome.get_asset_check_evaluations()
        summary["checks_passed"] = summary.get("checks_passed", 0) + sum(c.passed for c in checks)
        summary["checks_failed"] = summary.get("checks_failed", 0) + sum(
            not c.passed for c in checks
        )
    table = read_features(lake, latest)
    labels = read_labels(lake, labelable)
    summary.update(
        {
            "features_as_of": latest.isoformat(),
            "customers_with_features": table.height,
            "feature_count": table.width - 2,
            "labels_as_of": labelable.isoformat(),
            "customers_labelled": labels.height,
            "churn_rate": round(float(labels["churned"].mean()), 4) if labels.height else None,
        }
    )
    return summary


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
        *(
            [
                f"  features             {summary['customers_with_features']:,} active customers × "
                f"{summary['feature_count']} features as of {summary['features_as_of']} (Beam)",
                f"  labels               {summary['customers_labelled']:,} customers as of "
                f"{summary['labels_as_of']}, {summary['churn_rate']:.1%} churned within 30 days",
                f"  checks               {summary['checks_passed']} passed, {summary['checks_failed']} failed",
            ]
            if "features_as_of" in summary
            else []
        ),
        f"  took                 {summary['seconds']} s",
    ]
    return "\n".join(lines)

"""The end-to-end demo: simulate → Kafka → the platform's own jobs (`runner`) → summary.

Used by `churn-platform demo` (and so `make demo`) and by the end-to-end test.
The simulator writes to the embedded broker the demo starts for itself (or to
the cluster `settings` name, into a topic of the demo's own); everything after
that is `runner.run_platform`, the path `churn-platform train` runs too.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import dagster as dg

from churn_platform.events.contract import EVENTS_TOPIC
from churn_platform.events.simulator import SimulatorConfig, produce_simulation
from churn_platform.instance import prepare_dagster_home
from churn_platform.kafka.broker import EmbeddedBroker
from churn_platform.kafka.config import KafkaSettings
from churn_platform.lake.raw import extracted_offsets, raw_files, read_quarantine, read_raw_events
from churn_platform.lake.store import Lake
from churn_platform.runner import PathOptions, run_platform, summary_lines

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
    options: PathOptions | None = None,
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
        if instance is None:
            instance = stack.enter_context(_instance())
        environ = {
            "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
            "CHURN_LAKE": lake.uri,
            "CHURN_EVENTS_TOPIC": topic,
        }
        path = run_platform(instance, environ=environ, options=options, log=log)

        events = read_raw_events(lake, [topic])
        quarantine = read_quarantine(lake, [topic])
        offsets = extracted_offsets(lake, topic)
        files = raw_files(lake)
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
            "offsets": {str(p): o for p, o in sorted(offsets.items())},
            "lake_files": len(files),
            "event_dates": len({f.partition["event_date"] for f in files}),
            **path,
            "seconds": round(time.perf_counter() - started, 2),
        }


def _instance():
    """The project's instance (DAGSTER_HOME, else var/dagster): the demo's runs show in the UI."""
    from contextlib import nullcontext

    prepare_dagster_home()
    os.environ.setdefault("DAGSTER_HOME", str(prepare_dagster_home()))
    return nullcontext(dg.DagsterInstance.get())


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
        "  offsets (lake)       " + ", ".join(f"p{p}={o}" for p, o in summary["offsets"].items()),
        f"  lake                 {summary['lake_root']}  "
        f"({summary['lake_files']} Parquet files over {summary['event_dates']} event dates)",
        *summary_lines(summary),
        f"  took                 {summary['seconds']} s",
    ]
    return "\n".join(lines)

"""`customer_events_sensor`: request an extract when the topic's watermarks move."""

import json

import dagster as dg

from churn_platform.defs.ingestion.assets import raw_customer_events_job
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.runs import job_in_progress
from churn_platform.ingestion.extract import ExtractConfig, format_lag
from churn_platform.kafka.admin import BrokerUnavailable, group_lag, high_watermarks
from churn_platform.kafka.config import KafkaSettings

LAG_TAG = "churn-platform/lag"
LAG_TOTAL_TAG = "churn-platform/lag-total"


def extract_in_progress(instance: dg.DagsterInstance) -> bool:
    return job_in_progress(instance, raw_customer_events_job.name)


def extract_lag(settings: KafkaSettings, topic: str, marks: dict[int, int]) -> dict[int, int]:
    """What the topic holds beyond what the extract committed (its consumer group mirrors the
    ledger); empty when the broker does not say."""
    try:
        return group_lag(settings, topic, ExtractConfig().group_id, marks)
    except BrokerUnavailable:
        return {}


@dg.sensor(
    job=raw_customer_events_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Compares customer-events watermarks with its cursor and requests an extract "
    "when they moved. It never consumes. Its messages and the run's tags give the lag per "
    "partition: high watermark − the extract's committed offset (the embedded broker's "
    "watermark trails by its last batch).",
)
def customer_events_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource):
    settings = kafka.settings()
    topic = kafka.events_topic
    try:
        marks = high_watermarks(settings, topic)
    except BrokerUnavailable as exc:
        return dg.SkipReason(f"Kafka at {settings.bootstrap_servers} is unreachable: {exc}")
    except KeyError:
        return dg.SkipReason(
            f"topic {topic!r} does not exist on {settings.bootstrap_servers} yet; waiting for events"
        )
    lag = extract_lag(settings, topic, marks)
    behind = f"lag behind the extract {format_lag(lag)}"
    seen = {int(p): o for p, o in json.loads(context.cursor).items()} if context.cursor else {}
    moved = {p: (seen.get(p), o) for p, o in marks.items() if seen.get(p) != o}
    if not moved:
        return dg.SkipReason(
            f"no new data in {topic!r} (high watermarks {dict(sorted(marks.items()))}); {behind}"
        )
    if extract_in_progress(context.instance):
        # keep the old cursor: the next tick after this run ends will see the change
        return dg.SkipReason(
            f"an extract run is already queued or running; will check again ({behind})"
        )
    context.update_cursor(json.dumps({str(p): o for p, o in sorted(marks.items())}))
    context.log.info(f"{topic!r} moved in partitions {sorted(moved)}: {behind}")
    return dg.RunRequest(
        tags={
            "churn-platform/trigger": "customer_events_sensor",
            LAG_TAG: format_lag(lag),
            LAG_TOTAL_TAG: str(sum(lag.values())) if lag else "unknown",
        },
    )

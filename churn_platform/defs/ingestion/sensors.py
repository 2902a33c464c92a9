"""`customer_events_sensor`: request an extract when the topic's watermarks move."""

import json

import dagster as dg

from churn_platform.defs.ingestion.assets import raw_customer_events_job
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.runs import job_in_progress
from churn_platform.kafka.admin import BrokerUnavailable, high_watermarks


def extract_in_progress(instance: dg.DagsterInstance) -> bool:
    return job_in_progress(instance, raw_customer_events_job.name)


@dg.sensor(
    job=raw_customer_events_job,
    minimum_interval_seconds=5,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Compares customer-events watermarks with its cursor and requests an extract "
    "when they moved. It never consumes.",
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
    seen = {int(p): o for p, o in json.loads(context.cursor).items()} if context.cursor else {}
    moved = {p: (seen.get(p), o) for p, o in marks.items() if seen.get(p) != o}
    if not moved:
        return dg.SkipReason(
            f"no new data in {topic!r} (high watermarks {dict(sorted(marks.items()))})"
        )
    if extract_in_progress(context.instance):
        # keep the old cursor: the next tick after this run ends will see the change
        return dg.SkipReason("an extract run is already queued or running; will check again")
    context.update_cursor(json.dumps({str(p): o for p, o in sorted(marks.items())}))
    return dg.RunRequest(
        tags={"churn-platform/trigger": "customer_events_sensor"},
    )

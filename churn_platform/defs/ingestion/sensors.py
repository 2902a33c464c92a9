"""`customer_events_sensor`: request an extract when the topic holds what the lake does not.

It asks two things each tick: did the topic's high watermarks move since the last
request (its cursor), and does the lake's ledger trail them (the lag)? New data
brings an extract at once. A backlog without new data, left by an extract that was
killed, failed or stopped at its cap, brings one too: at once after an extract that
made progress, else `RETRY_AFTER_S` after the last extract ended (a failing extract
is not relaunched every tick, and offsets that hold no data, such as an open
transaction's, cost one empty run per interval).
"""

from __future__ import annotations

import json
import time

import dagster as dg

from churn_platform.defs import tags
from churn_platform.defs.ingestion.assets import raw_customer_events, raw_customer_events_job
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.defs.runs import EVERY_DAEMON_LOOP_S, job_in_progress
from churn_platform.ingestion.extract import format_lag, lag_behind
from churn_platform.kafka.admin import BrokerUnavailable, high_watermarks
from churn_platform.lake.raw import extracted_offsets
from churn_platform.lake.store import LakeError

# a backlog no new data explains is retried this long after the last extract ended
RETRY_AFTER_S = 30.0
# the clock backlog retries are timed by (a test moves it)
wall_clock = time.time
FINISHED = [
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
]


def extract_in_progress(instance: dg.DagsterInstance) -> bool:
    return job_in_progress(instance, raw_customer_events_job.name)


def backlog_wait(instance: dg.DagsterInstance, now: float) -> str | None:
    """Why a backlog the last extract left should wait, or None to extract it now.

    The last extract is the later of the extract job's last finished run and the asset's
    last materialization (from any job: the UI's, a backfill's)."""
    last: list[tuple[float, str, str, int]] = []  # (ended, run id, status, messages read)
    records = instance.get_run_records(
        dg.RunsFilter(job_name=raw_customer_events_job.name, statuses=FINISHED), limit=1
    )
    if records and records[0].end_time is not None:
        run = records[0].dagster_run
        last.append((records[0].end_time, run.run_id, run.status.value, 0))
    event = instance.get_latest_materialization_event(raw_customer_events.key)
    if event is not None and event.asset_materialization is not None:
        read = event.asset_materialization.metadata.get("messages")
        messages = int(read.value) if read else 0
        # the run's own end, when that run is the job's last: the materialization comes first
        ended = next((e for e, r, _, _ in last if r == event.run_id), event.timestamp)
        last = [x for x in last if x[1] != event.run_id]
        last.append((ended, event.run_id, "SUCCESS", messages))
    if not last:
        return None
    ended, run_id, status, read = max(last)
    if status == "SUCCESS" and read:
        return None  # it made progress and stopped short (its cap, or data came meanwhile)
    retry_at = ended + RETRY_AFTER_S
    if now >= retry_at:
        return None
    return (
        f"the last extract (run {run_id[:8]}, {status}) left it; retrying in {retry_at - now:.0f} s"
    )


@dg.sensor(
    job=raw_customer_events_job,
    minimum_interval_seconds=EVERY_DAEMON_LOOP_S,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests an extract when customer-events holds messages the lake's ledger "
    "does not: at once when the topic's watermarks moved, and also when an extract was "
    "killed or failed (after 30 s). It never consumes. Its messages and the run's tags give "
    "the lag per partition: high watermark − the ledger's next offset (the embedded broker's "
    "watermark trails by its last batch).",
)
def customer_events_sensor(
    context: dg.SensorEvaluationContext, kafka: KafkaResource, lake: LakeResource
):
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
    try:
        offsets = extracted_offsets(lake.lake(), topic, marks)
    except (LakeError, OSError) as exc:
        return dg.SkipReason(f"the lake's offsets of {topic!r} cannot be read: {exc}")
    lag = lag_behind(marks, offsets)
    behind = f"lag behind the extract {format_lag(lag)}"
    seen = {int(p): o for p, o in json.loads(context.cursor).items()} if context.cursor else {}
    moved = {p: (seen.get(p), o) for p, o in marks.items() if seen.get(p) != o}
    if not moved and not any(lag.values()):
        return dg.SkipReason(
            f"no new data in {topic!r} (high watermarks {dict(sorted(marks.items()))}); {behind}"
        )
    if extract_in_progress(context.instance):
        # keep the old cursor: the next tick after this run ends will see the change
        return dg.SkipReason(
            f"an extract run is already queued or running; will check again ({behind})"
        )
    if moved:
        trigger = "new-data"
        context.log.info(f"{topic!r} moved in partitions {sorted(moved)}: {behind}")
    else:
        wait = backlog_wait(context.instance, wall_clock())
        if wait:
            return dg.SkipReason(f"no new data in {topic!r}, but a backlog: {wait} ({behind})")
        trigger = "backlog"
        context.log.info(f"{topic!r} has a backlog no new data explains: {behind}")
    context.update_cursor(json.dumps({str(p): o for p, o in sorted(marks.items())}))
    return dg.RunRequest(
        tags={
            tags.TRIGGER: "customer_events_sensor",
            tags.TRIGGER_REASON: trigger,
            tags.LAG: format_lag(lag),
            tags.LAG_TOTAL: str(sum(lag.values())) if lag else "unknown",
        },
    )

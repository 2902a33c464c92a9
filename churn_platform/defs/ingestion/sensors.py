"""`customer_events_sensor`: request an extract when the topic holds what the lake does not.

In the code location the extract carries today's features, checks, scores and drift
with it (`extract_and_follow_job`, one run) once the automation has scored today and no
run of today's partition is in progress: a second run would wait for the automation
sensor's next loop and a second process start, 5-10 s an event (docs/benchmarks.md,
Freshness). `any_deps_updated()` ignores an update made by a run that also targeted the
asset, so the automation does not request them again; until the automation has scored
today (no champion yet, a new day), and while a run of today is in progress, the extract
runs alone and the automation follows it.

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
from churn_platform.defs.ingestion.assets import (
    EXTRACT_TAGS,
    raw_customer_events,
    raw_customer_events_job,
)
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.defs.runs import ACTIVE_RUN_STATUSES, EVERY_DAEMON_LOOP_S, job_in_progress
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
SENSOR = "customer_events_sensor"
FOLLOW_JOB = "extract_and_follow_job"
EXTRACT_JOBS = (raw_customer_events_job.name, FOLLOW_JOB)  # the jobs that extract
# today's assets that the automation requests after an extract (their checks come along)
FOLLOWERS = tuple(dg.AssetKey(k) for k in ("customer_features", "churn_scores", "feature_drift"))
SCORES = dg.AssetKey("churn_scores")
FOLLOW_SELECTION = dg.AssetSelection.assets(raw_customer_events, *FOLLOWERS)


def extract_and_follow_job() -> dg.UnresolvedAssetJobDefinition:
    """The extract and today's followers in one run (resolved with the whole code location)."""
    return dg.define_asset_job(
        FOLLOW_JOB,
        selection=FOLLOW_SELECTION,
        tags=EXTRACT_TAGS,
        description="Extract new customer events, then today's features (the customers they "
        "touch), checks, scores and drift, in one run (customer_events_sensor).",
    )


def extract_in_progress(instance: dg.DagsterInstance) -> bool:
    """Is a run that extracts (alone or followed) queued, starting or running?"""
    return any(job_in_progress(instance, job) for job in EXTRACT_JOBS)


def follow_partition(
    instance: dg.DagsterInstance, partitions: dg.PartitionsDefinition
) -> str | None:
    """Today's partition when the extract should carry today's followers with it, else None.

    Only once today's scores exist (the automation's conditions, a champion among them,
    held for today) and while no run of today's partition is queued or running: two runs
    must never score today at once.
    """
    today = partitions.get_last_partition_key()
    if today is None:
        return None
    active = instance.get_runs(
        filters=dg.RunsFilter(tags={"dagster/partition": today}, statuses=ACTIVE_RUN_STATUSES),
        limit=1,
    )
    if active:
        return None
    scored = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=SCORES, asset_partitions=[today]), limit=1
    )
    return today if scored.records else None


def backlog_wait(instance: dg.DagsterInstance, now: float) -> str | None:
    """Why a backlog the last extract left should wait, or None to extract it now.

    The last extract is the later of the last finished run that extracts (alone or
    followed) and the asset's last materialization (from any job: the UI's, a backfill's)."""
    last: list[tuple[float, str, str, int]] = []  # (ended, run id, status, messages read)
    finished = [
        record
        for job in EXTRACT_JOBS
        for record in instance.get_run_records(
            dg.RunsFilter(job_name=job, statuses=FINISHED), limit=1
        )
    ]
    for record in finished:
        if record.end_time is not None:
            run = record.dagster_run
            last.append((record.end_time, run.run_id, run.status.value, 0))
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


DESCRIPTION = (
    "Requests an extract when customer-events holds messages the lake's ledger does not: at "
    "once when the topic's watermarks moved, and also when an extract was killed or failed "
    "(after 30 s). It never consumes. Its messages and the run's tags give the lag per "
    "partition: high watermark − the ledger's next offset (the embedded broker's watermark "
    "trails by its last batch)."
)


def build_customer_events_sensor(
    partitions: dg.PartitionsDefinition | None = None,
) -> dg.SensorDefinition:
    """The sensor; with `partitions` (today's as-of dates) it chains today's followers."""
    if partitions is None:
        targets: dict = {"job": raw_customer_events_job}
    else:
        targets = {"jobs": [raw_customer_events_job, extract_and_follow_job()]}

    @dg.sensor(
        name=SENSOR,
        minimum_interval_seconds=EVERY_DAEMON_LOOP_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=DESCRIPTION
        + (
            " It chains today's features, checks, scores and drift once today is scored."
            if partitions
            else ""
        ),
        **targets,
    )
    def customer_events_sensor(
        context: dg.SensorEvaluationContext, kafka: KafkaResource, lake: LakeResource
    ):
        return _evaluate(context, kafka, lake, partitions)

    return customer_events_sensor


def _evaluate(
    context: dg.SensorEvaluationContext,
    kafka: KafkaResource,
    lake: LakeResource,
    partitions: dg.PartitionsDefinition | None,
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
    request_tags = {
        tags.TRIGGER: SENSOR,
        tags.TRIGGER_REASON: trigger,
        tags.LAG: format_lag(lag),
        tags.LAG_TOTAL: str(sum(lag.values())) if lag else "unknown",
    }
    if partitions is None:
        return dg.RunRequest(tags=request_tags)
    today = follow_partition(context.instance, partitions)
    if today is None or context.repository_def is None:
        return dg.RunRequest(job_name=raw_customer_events_job.name, tags=request_tags)
    # named in full, as the automation's requests are: the run's selection is what tells the
    # automation that today's assets were updated with the extract, not after it
    graph = context.repository_def.asset_graph
    return dg.RunRequest(
        job_name=FOLLOW_JOB,
        partition_key=today,
        asset_selection=sorted(FOLLOW_SELECTION.resolve(graph)),
        asset_check_keys=sorted(FOLLOW_SELECTION.resolve_checks(graph)),
        tags={**request_tags, tags.FOLLOWS_EVENTS: "true"},
    )


customer_events_sensor = build_customer_events_sensor()

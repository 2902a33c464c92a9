"""Ingestion assets: the exactly-once extract of customer events into the lake."""

import dagster as dg

from churn_platform.defs import tags
from churn_platform.defs.progress import report
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.ingestion.extract import (
    PROGRESS_EVERY_S,
    ExtractConfig,
    extract_topic,
    format_lag,
)

EXTRACT_JOB = "raw_customer_events_job"
LAG_NOTE = (
    "lag: what the topic holds beyond the ledger after this run (high watermark − end). The "
    "embedded broker reports the last batch's base offset as the high watermark, so there it "
    "under-counts by up to that batch."
)
EXTRACT_POOL = "kafka_extract"
# every job that extracts carries it: dagster.yaml limits the runs with it to one at a time
EXTRACT_TAGS = {tags.EXTRACT_CONCURRENCY: "true"}
REJECTED_RATE_CHECK = "rejected_rate_below_threshold"


class ExtractRunConfig(dg.Config):
    """Run settings of an extract (all optional)."""

    max_messages_per_partition: int | None = None
    workers: int | None = None
    # rows, or their Arrow bytes, buffered per worker before a flush writes files
    # (None: the extract's defaults); fewer: less memory, more and smaller files
    flush_rows: int | None = None
    flush_bytes: int | None = None
    dead_letter_topic: str | None = None
    max_rejected_rate: float = 0.01
    progress_seconds: float = PROGRESS_EVERY_S  # at most one progress line this often


@dg.asset(
    group_name="ingestion",
    kinds={"kafka", "parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            REJECTED_RATE_CHECK,
            asset="raw_customer_events",
            blocking=True,
            description="Share of messages quarantined in this run is at most max_rejected_rate.",
        )
    ],
    # one extract at a time, however it is launched (sensor, UI, backfill):
    # dagster.yaml limits every pool to 1 slot
    pool=EXTRACT_POOL,
)
def raw_customer_events(
    context: dg.AssetExecutionContext,
    config: ExtractRunConfig,
    kafka: KafkaResource,
    lake: LakeResource,
):
    """Customer events extracted exactly once from Kafka into the Parquet lake, by event date."""
    result = extract_topic(
        kafka.settings(),
        lake.lake(),
        ExtractConfig.with_overrides(
            topic=kafka.events_topic,
            max_messages_per_partition=config.max_messages_per_partition,
            workers=config.workers,
            flush_rows=config.flush_rows,
            flush_bytes=config.flush_bytes,
            dead_letter_topic=config.dead_letter_topic,
        ),
        run_id=context.run_id[:12],
        progress=lambda update: report(context, update.describe()),
        progress_every_s=config.progress_seconds,
    )
    report(
        context,
        f"extracted {result.messages:,} messages in {result.seconds:.1f} s "
        f"({result.messages_per_second:,.0f}/s); lag after the run {format_lag(result.lag)}",
    )
    if result.group_commit_error:
        context.log.warning(
            f"consumer-group commit failed (the ledger is committed): {result.group_commit_error}"
        )
    lag, highs = result.lag, result.high_watermarks
    offsets = "\n".join(
        f"| {p} | {start} | {end} | {end - start} | {highs.get(p, '?')} | {lag.get(p, '?')} |"
        for p, (start, end) in result.offsets().items()
    )
    yield dg.MaterializeResult(
        metadata={
            "messages": result.messages,
            "rows": dg.MetadataValue.int(result.rows),
            "rejected": result.rejected,
            "rejected_rate": dg.MetadataValue.float(result.rejected_rate),
            "rejected_by_reason": dg.MetadataValue.json(result.rejected_by_reason),
            "offsets": dg.MetadataValue.md(
                "| partition | start | end | messages | high watermark | lag |\n"
                "|---:|---:|---:|---:|---:|---:|\n" + offsets + "\n\n" + LAG_NOTE
            ),
            # what the topic holds beyond the ledger once this run committed (plotted per run)
            "lag": dg.MetadataValue.int(sum(lag.values())) if lag else "unknown",
            "lag_by_partition": dg.MetadataValue.json({str(p): n for p, n in lag.items()}),
            "files": len(result.files),
            "bytes": result.bytes,
            "seconds": dg.MetadataValue.float(round(result.seconds, 3)),
            "messages_per_second": dg.MetadataValue.float(round(result.messages_per_second, 1)),
            "workers": result.workers,
            "lake": dg.MetadataValue.path(lake.lake().url("raw/customer_events")),
        }
    )
    yield dg.AssetCheckResult(
        check_name=REJECTED_RATE_CHECK,
        passed=result.rejected_rate <= config.max_rejected_rate,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "rejected_rate": dg.MetadataValue.float(result.rejected_rate),
            "max_rejected_rate": dg.MetadataValue.float(config.max_rejected_rate),
            "rejected_by_reason": dg.MetadataValue.json(result.rejected_by_reason),
        },
    )


raw_customer_events_job = dg.define_asset_job(
    EXTRACT_JOB,
    selection=[raw_customer_events],
    tags=EXTRACT_TAGS,
    description="Extract new customer events from Kafka into the lake.",
)

"""`lake_maintenance_job`: compact (and, when asked, vacuum) every lake table.

Wiring only: `churn_platform.lake.maintenance` does the work. The op names its
own pool, never the extract's (`kafka_extract`): maintenance commits alongside
the extract (Delta's optimistic concurrency), so it must not wait for it nor
make it wait; the pool keeps two maintenance runs from overlapping.
"""

import dagster as dg

from churn_platform.defs.resources.lake import LakeResource
from churn_platform.defs.runs import longest_run
from churn_platform.lake import maintenance

MAINTENANCE_POOL = "lake_maintenance"
MAINTENANCE_JOB = "lake_maintenance_job"


class LakeMaintenanceConfig(dg.Config):
    """What a maintenance run does (defaults: compact and vacuum every table)."""

    vacuum: bool = True
    # hours of history kept; None: CHURN_LAKE_RETENTION_HOURS, else 168 (a week)
    retention_hours: int | None = None
    tables: list[str] = []  # TableSpec names; empty: every table
    dry_run: bool = False


@dg.op(pool=MAINTENANCE_POOL)
def maintain_lake_tables(
    context: dg.OpExecutionContext, config: LakeMaintenanceConfig, lake: LakeResource
) -> dg.Output[list[dict]]:
    """Compact each lake table's partitions of many small files; vacuum what no commit needs."""
    try:
        specs = maintenance.find_tables(config.tables)
        hours = (
            maintenance.check_retention(config.retention_hours, name="retention_hours")
            if config.retention_hours is not None
            else maintenance.retention_from_env()
        )
        if config.vacuum:
            longest, run_id = longest_run(context.instance)
            maintenance.check_retention(
                hours, longest, name=f"{maintenance.RETENTION_ENV} (longest run: {run_id})"
            )
    except ValueError as exc:
        raise dg.Failure(description=str(exc)) from None
    done = maintenance.maintain(
        lake.lake(),
        specs,
        retention_hours=hours,
        vacuum_files=config.vacuum,
        dry_run=config.dry_run,
    )
    for line in maintenance.describe(done):
        context.log.info(line)
    rows = "\n".join(
        f"| {m.compaction.table} | {m.compaction.files_before} | {m.compaction.files_after} "
        f"| {m.compaction.bytes_before:,} | {m.compaction.bytes_after:,} "
        f"| {sum(not p.skipped for p in m.compaction.partitions)} "
        f"| {m.vacuum.removed_files if m.vacuum else '—'} | {m.compaction.seconds:.2f} |"
        for m in done
    )
    return dg.Output(
        [m.as_dict() for m in done],
        metadata={
            "tables": dg.MetadataValue.md(
                "| table | files before | files after | bytes before | bytes after "
                "| partitions compacted | files vacuumed | compaction s |\n"
                "|---|---:|---:|---:|---:|---:|---:|---:|\n" + rows
            ),
            "files_before": sum(m.compaction.files_before for m in done),
            "files_after": sum(m.compaction.files_after for m in done),
            "bytes_before": sum(m.compaction.bytes_before for m in done),
            "bytes_after": sum(m.compaction.bytes_after for m in done),
            "removed_files": sum(m.vacuum.removed_files for m in done if m.vacuum),
            "retention_hours": hours if config.vacuum else "no vacuum in this run",
            "dry_run": config.dry_run,
        },
    )


@dg.job(
    name=MAINTENANCE_JOB,
    description="Compact every lake table's small files; vacuum files and log entries older "
    "than the retention (CHURN_LAKE_RETENTION_HOURS, default a week).",
)
def lake_maintenance_job():
    maintain_lake_tables()

"""A simulated week of live traffic as sensor-sized extracts: how the lake grows with time.

    python benchmarks/lake_week.py [--customers 40000] [--days 7] [--extract-every-s 60]

A business's events over `--days` days (the project's simulator, in time
order, spread over 3 Kafka partitions by customer as the producer does) are
committed to a fresh lake the way a running platform commits them: one
extract every `--extract-every-s` seconds of event time, each through the
extract's own commit path (`lake.raw.append_rows`: data files per partition
and event date, then one Delta commit with the offsets). The platform's
maintenance runs as its schedule does: compaction every hour of event time,
vacuum once a day (`lake.maintenance`). Kafka is left out: this measures the
lake, not the broker, and a week of commits takes minutes instead of a week.

Per day: commits, data files written, files the table references at the end of
the day (all days, and that day's own partition), files on disk, log entries,
commit latency (p50 / p95) and compaction time. Then today's features (the
polars engine, `reference_features`, and the Beam pipeline) are timed on three
lakes holding the same rows: the live week after its maintenance, the live
week's data files never compacted (written the same way, referenced by one
commit), and the week extracted at once (one commit).
Vacuum cannot age files within the run (retention counts real hours), so the
on-disk count after a final vacuum with retention 0 is what a week's retention
leaves behind. Writes benchmarks/results/lake_week.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa

RESULTS = Path(__file__).parent / "results"
END = datetime(2026, 11, 22, tzinfo=UTC)  # fixed, so runs are comparable
PARTITIONS = 3
TOPIC = "customer-events"
FEATURE_ROUNDS = 3


def simulated_rows(customers: int, days: int, seed: int) -> pa.Table:
    """The simulator's valid events in time order, with partition and offset as Kafka gives."""
    from churn_platform.events.contract import RAW_EVENTS_SCHEMA
    from churn_platform.events.simulator import SimulatorConfig, simulate
    from churn_platform.events.validation import validate_batch

    config = SimulatorConfig(customers=customers, days=days, seed=seed, end=END)
    values = [m.value for m in simulate(config)]
    batch = validate_batch(values, now=int((END + timedelta(days=1)).timestamp() * 1000))
    frame = (
        pl.from_arrow(batch.events)
        .sort("ts", "event_id")
        .with_columns(
            pl.lit(TOPIC).alias("_topic"),
            (pl.col("customer_id").hash(seed=7) % PARTITIONS).cast(pl.Int32).alias("_partition"),
        )
        .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("_partition").alias("_offset"))
    )
    return frame.to_arrow().select(RAW_EVENTS_SCHEMA.names).cast(RAW_EVENTS_SCHEMA)


def files_on_disk(lake, spec) -> int:
    return len([p for p in lake.list_files(spec.name, ".parquet") if "/_delta_log/" not in p])


def log_entries(lake, spec) -> int:
    return len(lake.list_files(spec.log_dir))


def live_week(root: Path, rows: pa.Table, every_s: int, maintain: bool) -> dict:
    """Commit `rows` in extract-sized windows of event time; maintenance on its schedule."""
    from churn_platform.lake import maintenance, raw, tables
    from churn_platform.lake.store import Lake

    lake = Lake(root)
    spec = tables.RAW_EVENTS
    frame = pl.from_arrow(rows)
    start = frame["ts"].min().replace(minute=0, second=0, microsecond=0)
    window = pl.col("ts").dt.epoch("s") // every_s
    frame = frame.with_columns(window.alias("_window"))
    windows = frame.partition_by("_window", as_dict=True, maintain_order=True, include_key=False)
    days: dict[date, dict] = {}
    last_compaction_hour = None
    last_vacuum_day = None
    for key in sorted(windows):
        part = windows[key]
        at = datetime.fromtimestamp(key[0] * every_s, UTC)
        day = days.setdefault(
            at.date(),
            {"commits": 0, "rows": 0, "files_written": 0, "commit_ms": [], "compaction_s": 0.0},
        )
        began = time.perf_counter()
        written = part.select("_partition", "event_date").unique().height
        raw.append_rows(lake, TOPIC, part.to_arrow().cast(rows.schema))
        day["commit_ms"].append((time.perf_counter() - began) * 1000)
        day["commits"] += 1
        day["rows"] += part.height
        day["files_written"] += written
        hour = at.replace(minute=0, second=0, microsecond=0)
        if maintain and hour != last_compaction_hour and at > start + timedelta(hours=1):
            began = time.perf_counter()
            maintenance.compact(lake, spec)
            day["compaction_s"] += time.perf_counter() - began
            last_compaction_hour = hour
            if at.date() != last_vacuum_day and at.hour >= 4:
                maintenance.vacuum(lake, spec, tables.DEFAULT_RETENTION_HOURS)
                last_vacuum_day = at.date()
        if (
            key == max(windows)
            or datetime.fromtimestamp((key[0] + 1) * every_s, UTC).date() != at.date()
        ):
            referenced = tables.data_files(lake, spec)
            day["files_referenced"] = len(referenced)
            day["files_referenced_own_partition"] = sum(
                1 for f in referenced if f.partition["event_date"] == at.date().isoformat()
            )
            day["files_on_disk"] = files_on_disk(lake, spec)
            day["log_entries"] = log_entries(lake, spec)
    if maintain:  # the day's last compaction (the schedule runs every hour)
        maintenance.compact(lake, spec)
    summary = []
    for d, figures in sorted(days.items()):
        ms = figures.pop("commit_ms")
        summary.append(
            {
                "date": d.isoformat(),
                **figures,
                "commit_ms_p50": round(statistics.median(ms), 1),
                "commit_ms_p95": round(sorted(ms)[int(0.95 * (len(ms) - 1))], 1),
                "compaction_s": round(figures["compaction_s"], 2),
            }
        )
    return {"days": summary, "lake": lake}


def same_files_uncompacted(root: Path, rows: pa.Table, every_s: int) -> object:
    """The live week's data files (one per partition, event date and extract window),
    never compacted, referenced by one commit: the small-file cost without the long log."""
    from churn_platform.lake import raw, tables
    from churn_platform.lake.store import Lake

    lake = Lake(root)
    raw.ensure_tables(lake)
    frame = pl.from_arrow(rows).with_columns((pl.col("ts").dt.epoch("s") // every_s).alias("_w"))
    files = []
    for (_, partition, day), part in frame.group_by(
        ["_w", "_partition", "event_date"], maintain_order=True
    ):
        files.append(
            tables.write_file(
                lake,
                tables.RAW_EVENTS,
                part.drop("_w").to_arrow().cast(rows.schema),
                {"event_date": day},
                f"{TOPIC}-p{partition}",
            )
        )
    ends = dict(frame.group_by("_partition").agg(pl.col("_offset").max() + 1).iter_rows())
    raw.commit_extract(lake, TOPIC, {p: 0 for p in ends}, ends, files, [])
    assert tables.read_arrow(lake, tables.RAW_EVENTS, ["_offset"]).num_rows == rows.num_rows
    return lake


def at_once(root: Path, rows: pa.Table) -> object:
    from churn_platform.lake import raw
    from churn_platform.lake.store import Lake

    lake = Lake(root)
    raw.append_rows(lake, TOPIC, rows)
    return lake


def time_features(lake, as_of: date) -> dict:
    """Median seconds of today's features: the polars engine and the Beam pipeline."""
    from churn_platform.features.pipeline import run_feature_pipeline
    from churn_platform.features.reference import reference_features

    polars_s, beam_s = [], []
    rows = None
    for _ in range(FEATURE_ROUNDS):
        began = time.perf_counter()
        table = reference_features(lake, as_of)
        polars_s.append(time.perf_counter() - began)
        rows = table.height
        began = time.perf_counter()
        run_feature_pipeline(lake.uri, as_of)
        beam_s.append(time.perf_counter() - began)
    return {
        "rows": rows,
        "polars_s": round(statistics.median(polars_s), 3),
        "beam_s": round(statistics.median(beam_s), 3),
        "polars_runs_s": [round(s, 3) for s in polars_s],
        "beam_runs_s": [round(s, 3) for s in beam_s],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=40_000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--extract-every-s", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    from churn_platform.lake import maintenance, tables

    load_before = os.getloadavg()
    started = time.perf_counter()
    rows = simulated_rows(args.customers, args.days, args.seed)
    print(f"{rows.num_rows:,} events of {args.customers:,} customers over {args.days} days")
    work = Path(tempfile.mkdtemp(prefix="lake-week-"))
    try:
        live = live_week(work / "live", rows, args.extract_every_s, maintain=True)
        for d in live["days"]:
            print(
                f"{d['date']}: {d['commits']} commits, {d['files_written']} files written, "
                f"{d['files_referenced']} referenced ({d['files_referenced_own_partition']} of the "
                f"day's own partition), {d['files_on_disk']} on disk, {d['log_entries']} log "
                f"entries; commit p50 {d['commit_ms_p50']} ms p95 {d['commit_ms_p95']} ms; "
                f"compaction {d['compaction_s']} s"
            )
        plain = same_files_uncompacted(work / "plain", rows, args.extract_every_s)
        once = at_once(work / "once", rows)
        lake = live["lake"]
        spec = tables.RAW_EVENTS
        table = tables.open_table(lake, spec)
        kept_before = files_on_disk(lake, spec)
        table.vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False, full=True)
        after_retention = files_on_disk(lake, spec)
        as_of = (END - timedelta(days=1)).date()
        features = {
            "live_maintained": time_features(lake, as_of),
            "same_files_uncompacted": time_features(plain, as_of),
            "extracted_at_once": time_features(once, as_of),
        }
        for name, f in features.items():
            print(
                f"features as of {as_of} ({name}): polars {f['polars_s']} s, beam {f['beam_s']} s"
            )
        base = features["extracted_at_once"]
        result = {
            "benchmark": "a simulated week of live traffic as sensor-sized extracts (lake only)",
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "settings": {
                "customers": args.customers,
                "days": args.days,
                "extract_every_s": args.extract_every_s,
                "partitions": PARTITIONS,
                "compaction": "hourly (event time), partitions of > "
                f"{maintenance.MIN_SMALL_FILES} small files",
                "vacuum": f"daily, retention {tables.DEFAULT_RETENTION_HOURS} h",
            },
            "events": rows.num_rows,
            "days": live["days"],
            "files_uncompacted": len(tables.data_files(plain, spec)),
            "files_on_disk_end": kept_before,
            "files_on_disk_after_retention": after_retention,
            "features": features,
            "ratio_polars_live_vs_at_once": round(
                features["live_maintained"]["polars_s"] / base["polars_s"], 3
            ),
            "ratio_beam_live_vs_at_once": round(
                features["live_maintained"]["beam_s"] / base["beam_s"], 3
            ),
            "ratio_polars_uncompacted_vs_at_once": round(
                features["same_files_uncompacted"]["polars_s"] / base["polars_s"], 3
            ),
            "ratio_beam_uncompacted_vs_at_once": round(
                features["same_files_uncompacted"]["beam_s"] / base["beam_s"], 3
            ),
            "target_ratio": 1.2,
            "seconds": round(time.perf_counter() - started, 1),
        }
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "lake_week.json").write_text(json.dumps(result, indent=2) + "\n")
        print(
            f"today's features, live week after maintenance vs extracted at once: polars "
            f"{result['ratio_polars_live_vs_at_once']}x, beam {result['ratio_beam_live_vs_at_once']}x"
            f" (the same files never compacted: {result['ratio_polars_uncompacted_vs_at_once']}x / "
            f"{result['ratio_beam_uncompacted_vs_at_once']}x); target ≤ 1.2"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

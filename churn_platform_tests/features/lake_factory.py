"""Raw event lakes for feature tests and benchmarks, written without Kafka.

`write_events` lays a table of events out as the extract would (files per
event date and partition, named by offset range, then the ledger), so the
files count as committed. `simulated_lake` streams the simulator into a lake
in chunks, so a 10M-event lake holds one chunk in memory at a time.

`partition_by="event_id"` scatters each customer's events over every
partition (as a replay keyed by something other than the customer would),
which is what proves that feature sharding is by customer, not by file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pyarrow as pa

from churn_platform.events.contract import (
    EVENTS_TOPIC,
)
from churn_platform.events.simulator import SimulatorConfig, simulate
from churn_platform.events.validation import validate_batch
from churn_platform.features.definitions import EVENT_SCHEMA
from churn_platform.lake.raw import append_rows, extracted_offsets
from churn_platform.lake.store import Lake

DEFAULT_PARTITIONS = 6


@dataclass(frozen=True)
class LakeSummary:
    """What a factory call wrote."""

    events: int
    customers: int
    files: int


def event(
    event_id: str,
    customer_id: str,
    event_type: str,
    ts: datetime,
    value: float | None = None,
    attributes: str | None = None,
) -> dict:
    """One event row for `events_frame` (ts must be timezone-aware)."""
    return {
        "event_id": event_id,
        "customer_id": customer_id,
        "event_type": event_type,
        "ts": ts.astimezone(UTC),
        "value": value,
        "attributes": attributes,
    }


def events_frame(rows: Iterable[dict]) -> pl.DataFrame:
    """A frame of event rows in the lake's column types."""
    return pl.DataFrame(
        list(rows),
        schema=EVENT_SCHEMA,
    )


def write_events(
    lake: Lake,
    events: pl.DataFrame | pa.Table,
    *,
    topic: str = EVENTS_TOPIC,
    partitions: int = DEFAULT_PARTITIONS,
    partition_by: str = "customer_id",
    event_date: date | None = None,
) -> LakeSummary:
    """Append `events` (event_id, customer_id, event_type, ts, value, attributes) to the lake.

    Rows get a partition from a hash of `partition_by` and offsets after the
    topic's ledger; files are split by event date and partition; the ledger
    moves last, as in the real extract. `event_date` files every row under
    that date instead of its own (a misdated file, for guards against it).
    """
    frame = events if isinstance(events, pl.DataFrame) else pl.from_arrow(events)
    if frame.is_empty():
        return LakeSummary(0, 0, 0)
    offsets = extracted_offsets(lake, topic, range(partitions))
    frame = frame.select(
        "event_id",
        "customer_id",
        "event_type",
        pl.col("ts").cast(pl.Datetime("ms", "UTC")),
        pl.col("value").cast(pl.Float64),
        pl.col("attributes").cast(pl.String),
        (
            pl.col("ts").cast(pl.Datetime("ms", "UTC")).dt.date()
            if event_date is None
            else pl.lit(event_date, dtype=pl.Date)
        ).alias("event_date"),
        pl.lit(topic).alias("_topic"),
        (pl.col(partition_by).hash(seed=7) % partitions).cast(pl.Int32).alias("_partition"),
    )
    starts = pl.DataFrame(
        {
            "_partition": list(range(partitions)),
            "_start": [offsets[p] for p in range(partitions)],
        },
        schema={"_partition": pl.Int32, "_start": pl.Int64},
    )
    frame = (
        frame.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("_partition").alias("_n"))
        .join(starts, on="_partition", how="left")
        .with_columns((pl.col("_start") + pl.col("_n")).alias("_offset"))
        .drop("_n", "_start")
        .sort(["_partition", "event_date", "_offset"])
    )
    files = frame.select("_partition", "event_date").unique().height
    append_rows(lake, topic, frame.to_arrow())
    return LakeSummary(frame.height, frame["customer_id"].n_unique(), files)


def simulated_lake(
    lake: Lake,
    *,
    customers: int,
    days: int,
    seed: int = 7,
    end: datetime,
    chunk_events: int = 1_000_000,
    partitions: int = DEFAULT_PARTITIONS,
    partition_by: str = "customer_id",
    topic: str = EVENTS_TOPIC,
) -> LakeSummary:
    """Simulate a business ending at `end` and write its events to the lake, chunk by chunk."""
    config = SimulatorConfig(customers=customers, days=days, seed=seed, end=end)
    now = int((end + timedelta(days=1)).timestamp() * 1000)
    events = files = 0
    seen: set[str] = set()
    values: list[bytes] = []

    def flush() -> None:
        nonlocal events, files
        batch = validate_batch(values, now=now)
        if batch.rejects:  # the simulator's valid events must all pass
            raise AssertionError(f"simulated events rejected: {batch.rejects[:3]}")
        written = write_events(
            lake, batch.events, topic=topic, partitions=partitions, partition_by=partition_by
        )
        seen.update(batch.events.column("customer_id").unique().to_pylist())
        events += written.events
        files += written.files
        values.clear()

    for message in simulate(config):
        values.append(message.value)
        if len(values) >= chunk_events:
            flush()
    if values:
        flush()
    return LakeSummary(events, len(seen), files)


def replayed_catalogue(*, end: datetime, customers: int = 40, days: int = 100, seed: int = 3):
    """Events of a catalogue no one here chose, as a replayed data set would bring.

    Activity types `page_view` (value: seconds), `api_call` (value: latency,
    sometimes missing) and `export` (no value); a third of the customers have
    subscription events (started, some changed, some cancelled), the rest
    none; some customers go quiet for good; 3% of events are sent twice
    (same id and content, as a retry). Customer ids and event ids are
    strings unlike the simulator's. Deterministic for a seed.
    """
    rng = np.random.default_rng(seed)
    start = end - timedelta(days=days)
    rows: list[dict] = []
    n = 0

    def add(customer: str, kind: str, ts: datetime, value=None, attributes=None) -> None:
        nonlocal n
        n += 1
        rows.append(event(f"rp-{n:06d}", customer, kind, ts, value, attributes))
        if rng.random() < 0.03:  # a retry: the same event again
            rows.append(dict(rows[-1]))

    for c in range(customers):
        customer = f"acct-{c:04d}"
        first_day = int(rng.integers(0, days // 2))
        last_day = days if rng.random() > 0.25 else int(rng.integers(first_day, days))
        if c % 3 == 0:
            plan = "basic" if c % 2 else "pro"
            add(
                customer,
                "subscription_started",
                start + timedelta(days=first_day, minutes=5),
                attributes=json.dumps({"plan": plan, "mrr": 19.0 + c}),
            )
            if c % 2:
                add(
                    customer,
                    "subscription_changed",
                    start + timedelta(days=(first_day + last_day) // 2, hours=3),
                    attributes=json.dumps({"plan": "team", "mrr": 199.0}),
                )
            if last_day < days:
                add(
                    customer,
                    "subscription_cancelled",
                    start + timedelta(days=last_day, hours=20),
                    attributes=json.dumps({"reason": "voluntary"}),
                )
        rate = float(rng.gamma(2.0, 1.0))
        for day in range(first_day, last_day):
            for _ in range(int(rng.poisson(rate))):
                ts = start + timedelta(days=day, seconds=int(rng.integers(0, 86_400)))
                kind = ("page_view", "api_call", "export")[int(rng.choice(3, p=(0.6, 0.3, 0.1)))]
                value = None
                if kind == "page_view":
                    value = round(float(rng.exponential(40.0)), 3)
                elif kind == "api_call" and rng.random() < 0.8:
                    value = round(float(rng.exponential(0.2)), 4)
                add(customer, kind, ts, value)
    # the edges of the 90-day window of the last day, and the last instant of it
    add("acct-edge", "page_view", end - timedelta(days=90), 1.0)
    add("acct-edge", "api_call", end - timedelta(days=90, milliseconds=1), 2.0)
    add("acct-edge", "export", end - timedelta(milliseconds=1))
    return events_frame(rows)

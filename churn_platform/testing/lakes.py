"""Raw event lakes for tests and benchmarks, written without Kafka.

Events, one way each:

- `event(...)` is one event as a row (a dict in the lake's columns);
  `message(row)` is the same event as the JSON value a producer sends;
  `events_frame(rows)` is rows in the lake's column types.
- `write_events` lays a table of events out as the extract would (offsets
  after those the raw table holds, a file per event date and partition, one
  commit), so the rows count as extracted. `append_messages` validates
  message values first, as the extract does, then writes them the same way.
- `simulated_lake` streams the simulator into a lake in chunks, so a
  10M-event lake holds one chunk in memory at a time; `hand_built_lake` is six
  customers around `HAND_BUILT_AS_OF` whose labels are known by hand;
  `replayed_catalogue` is a catalogue of event types no one here chose.
- `ExtractLike` commits small raw-event files as the extract does (a file per
  Kafka partition and day, offsets in the commit), for tests of the lake's
  tables and maintenance, and holds back a running extract's file
  (`write_running`, `commit_running`); `orphan` leaves a file no commit
  references.

`partition_by="event_id"` scatters each customer's events over every
partition (as a replay keyed by something other than the customer would),
which is what proves that feature sharding is by customer, not by file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pyarrow as pa

from churn_platform.events.contract import EVENTS_TOPIC, RAW_EVENTS_SCHEMA
from churn_platform.events.simulator import SimulatorConfig, simulate
from churn_platform.events.validation import validate_batch
from churn_platform.features.definitions import EVENT_SCHEMA
from churn_platform.lake import tables
from churn_platform.lake.raw import append_rows, extracted_offsets
from churn_platform.lake.store import Lake
from churn_platform.lake.tables import DataFile

DEFAULT_PARTITIONS = 6


@dataclass(frozen=True)
class LakeSummary:
    """What a builder wrote."""

    events: int
    customers: int
    files: int


def event(
    event_id: str,
    customer_id: str,
    event_type: str,
    ts: datetime,
    value: float | None = None,
    attributes: str | dict | None = None,
) -> dict:
    """One event as a row for `events_frame` (ts must be timezone-aware; attributes as JSON)."""
    if isinstance(attributes, dict):
        attributes = json.dumps(attributes)
    return {
        "event_id": event_id,
        "customer_id": customer_id,
        "event_type": event_type,
        "ts": ts.astimezone(UTC),
        "value": value,
        "attributes": attributes,
    }


def message(row: dict) -> bytes:
    """An event row as the message value a producer sends (JSON, ts in ISO 8601 UTC)."""
    body: dict = {
        "event_id": row["event_id"],
        "customer_id": row["customer_id"],
        "event_type": row["event_type"],
        "ts": row["ts"].astimezone(UTC).isoformat().replace("+00:00", "Z"),
    }
    if row.get("value") is not None:
        body["value"] = row["value"]
    if row.get("attributes") is not None:
        body["attributes"] = json.loads(row["attributes"])
    return json.dumps(body).encode()


def _ms(ts: datetime) -> int:
    return int(ts.timestamp() * 1000)


def started(customer_id: str, ts: datetime, plan: str = "basic", mrr: float = 19.0) -> dict:
    """A subscription_started row (its id from customer, type and time)."""
    return event(
        f"{customer_id}-subscription_started-{_ms(ts)}",
        customer_id,
        "subscription_started",
        ts,
        attributes={"plan": plan, "mrr": mrr},
    )


def cancelled(customer_id: str, ts: datetime) -> dict:
    """A subscription_cancelled row (its id from customer, type and time)."""
    return event(
        f"{customer_id}-subscription_cancelled-{_ms(ts)}",
        customer_id,
        "subscription_cancelled",
        ts,
        attributes={"reason": "voluntary"},
    )


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
    topic's committed ones; files are split by event date and partition and
    committed with the new offsets in one commit, as in the real extract
    (`lake.raw.append_rows`). `event_date` files every row under
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


def append_messages(
    lake: Lake,
    values: Iterable[bytes],
    *,
    now: datetime,
    topic: str = EVENTS_TOPIC,
    partitions: int = 1,
) -> LakeSummary:
    """Validate message values as the extract does (at `now`) and write them with `write_events`.

    Every value must pass validation. One partition unless told otherwise.
    """
    batch = validate_batch(list(values), now=_ms(now))
    if batch.rejects:
        raise AssertionError(f"messages rejected: {batch.rejects[:3]}")
    return write_events(lake, batch.events, topic=topic, partitions=partitions)


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
    now = _ms(end + timedelta(days=1))
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


# --- the hand-built case: as-of 2024-03-01, a 30-day horizon ------------------------------

HAND_BUILT_AS_OF = date(2024, 3, 1)


def _at(day: str, hour: int = 9) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def _activity(customer_id: str, kind: str, ts: datetime, value: float | None = None) -> dict:
    return event(f"{customer_id}-{kind}-{_ms(ts)}", customer_id, kind, ts, value)


def hand_built_lake(lake: Lake) -> Lake:
    """Six customers around HAND_BUILT_AS_OF; the lake is complete through 2024-04-09.

    c_churn cancels at d+1 (churned), c_late at d+31 (not churned), c_gone on d
    itself (not active at d), c_stay never (not churned), c_quiet is active
    with no activity in 90 days, and c_activity has no lifecycle events but
    recent activity (active, not churned). Returns `lake`.
    """
    rows = [
        started("c_churn", _at("2024-01-05")),
        _activity("c_churn", "login", _at("2024-02-20")),
        cancelled("c_churn", _at("2024-03-02")),
        started("c_late", _at("2024-01-05"), plan="pro", mrr=99.0),
        _activity("c_late", "session", _at("2024-02-25"), value=300.0),
        cancelled("c_late", _at("2024-04-01")),
        started("c_gone", _at("2024-01-05")),
        _activity("c_gone", "login", _at("2024-02-28")),
        cancelled("c_gone", _at("2024-03-01", 12)),
        started("c_stay", _at("2024-01-06")),
        _activity("c_stay", "login", _at("2024-02-28")),
        _activity("c_stay", "login", _at("2024-04-10")),  # the lake's latest event date
        started("c_quiet", _at("2023-10-01")),
        _activity("c_activity", "login", _at("2024-02-27")),
    ]
    append_messages(lake, [message(row) for row in rows], now=_at("2024-04-11"))
    return lake


# --- extract-like commits of small raw-event files ----------------------------------------

FIRST_DAY = date(2026, 1, 1)


def raw_rows(partition: int, start: int, count: int, day: date) -> pa.Table:
    """`count` raw events of Kafka `partition` from offset `start`, all on `day`."""
    offsets = range(start, start + count)
    moment = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    return pa.table(
        {
            "event_id": [f"{partition}-{o}" for o in offsets],
            "customer_id": [f"c{o % 17}" for o in offsets],
            "event_type": ["login"] * count,
            "ts": pa.array([moment + timedelta(seconds=o) for o in offsets]),
            "value": [float(o) for o in offsets],
            "attributes": [None] * count,
            "event_date": [day] * count,
            "_topic": [EVENTS_TOPIC] * count,
            "_partition": pa.array([partition] * count, pa.int32()),
            "_offset": pa.array(offsets, pa.int64()),
        }
    ).cast(RAW_EVENTS_SCHEMA)


class ExtractLike:
    """Commits like the extract's: per Kafka partition and day one file, offsets in the commit."""

    def __init__(self, lake: Lake, partitions: int = 2) -> None:
        self.lake = lake
        self.next = dict.fromkeys(range(partitions), 0)
        tables.create(lake, tables.RAW_EVENTS, RAW_EVENTS_SCHEMA)

    def round(self, days: int = 2, per_file: int = 20) -> int:
        """One extract: a file per (partition, day), one commit; returns the new version."""
        files = []
        for p in self.next:
            for d in range(days):
                files.append(
                    tables.write_file(
                        self.lake,
                        tables.RAW_EVENTS,
                        raw_rows(p, self.next[p], per_file, FIRST_DAY + timedelta(days=d)),
                        {"event_date": FIRST_DAY + timedelta(days=d)},
                    )
                )
                self.next[p] += per_file
        return tables.commit(
            self.lake,
            tables.RAW_EVENTS,
            files,
            schema=RAW_EVENTS_SCHEMA,
            transactions={tables.offsets_app_id(EVENTS_TOPIC, p): n for p, n in self.next.items()},
        )

    def write_running(self, count: int, partition: int = 0, day: date = FIRST_DAY) -> DataFile:
        """The next `count` events of `partition` in a file, not committed: a running extract's."""
        return tables.write_file(
            self.lake,
            tables.RAW_EVENTS,
            raw_rows(partition, self.next[partition], count, day),
            {"event_date": day},
        )

    def commit_running(self, data_file: DataFile, count: int, partition: int = 0) -> int:
        """Commit a `write_running` file of `count` events; `partition`'s offset moves past them."""
        self.next[partition] += count
        return tables.commit(
            self.lake,
            tables.RAW_EVENTS,
            [data_file],
            schema=RAW_EVENTS_SCHEMA,
            transactions={tables.offsets_app_id(EVENTS_TOPIC, partition): self.next[partition]},
        )

    def expected_ids(self) -> list[str]:
        return sorted(f"{p}-{o}" for p, n in self.next.items() for o in range(n))


def orphan(lake: Lake, day: date = FIRST_DAY, age_hours: float = 0.0) -> str:
    """A data file a killed writer left (never committed), `age_hours` old; its lake path."""
    data_file = tables.write_file(
        lake, tables.RAW_EVENTS, raw_rows(99, 10**6, 5, day), {"event_date": day}
    )
    path = tables.file_path(tables.RAW_EVENTS, data_file)
    if age_hours:
        age(lake.path(path), age_hours)
    return path


def age(path: str, hours: float) -> None:
    """Set a local file's modification time `hours` back."""
    then = time.time() - hours * 3600
    os.utime(path, (then, then))


def event_ids(lake: Lake, version: int | None = None) -> list[str]:
    """The raw events' ids in the lake (at `version`), sorted."""
    return sorted(
        tables.read_arrow(lake, tables.RAW_EVENTS, ["event_id"], version=version)
        .column("event_id")
        .to_pylist()
    )

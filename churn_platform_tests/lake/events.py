"""Raw-event rows and extract-like commits for the lake tests (one small file per partition and day)."""

from __future__ import annotations

import os
import time
from datetime import UTC, date, datetime, timedelta

import pyarrow as pa

from churn_platform.events.contract import RAW_EVENTS_SCHEMA
from churn_platform.lake import tables
from churn_platform.lake.store import Lake

TOPIC = "customer-events"
FIRST_DAY = date(2026, 1, 1)


def rows(partition: int, start: int, count: int, day: date) -> pa.Table:
    """`count` events of Kafka `partition` from offset `start`, all on `day`."""
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
            "_topic": [TOPIC] * count,
            "_partition": pa.array([partition] * count, pa.int32()),
            "_offset": pa.array(offsets, pa.int64()),
        }
    ).cast(RAW_EVENTS_SCHEMA)


class Extract:
    """Commits like the extract: per Kafka partition and day one file, offsets in the commit."""

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
                        rows(p, self.next[p], per_file, FIRST_DAY + timedelta(days=d)),
                        {"event_date": FIRST_DAY + timedelta(days=d)},
                    )
                )
                self.next[p] += per_file
        return tables.commit(
            self.lake,
            tables.RAW_EVENTS,
            files,
            schema=RAW_EVENTS_SCHEMA,
            transactions={tables.offsets_app_id(TOPIC, p): n for p, n in self.next.items()},
        )

    def expected_ids(self) -> list[str]:
        return sorted(f"{p}-{o}" for p, n in self.next.items() for o in range(n))


def orphan(lake: Lake, day: date = FIRST_DAY, age_hours: float = 0.0) -> str:
    """A data file a killed writer left (never committed), `age_hours` old; its lake path."""
    data_file = tables.write_file(
        lake, tables.RAW_EVENTS, rows(99, 10**6, 5, day), {"event_date": day}
    )
    path = tables.file_path(tables.RAW_EVENTS, data_file)
    if age_hours:
        age(lake.path(path), age_hours)
    return path


def age(path: str, hours: float) -> None:
    then = time.time() - hours * 3600
    os.utime(path, (then, then))


def event_ids(lake: Lake, version: int | None = None) -> list[str]:
    return sorted(
        tables.read_arrow(lake, tables.RAW_EVENTS, ["event_id"], version=version)
        .column("event_id")
        .to_pylist()
    )

"""Build a committed raw event lake without Kafka: simulated or hand-written events.

Events go through the same validation as an extract, get `_topic`,
`_partition` and `_offset` columns, are written one file per event date (named
by offset range) and committed with the ledger, so readers see exactly what an
extract would have left.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from churn_platform.events.contract import EVENTS_TOPIC, RAW_EVENTS_SCHEMA
from churn_platform.events.simulator import SimulatorConfig, simulate
from churn_platform.events.validation import validate_batch
from churn_platform.lake.raw import append_rows, extracted_offsets
from churn_platform.lake.store import Lake

SIM_END = datetime(2024, 5, 1, tzinfo=UTC)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def append_messages(
    lake: Lake,
    values: list[bytes],
    topic: str = EVENTS_TOPIC,
    partition: int = 0,
    now: datetime | None = None,
) -> int:
    """Validate message values and commit them to the lake; returns the events written."""
    now = now or datetime.now(UTC)
    batch = validate_batch(values, now=_ms(now))
    assert not batch.rejects, batch.rejects[:3]
    events = batch.events
    if events.num_rows == 0:
        return 0
    first = extracted_offsets(lake, topic, [partition])[partition]
    offsets = pa.array(range(first, first + events.num_rows), pa.int64())
    table = events.append_column("_topic", pa.array([topic] * events.num_rows, pa.string()))
    table = table.append_column("_partition", pa.array([partition] * events.num_rows, pa.int32()))
    table = table.append_column("_offset", offsets).cast(RAW_EVENTS_SCHEMA)
    append_rows(lake, topic, table)
    return events.num_rows


def simulated_lake(
    root, customers: int = 60, days: int = 100, seed: int = 11, end: datetime = SIM_END
) -> Lake:
    """A lake holding a simulated business's events over `days` days before `end`."""
    lake = Lake(root)
    config = SimulatorConfig(customers=customers, days=days, seed=seed, end=end)
    values = [m.value for m in simulate(config)]
    append_messages(lake, values, now=end + timedelta(days=1))
    return lake


def event(
    customer_id: str,
    event_type: str,
    ts: datetime,
    *,
    event_id: str | None = None,
    value: float | None = None,
    attributes: dict | None = None,
) -> bytes:
    """One event message value (JSON), as a producer would send it."""
    body: dict = {
        "event_id": event_id or f"{customer_id}-{event_type}-{_ms(ts)}",
        "customer_id": customer_id,
        "event_type": event_type,
        "ts": ts.isoformat().replace("+00:00", "Z"),
    }
    if value is not None:
        body["value"] = value
    if attributes is not None:
        body["attributes"] = attributes
    return json.dumps(body).encode()


def started(customer_id: str, ts: datetime, plan: str = "basic", mrr: float = 19.0) -> bytes:
    return event(customer_id, "subscription_started", ts, attributes={"plan": plan, "mrr": mrr})


def cancelled(customer_id: str, ts: datetime) -> bytes:
    return event(customer_id, "subscription_cancelled", ts, attributes={"reason": "voluntary"})


# --- the hand-built case: as-of 2024-03-01, a 30-day horizon ------------------

AS_OF = datetime(2024, 3, 1, tzinfo=UTC).date()


def _at(day: str, hour: int = 9) -> datetime:
    return datetime.fromisoformat(day).replace(hour=hour, tzinfo=UTC)


def hand_built_lake(root) -> Lake:
    """Six customers around AS_OF; the lake is complete through 2024-04-09.

    c_churn cancels at d+1 (churned), c_late at d+31 (not churned), c_gone on d
    itself (not active at d), c_stay never (not churned), c_quiet is active
    with no activity in 90 days, and c_activity has no lifecycle events but
    recent activity (active, not churned).
    """
    lake = Lake(root)
    values = [
        started("c_churn", _at("2024-01-05")),
        event("c_churn", "login", _at("2024-02-20")),
        cancelled("c_churn", _at("2024-03-02")),
        started("c_late", _at("2024-01-05"), plan="pro", mrr=99.0),
        event("c_late", "session", _at("2024-02-25"), value=300.0),
        cancelled("c_late", _at("2024-04-01")),
        started("c_gone", _at("2024-01-05")),
        event("c_gone", "login", _at("2024-02-28")),
        cancelled("c_gone", _at("2024-03-01", 12)),
        started("c_stay", _at("2024-01-06")),
        event("c_stay", "login", _at("2024-02-28")),
        event("c_stay", "login", _at("2024-04-10")),  # the lake's latest event date
        started("c_quiet", _at("2023-10-01")),
        event("c_activity", "login", _at("2024-02-27")),
    ]
    append_messages(lake, values, now=_at("2024-04-11"))
    return lake

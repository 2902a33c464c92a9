"""The customer event contract: field rules, reason codes and the lake schema.

One place says what a valid event is. `churn_platform.events.validation` enforces
it; the simulator, replay and the lake schema are built from the same constants.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import pyarrow as pa

EVENTS_TOPIC = "customer-events"
SCORES_TOPIC = "churn-scores"

# Lifecycle event types carry subscription state; every other type is activity.
SUBSCRIPTION_STARTED = "subscription_started"
SUBSCRIPTION_CHANGED = "subscription_changed"
SUBSCRIPTION_CANCELLED = "subscription_cancelled"
LIFECYCLE_EVENT_TYPES = frozenset(
    {SUBSCRIPTION_STARTED, SUBSCRIPTION_CHANGED, SUBSCRIPTION_CANCELLED}
)

ID_MAX_LENGTH = 128
EVENT_TYPE_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
EVENT_TYPE_RE = re.compile(EVENT_TYPE_PATTERN)
# Event time may not be before this instant (epoch milliseconds). It catches epoch
# seconds sent as milliseconds (they land in January 1970) while taking real
# history: the CDNOW purchases a test replays are from 1997.
TS_MIN_DATE = "1980-01-01"
TS_MIN_MS = int(datetime(1980, 1, 1, tzinfo=UTC).timestamp() * 1000)
# ... nor more than this far ahead of the clock of the process that validates it.
TS_MAX_FUTURE_MS = 24 * 3600 * 1000
# Messages larger than this are rejected before parsing (bytes).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024
ATTRIBUTE_KEY_MAX_LENGTH = 128
ATTRIBUTE_VALUE_MAX_LENGTH = 1024


class Reason:
    """Reason codes a rejected message is quarantined with."""

    EMPTY = "empty"
    TOO_LARGE = "too_large"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    BAD_TYPE = "bad_type"
    BAD_EVENT_ID = "bad_event_id"
    BAD_CUSTOMER_ID = "bad_customer_id"
    BAD_EVENT_TYPE = "bad_event_type"
    BAD_TS = "bad_ts"
    TS_OUT_OF_RANGE = "ts_out_of_range"
    BAD_VALUE = "bad_value"
    BAD_ATTRIBUTES = "bad_attributes"

    ALL = (
        EMPTY,
        TOO_LARGE,
        INVALID_UTF8,
        INVALID_JSON,
        NOT_AN_OBJECT,
        MISSING_FIELD,
        BAD_TYPE,
        BAD_EVENT_ID,
        BAD_CUSTOMER_ID,
        BAD_EVENT_TYPE,
        BAD_TS,
        TS_OUT_OF_RANGE,
        BAD_VALUE,
        BAD_ATTRIBUTES,
    )


@dataclass(frozen=True, slots=True)
class Event:
    """A validated customer event; `ts_ms` is event time in UTC epoch milliseconds."""

    event_id: str
    customer_id: str
    event_type: str
    ts_ms: int
    value: float | None = None
    attributes: dict[str, str | int | float] | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why a message broke the contract: a reason code and a human-readable detail."""

    reason: str
    detail: str


# Columns of raw/customer_events. `attributes` is kept as compact JSON text so the
# schema does not change with the event catalogue; `_partition`/`_offset` record
# where each row came from, which is what makes exactly-once checkable.
RAW_EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("customer_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("ms", tz="UTC"), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("attributes", pa.string()),
        pa.field("event_date", pa.date32(), nullable=False),
        pa.field("_topic", pa.string(), nullable=False),
        pa.field("_partition", pa.int32(), nullable=False),
        pa.field("_offset", pa.int64(), nullable=False),
    ]
)

# Low-cardinality columns compress well as dictionaries; ids and offsets do not.
RAW_EVENTS_DICTIONARY_COLUMNS = ["customer_id", "event_type", "attributes", "_topic"]
# Min/max statistics where readers prune on them (time and offset ranges).
RAW_EVENTS_STATISTICS_COLUMNS = ["ts", "event_date", "_partition", "_offset"]

QUARANTINE_SCHEMA = pa.schema(
    [
        pa.field("topic", pa.string(), nullable=False),
        pa.field("partition", pa.int32(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("key", pa.binary()),
        pa.field("value", pa.binary()),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("quarantined_at", pa.timestamp("ms", tz="UTC"), nullable=False),
    ]
)


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    """One rejected message as the quarantine tables store it (`QUARANTINE_SCHEMA`).

    `quarantined_at` is epoch milliseconds or an aware datetime (Arrow takes both).
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    detail: str
    quarantined_at: int | datetime


def quarantine_table(rows: Sequence[QuarantineRow]) -> pa.Table:
    """The rows as a table of `QUARANTINE_SCHEMA`, each column taken by its name."""
    return pa.table(
        [pa.array([getattr(r, f.name) for r in rows], type=f.type) for f in QUARANTINE_SCHEMA],
        schema=QUARANTINE_SCHEMA,
    )

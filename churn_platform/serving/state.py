"""Per-customer event state of the streaming scorer: what the feature definition needs.

The features of a customer as of a day read the customer's activity events in
the 90 days up to it and its lifecycle events from the start. `CustomerState` keeps exactly that,
per customer, as rows in the feature module's event columns, and hands the
rows of a set of customers to `features.definitions.compute_features`: the
same function the batch pipeline runs, so serving cannot drift from training.

`bootstrap_state` fills it from the lake (the committed raw files of the
partitions a scorer owns), so a restarted scorer starts warm; the ledger says
which offsets the lake holds, so the scorer resumes reading there and counts
nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import polars as pl

from churn_platform.events.contract import LIFECYCLE_EVENT_TYPES
from churn_platform.features.definitions import EVENT_COLUMNS, EVENT_SCHEMA, LOOKBACK_DAYS
from churn_platform.features.inputs import read_file
from churn_platform.lake.ledger import read_ledger
from churn_platform.lake.raw import committed_raw_files, event_date_of
from churn_platform.lake.store import Lake

# one row per event: (event_id, customer_id, event_type, ts_ms, value, attributes)
Row = tuple[str, str, str, int, float | None, str | None]
_LIFECYCLE = frozenset(LIFECYCLE_EVENT_TYPES)
_ROW_SCHEMA = {**EVENT_SCHEMA, "ts": pl.Int64}
_MS_PER_DAY = 86_400_000


class CustomerState:
    """Event rows per customer; `frame(customers)` is their events in `EVENT_SCHEMA`.

    Two tiers, so that handing many customers' events to polars stays cheap:
    a columnar `base` frame sorted by customer (what the bootstrap loaded and
    what earlier compactions folded in), indexed by customer → (start, length)
    for zero-copy slices, and recent rows as Python tuples per customer. Once
    `compact_rows` recent rows pile up they are folded into the base (and
    activity older than the lookback is dropped). Repeated event ids are kept:
    `compute_features` counts an event id once, as it does in batch.
    """

    def __init__(self, compact_rows: int = 200_000) -> None:
        self.compact_rows = compact_rows
        self._base = pl.DataFrame(schema=_ROW_SCHEMA)
        self._index: dict[str, tuple[int, int]] = {}
        self._recent: dict[str, list[Row]] = {}
        self._recent_rows = 0

    def __len__(self) -> int:
        return len(self._index.keys() | self._recent.keys())

    @property
    def events(self) -> int:
        return self._base.height + self._recent_rows

    def customers(self) -> list[str]:
        return sorted(self._index.keys() | self._recent.keys())

    def add(self, rows: Iterable[Row]) -> int:
        """Add event rows (ts in epoch ms); returns how many."""
        added = 0
        recent = self._recent
        for row in rows:
            bucket = recent.get(row[1])
            if bucket is None:
                bucket = recent[row[1]] = []
            bucket.append(row)
            added += 1
        self._recent_rows += added
        if self._recent_rows >= self.compact_rows:
            self.compact()
        return added

    def add_frame(self, events: pl.DataFrame) -> int:
        """Add an event frame (EVENT_COLUMNS, ts as a datetime or epoch ms) to the base tier."""
        if events.height == 0:
            return 0
        frame = events.select(EVENT_COLUMNS)
        if frame.schema["ts"] != pl.Int64:
            frame = frame.with_columns(pl.col("ts").dt.epoch("ms"))
        self._rebuild(pl.concat([self._base, frame.cast(_ROW_SCHEMA)], how="vertical"))
        return frame.height

    def merge(self, other: CustomerState) -> int:
        """Add every row `other` holds (what a bootstrap loaded); returns how many."""
        return self.add_frame(other.frame(other.customers(), as_datetime=False))

    def rows_of(self, customer_id: str) -> list[Row]:
        return list(self.frame([customer_id], as_datetime=False).iter_rows())

    def frame(self, customers: Iterable[str], as_datetime: bool = True) -> pl.DataFrame:
        """The held events of `customers` as an event frame for `compute_features`."""
        parts: list[pl.DataFrame] = []
        rows: list[Row] = []
        index, recent, base = self._index, self._recent, self._base
        for customer_id in customers:
            span = index.get(customer_id)
            if span is not None:
                parts.append(base.slice(span[0], span[1]))
            bucket = recent.get(customer_id)
            if bucket:
                rows.extend(bucket)
        if rows or not parts:
            parts.append(pl.DataFrame(rows, schema=_ROW_SCHEMA, orient="row"))
        frame = pl.concat(parts, how="vertical", rechunk=False) if len(parts) > 1 else parts[0]
        return (
            frame.with_columns(pl.col("ts").cast(pl.Datetime("ms", "UTC")))
            if as_datetime
            else frame
        )

    def compact(self, today: date | None = None) -> None:
        """Fold recent rows into the base; with `today`, also drop activity past the lookback."""
        rows = [row for bucket in self._recent.values() for row in bucket]
        self._recent, self._recent_rows = {}, 0
        table = pl.concat(
            [self._base, pl.DataFrame(rows, schema=_ROW_SCHEMA, orient="row")], how="vertical"
        )
        if today is not None:
            cutoff = _day_start_ms(today) - (LOOKBACK_DAYS - 1) * _MS_PER_DAY
            table = table.filter(
                (pl.col("ts") >= cutoff) | pl.col("event_type").is_in(sorted(_LIFECYCLE))
            )
        self._rebuild(table)

    def prune(self, today: date) -> int:
        """Forget activity events older than the lookback of `today` (lifecycle events stay)."""
        before = self.events
        self.compact(today)
        return before - self.events

    def _rebuild(self, table: pl.DataFrame) -> None:
        self._base = table.sort("customer_id", "ts", maintain_order=True).rechunk()
        spans = self._base.group_by("customer_id", maintain_order=True).len()
        starts = spans["len"].cum_sum() - spans["len"]
        self._index = dict(
            zip(
                spans["customer_id"].to_list(),
                zip(starts.to_list(), spans["len"].to_list(), strict=True),
                strict=True,
            )
        )


def _day_start_ms(day: date) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000)


@dataclass(frozen=True)
class Bootstrap:
    """What `bootstrap_state` loaded."""

    state: CustomerState
    start_offsets: dict[int, int]  # partition → first offset the lake does not hold
    files: int
    events: int
    latest_date: date | None


def bootstrap_state(
    lake: Lake, topic: str, partitions: Sequence[int], today: date | None = None
) -> Bootstrap:
    """State of the customers in `partitions` from the lake's committed files of `topic`.

    Files within the lookback of the lake's latest event date (or `today`) are
    read whole; older ones for lifecycle events only, as the batch engines do.
    """
    wanted = set(partitions)
    ledger = read_ledger(lake, topic)
    files = [f for f in committed_raw_files(lake, [topic]) if f.partition in wanted]
    days = [d for f in files if (d := event_date_of(f.path)) is not None]
    latest = max(days) if days else None
    anchor = today or latest or datetime.now(UTC).date()
    first_window_day = anchor - timedelta(days=LOOKBACK_DAYS - 1)
    window, history = [], []
    for f in files:
        day = event_date_of(f.path)
        (window if day is not None and day >= first_window_day else history).append(f.path)
    frames = [read_file(lake, path) for path in window]
    # exactly the batch engines' inputs: older files for lifecycle events only
    frames += [read_file(lake, path, lifecycle_only=True) for path in history]
    state = CustomerState()
    events = 0
    if frames:
        events = state.add_frame(pl.concat(frames, how="vertical_relaxed"))
    return Bootstrap(
        state=state,
        start_offsets={p: ledger.next_offset(p) for p in wanted},
        files=len(files),
        events=events,
        latest_date=latest,
    )

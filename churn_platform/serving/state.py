"""Per-customer event state of the streaming scorer: what the feature definition needs.

The features of a customer as of a day read the customer's activity events in
the `LOOKBACK_DAYS` (365) up to it and its lifecycle events from the start.
`CustomerState` keeps exactly that, per customer, as rows in the feature
module's event columns, and hands the
rows of a set of customers to `features.definitions.compute_features`: the
same function the batch pipeline runs, so serving cannot drift from training.

`bootstrap_state` fills it from the lake (the committed raw files of the
partitions a scorer owns), so a restarted scorer starts warm; the ledger says
which offsets the lake holds, so the scorer resumes reading there and counts
nothing twice.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl

from churn_platform.events.contract import LIFECYCLE_EVENT_TYPES
from churn_platform.features.customer import CustomerEvents, lifecycle_prices
from churn_platform.features.definitions import EVENT_COLUMNS, EVENT_SCHEMA, LOOKBACK_DAYS
from churn_platform.lake.raw import event_date_of, raw_path, read_raw_file, snapshot
from churn_platform.lake.store import Lake

# one row per event: (event_id, customer_id, event_type, ts_ms, value, attributes)
Row = tuple[str, str, str, int, float | None, str | None]
_LIFECYCLE = frozenset(LIFECYCLE_EVENT_TYPES)
_ROW_SCHEMA = {**EVENT_SCHEMA, "ts": pl.Int64}  # `Row`s and as_datetime=False frames
_TS = pl.Datetime("ms", "UTC")
_TAIL_CHUNKS = 64
_NO_PRICE = (None, None)  # batches (and merged chunks) in the tail before a merge


class CustomerState:
    """Event rows per customer; `frame(customers)` is their events in `EVENT_SCHEMA`.

    The rows live in one columnar store in arrival order: a `base` frame (one
    chunk: what the bootstrap loaded and what earlier compactions folded in)
    and a `tail` of the micro-batches added since, chunk by chunk. An index
    keeps each customer's row numbers (an `array('q')`, appended to as events
    come), so `frame` gathers a few customers' rows in time that does not grow
    with the state, and no event is ever sorted or moved to be found. Asked for
    most customers, it filters everything in one pass instead. Once
    `compact_rows` rows are in the tail they are folded into the base (a copy,
    no sort); the tail's newest batches are merged into one chunk every
    `_TAIL_CHUNKS` batches (a copy of those rows only).

    Two earlier designs cost more than the features themselves in a busy
    scorer: recent events as Python tuples (polars building a frame of 100k
    tuples a micro-batch) and a base kept sorted by customer (sorting a
    million rows on every compaction: seconds, with the scorer stalled).
    Repeated event ids are kept: `compute_features` counts an event id once,
    as it does in batch.
    """

    def __init__(self, compact_rows: int = 200_000, history_customers: int = 50_000) -> None:
        self.compact_rows = compact_rows
        self.history_customers = history_customers
        self._base = pl.DataFrame(schema=EVENT_SCHEMA)  # stored as compute_features reads it
        self._tail = pl.DataFrame(schema=EVENT_SCHEMA)
        self._tail_merged = 0  # rows at the start of the tail already in merged chunks
        self._index: dict[str, array] = {}  # customer → row numbers (base, tail, pending)
        # rows added one by one (`append_rows`), not yet in the tail: they join it in
        # one frame when a frame is next needed
        self._pending: list[Row] = []
        # the latest customers' events as arrays (`history`), most recently used last
        self._histories: OrderedDict[str, CustomerEvents] = OrderedDict()

    def __len__(self) -> int:
        return len(self._index)

    @property
    def events(self) -> int:
        return self._base.height + self._tail.height + len(self._pending)

    def customers(self) -> list[str]:
        return sorted(self._index)

    def add(self, rows: Iterable[Row]) -> int:
        """Add event rows (ts in epoch ms); returns how many."""
        rows = list(rows)
        if not rows:
            return 0
        return self.add_events(pl.DataFrame(rows, schema=_ROW_SCHEMA, orient="row"))

    def append_rows(self, rows: Sequence[Row]) -> int:
        """Add a few event rows (ts in epoch ms) without building a frame; returns how many.

        The rows join the tail when a frame is next needed; the customers whose
        `history` is held get them at once.
        """
        if not rows:
            return 0
        index, histories = self._index, self._histories
        first_row = self.events
        for customer in {r[1] for r in rows if r[1] not in index}:
            histories[customer] = CustomerEvents()  # a new customer: nothing to read
        # plan and MRR of lifecycle events, for the histories held (one polars call)
        prices = _prices(rows, lambda r: r[1] in histories)
        for position, row in enumerate(rows):
            customer = row[1]
            held = index.get(customer)
            if held is None:
                held = index[customer] = array("q")
            held.append(first_row + position)
            history = histories.get(customer)
            if history is not None:
                history.append(row[0], row[2], row[3], row[4], prices.get(position, _NO_PRICE))
        self._pending.extend(rows)
        self._trim_histories()
        return len(rows)

    def history(self, customer: str) -> CustomerEvents:
        """The customer's held events as `CustomerEvents` (kept for the latest
        `history_customers` customers asked for)."""
        histories = self._histories
        found = histories.get(customer)
        if found is not None:
            histories.move_to_end(customer)
            return found
        # the stored rows from the frames, the rows not yet in a frame one by one (no flush)
        rows = np.frombuffer(self._index.get(customer, array("q")), dtype=np.int64)
        stored = self._base.height + self._tail.height
        found = CustomerEvents.from_frame(self._gather(rows[rows < stored]))
        pending = [self._pending[i] for i in (rows[rows >= stored] - stored).tolist()]
        prices = _prices(pending)
        for i, row in enumerate(pending):
            found.append(row[0], row[2], row[3], row[4], prices.get(i, _NO_PRICE))
        histories[customer] = found
        self._trim_histories()
        return found

    def _trim_histories(self) -> None:
        histories = self._histories
        while len(histories) > self.history_customers:
            histories.popitem(last=False)

    def warm_histories(self) -> int:
        """Hold the `history` of the customers with the latest events (at most
        `history_customers`), built in one pass; returns how many are held."""
        self._flush()
        everything = pl.concat([self._base, self._tail], how="vertical", rechunk=False)
        if everything.height == 0:
            return 0
        if len(self._index) > self.history_customers:
            latest = (
                everything.group_by("customer_id")
                .agg(pl.col("ts").max())
                .top_k(self.history_customers, by="ts")
            )
            everything = everything.filter(pl.col("customer_id").is_in(latest["customer_id"]))
        self._histories = OrderedDict(CustomerEvents.many(everything))
        return len(self._histories)

    def _flush(self) -> None:
        """Move the rows added one by one into the tail (their row numbers are kept)."""
        if self._pending:
            rows, self._pending = self._pending, []
            self._append_tail(_rows(pl.DataFrame(rows, schema=_ROW_SCHEMA, orient="row")))

    def add_events(self, events: pl.DataFrame) -> int:
        """Add a micro-batch of events (EVENT_COLUMNS, ts a datetime or epoch ms)."""
        if events.height == 0:
            return 0
        self._flush()
        frame = _rows(events)
        self._extend_histories(frame)
        self._index_rows(frame, self.events)
        self._append_tail(frame)
        return frame.height

    def _append_tail(self, frame: pl.DataFrame) -> None:
        """Add rows (already indexed) at the end of the tail, merging its chunks now and then."""
        tail = pl.concat([self._tail, frame], how="vertical", rechunk=False)
        if tail.n_chunks() > 2 * _TAIL_CHUNKS:
            # merge the batches added since the last merge into one chunk (a copy of
            # those rows only); all of the tail once it holds that many merged chunks
            merged = self._tail_merged
            head, new = tail.slice(0, merged), tail.slice(merged).rechunk()
            tail = (
                pl.concat([head, new], how="vertical", rechunk=head.n_chunks() >= _TAIL_CHUNKS)
                if merged
                else new
            )
            self._tail_merged = tail.height
        self._tail = tail
        if tail.height >= self.compact_rows:
            self.compact()

    def add_frame(self, events: pl.DataFrame) -> int:
        """Add an event frame (EVENT_COLUMNS, ts as a datetime or epoch ms) to the base tier."""
        if events.height == 0:
            return 0
        frame = _rows(events)
        self.compact()  # keeps row numbers: the base is then everything held
        self._forget_histories(frame)
        self._index_rows(frame, self.events)
        self._base = pl.concat([self._base, frame], how="vertical").rechunk()
        return frame.height

    def merge(self, other: CustomerState) -> int:
        """Add every row `other` holds (what a bootstrap loaded); returns how many."""
        other._flush()
        return self.add_frame(pl.concat([other._base, other._tail], how="vertical"))

    def rows_of(self, customer_id: str) -> list[Row]:
        return list(self.frame([customer_id], as_datetime=False).iter_rows())

    def frame(self, customers: Iterable[str], as_datetime: bool = True) -> pl.DataFrame:
        """The held events of `customers` as an event frame for `compute_features`."""
        self._flush()
        wanted = [c for c in dict.fromkeys(customers) if c in self._index]
        if len(wanted) * 2 >= len(self._index) and len(wanted) > 100:
            # most of the customers: one pass over everything beats gathering
            everything = pl.concat([self._base, self._tail], how="vertical", rechunk=False)
            frame = everything.filter(pl.col("customer_id").is_in(wanted))
        elif not wanted:
            frame = self._base.clear()
        else:
            index = self._index
            frame = self._gather(
                np.concatenate([np.frombuffer(index[c], dtype=np.int64) for c in wanted])
            )
        return frame if as_datetime else frame.with_columns(pl.col("ts").dt.epoch("ms"))

    def _gather(self, rows: np.ndarray) -> pl.DataFrame:
        """Rows of the base and the tail by row number (none of them pending)."""
        in_base = self._base.height
        if not rows.size or rows.max() < in_base:
            return self._base[rows]
        head = rows < in_base
        return pl.concat(
            [self._base[rows[head]], self._tail[rows[~head] - in_base]],
            how="vertical",
            rechunk=False,
        )

    def compact(self, today: date | None = None) -> None:
        """Fold the tail into the base; with `today`, also drop activity past the lookback."""
        self._flush()
        if today is None:
            if self._tail.height:
                self._base = pl.concat([self._base, self._tail], how="vertical").rechunk()
                self._tail, self._tail_merged = self._base.clear(), 0
            return
        cutoff = datetime(today.year, today.month, today.day, tzinfo=UTC) - timedelta(
            days=LOOKBACK_DAYS - 1
        )
        table = pl.concat([self._base, self._tail], how="vertical").filter(
            (pl.col("ts") >= cutoff) | pl.col("event_type").is_in(sorted(_LIFECYCLE))
        )
        self._base, self._tail, self._index = table.rechunk(), table.clear(), {}
        self._tail_merged = 0
        self._histories.clear()
        self._index_rows(table, 0)

    def prune(self, today: date) -> int:
        """Forget activity events older than the lookback of `today` (lifecycle events stay)."""
        before = self.events
        self.compact(today)
        return before - self.events

    def _extend_histories(self, frame: pl.DataFrame) -> None:
        """Add `frame`'s events to the held `history` of its customers."""
        histories = self._histories
        if histories:
            held = frame.filter(pl.col("customer_id").is_in(list(histories)))
            for customer, more in CustomerEvents.many(held).items():
                histories[customer].extend(more)

    def _forget_histories(self, frame: pl.DataFrame) -> None:
        """Drop the held `history` of the customers in `frame` (it is added another way)."""
        histories = self._histories
        if histories:
            for customer in frame["customer_id"].unique().to_list():
                histories.pop(customer, None)

    def _index_rows(self, frame: pl.DataFrame, first_row: int) -> None:
        """Record that `frame`'s rows are rows first_row, first_row + 1, ... of the store."""
        index = self._index
        if frame.height < 10_000:
            for row, customer in enumerate(frame["customer_id"].to_list(), first_row):
                rows = index.get(customer)
                if rows is None:
                    rows = index[customer] = array("q")
                rows.append(row)
            return
        groups = (
            frame.select("customer_id")
            .with_row_index("row", offset=first_row)
            .group_by("customer_id", maintain_order=True)
            .agg(pl.col("row").cast(pl.Int64))
        )
        for customer, rows in zip(
            groups["customer_id"].to_list(), groups["row"].to_list(), strict=True
        ):
            held = index.get(customer)
            if held is None:
                index[customer] = array("q", rows)
            else:
                held.extend(rows)


def _prices(
    rows: Sequence[Row], wanted: Callable[[Row], bool] = lambda _: True
) -> dict[int, tuple[str | None, float | None]]:
    """position → (plan, mrr) of the lifecycle rows among `rows` that are `wanted`."""
    lifecycle = [i for i, r in enumerate(rows) if r[2] in _LIFECYCLE and wanted(r)]
    if not lifecycle:
        return {}
    found = lifecycle_prices([rows[i][5] for i in lifecycle])
    return dict(zip(lifecycle, found, strict=True))


def _rows(events: pl.DataFrame) -> pl.DataFrame:
    """`events` in the store's columns and types (EVENT_SCHEMA; ts may come as epoch ms)."""
    frame = events.select(EVENT_COLUMNS)
    if frame.schema == EVENT_SCHEMA:  # a validated batch: nothing to convert
        return frame
    if frame.schema["ts"].is_integer():
        frame = frame.with_columns(pl.col("ts").cast(pl.Int64).cast(_TS))
    return frame.cast(EVENT_SCHEMA)


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
    files, offsets = snapshot(lake, topic, wanted)
    days = [d for f in files if (d := event_date_of(raw_path(f))) is not None]
    latest = max(days) if days else None
    anchor = today or latest or datetime.now(UTC).date()
    first_window_day = anchor - timedelta(days=LOOKBACK_DAYS - 1)
    window, history = [], []
    for f in files:
        path = raw_path(f)
        day = event_date_of(path)
        (window if day is not None and day >= first_window_day else history).append(path)
    # exactly the batch engines' inputs: older files for lifecycle events only; a file
    # may hold several partitions and topics (compaction merges them): keep ours
    ours = (pl.col("_topic") == topic) & pl.col("_partition").is_in(sorted(wanted))
    columns = [*EVENT_COLUMNS, "_topic", "_partition"]
    frames = [
        read_raw_file(lake, path, columns).filter(ours).select(EVENT_COLUMNS) for path in window
    ]
    frames += [
        read_raw_file(lake, path, columns)
        .filter(ours & pl.col("event_type").is_in(sorted(LIFECYCLE_EVENT_TYPES)))
        .select(EVENT_COLUMNS)
        for path in history
    ]
    state = CustomerState()
    events = 0
    if frames:
        events = state.add_frame(pl.concat(frames, how="vertical_relaxed"))
    return Bootstrap(
        state=state,
        start_offsets=offsets,
        files=len(files),
        events=events,
        latest_date=latest,
    )

"""`replay_file`: check the inputs, then produce their events, and say what happened.

1. Resolve every input's files and bind the mapping to each file's columns
   (`MappingError` names the file, the option and the columns there are).
2. A subscriptions table: read its start and end columns whole; unreadable
   times and ends before starts fail (`checks.check_subscription_dates`).
3. Events with a subscriptions table: compare their customers; customers in
   one file only fail unless `unmatched_customers` is keep or drop.
4. Only then contact the cluster (create the topic) and produce: batches are
   built and checked in a thread while this one produces (`producing`).
   Subscriptions go first, so a consumer sees a subscription start before
   that customer's activity.
5. If delivery fails, `ReplayProduceError` says how far it got; the event ids
   of a rerun are the same, so rerunning is safe.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import polars as pl
from tqdm import tqdm

from churn_platform.events.contract import SUBSCRIPTION_CANCELLED, TS_MIN_DATE, Reason, Rejection
from churn_platform.events.replay.checks import (
    check_subscription_dates,
    customers,
    match_customers,
    unmatched_message,
)
from churn_platform.events.replay.inputs import Input
from churn_platform.events.replay.messages import MessageBuilder
from churn_platform.events.replay.options import (
    UNMATCHED_CUSTOMERS,
    Mapping,
    ReplayError,
    ReplayInput,
    ReplayMapping,
    SubscriptionMapping,
)
from churn_platform.events.replay.producing import BulkProducer, prefetched
from churn_platform.events.validation import now_ms, validate
from churn_platform.kafka.admin import DEFAULT_PARTITIONS, ensure_topic
from churn_platform.kafka.config import KafkaSettings
from churn_platform.kafka.producer import ProduceError

DEFAULT_BATCH_ROWS = 100_000
DEFAULT_REJECTS_DIR = Path("var/replay")
FLUSH_SECONDS = 60.0
# Share of rows whose time the contract rejects above which the summary says to check the options.
_TS_HINT_SHARE = 0.5


class ReplayProduceError(ProduceError):
    """Delivery failed part-way; the message says how many rows and events got through."""


class _Undelivered(Exception):
    """Raised inside `replay_file` when the producer reports a failure; says why."""


@dataclass
class ReplaySummary:
    """What a replay did; `invalid_by_reason` counts rows that broke the contract.

    `notes` are what the user should know before going on (no churn events,
    customers kept or dropped, times that look misread).
    """

    source: str
    topic: str
    files: int = 0
    rows_read: int = 0
    events_produced: int = 0
    invalid_by_reason: dict[str, int] = field(default_factory=dict)
    event_types: dict[str, int] = field(default_factory=dict)
    renamed_event_types: dict[str, str] = field(default_factory=dict)
    skipped_invalid: int = 0
    rejects_path: str | None = None
    seconds: float = 0.0
    subscriptions_source: str | None = None
    customers: int = 0
    first_ts: str | None = None
    last_ts: str | None = None
    unmatched_customers: dict[str, int] = field(default_factory=dict)
    dropped_rows: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def invalid(self) -> int:
        return sum(self.invalid_by_reason.values())

    @property
    def churn_events(self) -> int:
        return self.event_types.get(SUBSCRIPTION_CANCELLED, 0)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["invalid"] = self.invalid
        out["churn_events"] = self.churn_events
        out["rows_per_second"] = round(self.rows_read / self.seconds) if self.seconds else None
        return out


# ---------------------------------------------------------------------------
# Rejects


class _Rejects:
    """JSON lines of the rows not produced; written to a temporary name, renamed at the end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._tmp = path.with_name(path.name + ".tmp")
        self._file = None

    def write(
        self, source: str, row: int | None, key: bytes | None, value: bytes, why: Rejection
    ) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._tmp, "wb")  # noqa: SIM115 - closed in close()
        record = {
            "source": source,
            "row": row,
            "reason": why.reason,
            "detail": why.detail,
            "key": None if key is None else key.decode("utf-8", "replace"),
            "value": value.decode("utf-8", "replace"),
        }
        self._file.write(msgspec.json.encode(record) + b"\n")
        self.count += 1

    def close(self, keep: bool) -> str | None:
        """Rename the file into place (or delete it when the replay failed); its path or None."""
        if self._file is None:
            return None
        self._file.close()
        if not keep:
            self._tmp.unlink(missing_ok=True)
            return None
        os.replace(self._tmp, self.path)
        return str(self.path)


def default_rejects_path(path: str | os.PathLike[str]) -> Path:
    """Where `--skip-invalid` writes rejected rows unless told: var/replay/<name>.rejects.jsonl."""
    name = Path(os.fspath(path).rstrip("/*")).name
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "replay"
    return DEFAULT_REJECTS_DIR / f"{stem}.rejects.jsonl"


# ---------------------------------------------------------------------------
# Batches ready to produce


@dataclass
class _Ready:
    """One batch's messages, and the rows of those that break the contract (with why)."""

    source: str
    rows: int
    keys: list[bytes | None]
    values: list[bytes]
    rejected: list[tuple[int, int, str | None, Rejection]]  # position, file row, type, why
    event_types: dict[str, int]
    customers: pl.Series
    ts_range: tuple[int | None, int | None]
    dropped: int


def _ready_batches(
    inputs: list[Input],
    builders: dict[Input, MessageBuilder],
    batch_rows: int,
    limit: int | None,
    now: int | None,
) -> Iterator[_Ready]:
    """Every input's batches built; with `now`, the suspects checked with `validate`."""
    for source_input in inputs:
        builder = builders[source_input]
        for source, bound, batch in source_input.batches(batch_rows, limit):
            built = None
            if batch.frame.height:
                built = builder.build(
                    batch.frame, bound, source.name, batch.first_row, source.from_text
                )
            keys = [] if built is None else built.keys
            values = [] if built is None else built.values
            suspects = [] if built is None else built.suspects
            # Lines of a JSON Lines file that are not JSON objects travel as they
            # are: the contract check counts them, the extract quarantines their bytes.
            broken_at = len(values)
            for _, line in batch.broken:
                suspects.append(len(values))
                keys.append(None)
                values.append(line)
            rejected = []
            if now is not None:
                for i in suspects:
                    why = validate(values[i], now=now)
                    if isinstance(why, Rejection):
                        if i < broken_at:
                            rejected.append((i, built.row[i], built.event_type[i], why))
                        else:
                            rejected.append((i, batch.broken[i - broken_at][0], None, why))
            types: dict[str, int] = {}
            ts_range: tuple[int | None, int | None] = (None, None)
            ids = pl.Series([], dtype=pl.String)
            if built is not None:
                counted = built.event_type.drop_nulls().value_counts()
                types = dict(zip(*counted.get_columns(), strict=True))
                ts_range = (built.ts_ms.min(), built.ts_ms.max())
                ids = built.customers.drop_nulls().unique()
            yield _Ready(
                source=source.name,
                rows=batch.rows,
                keys=keys,
                values=values,
                rejected=rejected,
                event_types=types,
                customers=ids,
                ts_range=ts_range,
                dropped=0 if built is None else built.dropped,
            )


class _Tally:
    """Running totals of a replay (kept by the producing thread)."""

    def __init__(self) -> None:
        self.rows = 0
        self.produced = 0
        self.dropped = 0
        self.invalid: Counter[str] = Counter()
        self.event_types: Counter[str] = Counter()
        self.ts_min: int | None = None
        self.ts_max: int | None = None
        self._customers: list[pl.Series] = []

    def add(self, ready: _Ready) -> None:
        self.rows += ready.rows
        self.dropped += ready.dropped
        self.event_types.update(ready.event_types)
        for _, _, _, why in ready.rejected:
            self.invalid[why.reason] += 1
        low, high = ready.ts_range
        if low is not None:
            self.ts_min = low if self.ts_min is None else min(self.ts_min, low)
            self.ts_max = high if self.ts_max is None else max(self.ts_max, high)
        self._customers.append(ready.customers)
        if len(self._customers) > 32:
            self._customers = [pl.concat(self._customers).unique()]

    @property
    def customers(self) -> int:
        return pl.concat(self._customers).n_unique() if self._customers else 0


def _produce(
    ready: _Ready, producer: BulkProducer, topic: str, rejects: _Rejects | None, tally: _Tally
) -> None:
    """Produce one batch; with `rejects`, the messages that break the contract go there instead."""
    keys, values = ready.keys, ready.values
    tally.add(ready)
    if rejects is not None and ready.rejected:
        for i, row, event_type, why in ready.rejected:
            if event_type is not None:
                tally.event_types[event_type] -= 1
            rejects.write(ready.source, row, keys[i], values[i], why)
        dropped = {i for i, _, _, _ in ready.rejected}
        keys = [k for i, k in enumerate(keys) if i not in dropped]
        values = [v for i, v in enumerate(values) if i not in dropped]
    producer.send(topic, keys, values)
    tally.produced += len(values)


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _notes(summary: ReplaySummary, inputs: list[Input]) -> list[str]:
    """What the user should know before going on, one sentence each."""
    notes = []
    if summary.events_produced and summary.churn_events == 0:
        table = next((i for i in inputs if i.is_subscriptions), None)
        if table is not None and table.mapping.end_column is None:
            how = "give the subscriptions' end column (--end-column)"
        elif table is not None:
            how = "check --end-column (no subscription in the table has an end)"
        else:
            how = (
                "replay the subscriptions with their end dates beside the events "
                "(--subscriptions-file FILE --end-column COLUMN)"
            )
        notes.append(
            "no subscription_cancelled events: under the default churn definition "
            "(CHURN_DEFINITION=cancellation) no customer would ever churn. "
            f"To fix that, {how}, or set CHURN_DEFINITION=inactivity (with CHURN_HORIZON_DAYS "
            "and CHURN_QUALIFYING_EVENTS) to call a customer churned after a time without activity"
        )
    bad_times = summary.invalid_by_reason.get(Reason.TS_OUT_OF_RANGE, 0)
    bad_times += summary.invalid_by_reason.get(Reason.BAD_TS, 0)
    if summary.rows_read and bad_times >= _TS_HINT_SHARE * summary.rows_read:
        seen = f" (read from {summary.first_ts} to {summary.last_ts})" if summary.first_ts else ""
        notes.append(
            f"{bad_times:,} events have a time the contract rejects{seen}: check --ts-column, "
            f"--ts-format, --ts-unit and --ts-timezone; the contract takes times from "
            f"{TS_MIN_DATE} to one day ahead"
        )
    unmatched = summary.unmatched_customers
    if unmatched:
        what = "left out" if summary.dropped_rows else "replayed"
        notes.append(
            f"customers in one file only were {what}: {unmatched.get('events_only', 0):,} "
            f"with events but no subscription, {unmatched.get('subscriptions_only', 0):,} with "
            f"a subscription but no events"
            + (f" ({summary.dropped_rows:,} rows left out)" if summary.dropped_rows else "")
        )
    return notes


def _known_rows(inputs: list[Input], limit: int | None) -> int | None:
    """Rows to read, when the files say so cheaply (Parquet footers), for the progress bar."""
    total = 0
    for source_input in inputs:
        if any(s.fmt != "parquet" for s in source_input.sources):
            return None
        rows = sum(
            pl.scan_parquet(s.path).select(pl.len()).collect().item() for s in source_input.sources
        )
        total += rows if limit is None else min(rows, limit)
    return total


def _failure(producer: BulkProducer, topic: str, tally: _Tally, reason: str) -> ReplayProduceError:
    return ReplayProduceError(
        f"producing to {topic!r} at {producer.bootstrap} failed after {tally.rows:,} rows were "
        f"read: {producer.acknowledged:,} events were acknowledged, {producer.failed:,} failed "
        f"and {producer.remaining:,} were left undelivered ({reason}); rerunning the replay "
        "is safe: the events get the same ids and the features drop the repeats",
        delivered=producer.acknowledged,
        failed=producer.failed + producer.remaining,
    )


def replay_file(
    settings: KafkaSettings,
    topic: str,
    path: str | os.PathLike[str],
    mapping: Mapping | None = None,
    *,
    fmt: str | None = None,
    separator: str | None = None,
    subscriptions: ReplayInput | None = None,
    unmatched_customers: str = "error",
    partitions: int = DEFAULT_PARTITIONS,
    skip_invalid: bool = False,
    rejects_path: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool = False,
    producer_config: dict[str, object] | None = None,
) -> ReplaySummary:
    """Produce the events of `path` (a file, directory or glob) to `topic`, keyed by customer id.

    With `subscriptions`, also that subscriptions table, after checking both
    against each other (see the module docstring). Creates the topic when
    missing (with `partitions`). Every message is checked against the event
    contract: by default invalid ones are produced anyway and counted (the
    extract quarantines them with their bytes); with `skip_invalid` they are
    written to `rejects_path` (JSON lines; default `default_rejects_path(path)`)
    instead. `limit` caps the rows read of each input. Any problem with the
    inputs raises `ReplayError` / `MappingError` before the cluster is contacted.
    """
    if limit is not None and limit < 1:
        raise ReplayError(f"--limit must be at least 1 (got {limit})")
    if batch_rows < 1:
        raise ReplayError(f"batch_rows must be at least 1 (got {batch_rows})")
    if unmatched_customers not in UNMATCHED_CUSTOMERS:
        raise ReplayError(
            f"--unmatched-customers {unmatched_customers!r} is not one of "
            f"{', '.join(UNMATCHED_CUSTOMERS)}"
        )
    started = time.perf_counter()
    events = Input(ReplayInput(path, mapping or ReplayMapping(), fmt, separator))
    inputs = [events]
    if subscriptions is not None:
        if events.is_subscriptions:
            raise ReplayError(
                "PATH is read as a subscriptions table (--subscriptions) and --subscriptions-file "
                "names another: give the events file as PATH and drop --subscriptions"
            )
        if not isinstance(subscriptions.mapping, SubscriptionMapping):
            raise ReplayError("the subscriptions input needs a SubscriptionMapping")
        inputs = [Input(subscriptions), events]
    for table in (i for i in inputs if i.is_subscriptions):
        check_subscription_dates(table, batch_rows, limit)
    keep = None
    unmatched: dict[str, int] = {}
    if subscriptions is not None:
        match = match_customers(
            customers(events, batch_rows, limit), customers(inputs[0], batch_rows, limit)
        )
        if not match.matched:
            if unmatched_customers == "error":
                raise ReplayError(unmatched_message(match, events, inputs[0]))
            unmatched = {
                "events_only": match.events_only.len(),
                "subscriptions_only": match.subscriptions_only.len(),
            }
            if unmatched_customers == "drop":
                keep = match.both

    rejects = None
    if skip_invalid:
        rejects = _Rejects(Path(rejects_path) if rejects_path else default_rejects_path(path))
    ensure_topic(settings, topic, partitions)

    now = now_ms()
    builders = {i: MessageBuilder(i.mapping, now, keep) for i in inputs}
    tally = _Tally()
    done = False
    producer = BulkProducer(settings, producer_config)
    bar = tqdm(
        total=_known_rows(inputs, limit) if progress else None,
        unit=" rows",
        unit_scale=True,
        disable=not progress,
        file=sys.stderr,
    )
    try:
        for ready in prefetched(_ready_batches(inputs, builders, batch_rows, limit, now)):
            _produce(ready, producer, topic, rejects, tally)
            bar.update(ready.rows)
            if producer.failed:  # stop at the first failure instead of queueing into it
                raise _Undelivered(producer.first_error.str())
        if producer.flush(FLUSH_SECONDS) or producer.failed:
            raise _Undelivered(
                producer.first_error.str()
                if producer.first_error
                else f"no acknowledgement within {FLUSH_SECONDS:.0f} s; is the broker reachable?"
            )
        done = True
    except _Undelivered as undelivered:
        producer.abandon()
        raise _failure(producer, topic, tally, str(undelivered)) from None
    except BaseException:
        producer.abandon()
        raise
    finally:
        bar.close()
        rejects_written = rejects.close(keep=done) if rejects is not None else None
    summary = ReplaySummary(
        source=os.fspath(path),
        topic=topic,
        files=sum(len(i.sources) for i in inputs),
        rows_read=tally.rows,
        events_produced=tally.produced,
        invalid_by_reason=dict(sorted(tally.invalid.items())),
        event_types={t: n for t, n in tally.event_types.most_common() if n > 0},
        renamed_event_types=dict(
            sorted({k: v for b in builders.values() for k, v in b.renamed.items()}.items())
        ),
        skipped_invalid=rejects.count if rejects is not None else 0,
        rejects_path=rejects_written,
        seconds=round(time.perf_counter() - started, 3),
        subscriptions_source=None if subscriptions is None else os.fspath(subscriptions.path),
        customers=tally.customers,
        first_ts=_iso(tally.ts_min),
        last_ts=_iso(tally.ts_max),
        unmatched_customers=unmatched,
        dropped_rows=tally.dropped,
    )
    summary.notes = _notes(summary, inputs)
    return summary


def iter_messages(
    path: str | os.PathLike[str],
    mapping: Mapping | None = None,
    *,
    fmt: str | None = None,
    separator: str | None = None,
    limit: int | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
) -> Iterator[list[tuple[bytes | None, bytes]]]:
    """The (key, value) messages `replay_file` would produce for `path`, batch by batch.

    Reads the file the same way but neither checks nor touches Kafka: a dry
    run, and what tests use.
    """
    source = Input(ReplayInput(path, mapping or ReplayMapping(), fmt, separator))
    builders = {source: MessageBuilder(source.mapping)}
    for ready in _ready_batches([source], builders, batch_rows, limit, now=None):
        yield list(zip(ready.keys, ready.values, strict=True))

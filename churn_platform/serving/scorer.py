"""The streaming scorer: customer-events in, churn-scores out, within milliseconds.

One process is one member of a Kafka consumer group (partitions are the unit
of parallelism: run more processes to scale out). For each micro-batch (what
arrived within `max_wait_ms`, at most `max_batch` messages) it

1. validates the messages with the extract's rules (`validate_batch`); bad
   ones go to `quarantine/scorer/` in the lake with their reason, as in the
   extract;
2. adds the valid events to the per-customer state (`serving.state`);
3. recomputes the touched customers' features with the batch pipeline's own
   `compute_features` (as of each event's date, with the events seen so far)
   and scores them with the champion in one call;
4. produces one message per event to `churn-scores` (key customer_id; the
   batch score fields plus the event's partition, offset, event_id and the
   event-to-score latency), waits for delivery, and only then commits the
   consumer offsets: at-least-once. A crash between produce and commit makes
   the next owner score those events again; duplicates carry the same
   (partition, offset), which identifies them.

On assignment it loads the partitions' history from the lake (bootstrap) and
starts at the older of the group's committed offset and the lake's ledger:
events the lake holds enter the state without being scored again, events past
the committed offset are scored. `champion.json` is polled; a new champion is
loaded without a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime

import msgspec
import numpy as np
import pyarrow as pa
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from threadpoolctl import threadpool_limits

from churn_platform.events.contract import EVENTS_TOPIC, QUARANTINE_SCHEMA, SCORES_TOPIC
from churn_platform.events.validation import now_ms, validate_batch
from churn_platform.features.definitions import FeatureSpec, compute_features
from churn_platform.kafka.admin import ensure_topic
from churn_platform.kafka.config import KafkaSettings
from churn_platform.lake.store import Lake
from churn_platform.ml import registry
from churn_platform.ml.score import RiskBands
from churn_platform.serving.state import CustomerState, bootstrap_state

log = logging.getLogger("churn_platform.serve")

DEFAULT_GROUP = "churn-platform-scorer"
SCORER_QUARANTINE_DIR = "quarantine/scorer"
INACTIVE_BAND = "inactive"


class StreamScoreMessage(msgspec.Struct, frozen=True):
    """A streaming score: the batch fields plus where the event came from and how long it took.

    `churn_probability` is null and `risk_band` is "inactive" when the event
    leaves the customer inactive (e.g. a cancellation): nobody to score.
    """

    customer_id: str
    as_of: date
    churn_probability: float | None
    risk_band: str
    model_version: str
    scored_at: datetime
    partition: int
    offset: int
    event_id: str
    latency_ms: float


def decode_stream_score(value: bytes) -> StreamScoreMessage:
    return msgspec.json.decode(value, type=StreamScoreMessage)


@dataclass(frozen=True)
class ServeConfig:
    topic: str = EVENTS_TOPIC
    scores_topic: str = SCORES_TOPIC
    group_id: str = DEFAULT_GROUP
    max_batch: int = 5_000
    max_wait_ms: int = 5
    reload_interval_s: float = 2.0
    log_interval_s: float = 10.0
    bands: RiskBands = field(default_factory=RiskBands)
    session_timeout_ms: int = 6_000
    bootstrap: bool = True


@dataclass
class ScorerStats:
    consumed: int = 0
    scored: int = 0
    rejected: int = 0
    inactive: int = 0
    replayed: int = 0  # events added to state without a score (already scored before)
    batches: int = 0
    # the latest latencies (bounded: a long-running scorer must not grow)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0


def spec_for(features: list[str]) -> FeatureSpec:
    """The activity types (and valued ones) a model's feature list implies."""
    types = tuple(f.removesuffix("_count_7d") for f in features if f.endswith("_count_7d"))
    valued = tuple(t for t in types if f"{t}_value_sum_28d" in features)
    return FeatureSpec(types, valued)


class ChampionWatcher:
    """The champion model, reloaded when `champion.json` changes (polled)."""

    def __init__(self, lake: Lake, interval_s: float) -> None:
        self.lake = lake
        self.interval_s = interval_s
        self.model: registry.LoadedModel | None = None
        self.spec: FeatureSpec | None = None
        self._marker: bytes | None = None
        self._checked = 0.0
        self.loads = 0  # models loaded (the first one included)

    def poll(self, force: bool = False) -> bool:
        """Reload if the champion changed; True when a (new) model was loaded."""
        now = time.monotonic()
        if not force and now - self._checked < self.interval_s:
            return False
        self._checked = now
        try:
            marker = self.lake.read_bytes(registry.CHAMPION_FILE)
        except FileNotFoundError:
            return False
        if marker == self._marker:
            return False
        model = registry.load_champion(self.lake)  # corrupt or untrusted: fails loudly
        self.model, self.spec, self._marker = model, spec_for(model.features), marker
        self.loads += 1
        log.info("serving champion %s (%d features)", model.version, len(model.features))
        return True


class StreamingScorer:
    def __init__(self, settings: KafkaSettings, lake: Lake, config: ServeConfig | None = None):
        self.settings = settings
        self.lake = lake
        self.config = config or ServeConfig()
        self.state = CustomerState()
        self.stats = ScorerStats()
        self.champion = ChampionWatcher(lake, self.config.reload_interval_s)
        self.score_from: dict[int, int] = {}  # partition → first offset still owed a score
        self.assigned: set[int] = set()
        self._stop = threading.Event()
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self._delivery_errors: list[str] = []
        self._committed: list[TopicPartition] = []  # the latest offsets committed per partition
        self._window = ScorerStats()
        self._window_started = time.monotonic()

    # --- lifecycle ----------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, max_seconds: float | None = None, ready: threading.Event | None = None) -> None:
        """Consume and score until `request_stop()` (or `max_seconds`)."""
        deadline = time.monotonic() + max_seconds if max_seconds else None
        self._wait_for_champion(deadline)
        if self.stopping:
            return
        ensure_topic(self.settings, self.config.scores_topic)
        self._producer = Producer(
            self.settings.client_config(
                **{"enable.idempotence": True, "acks": "all", "linger.ms": 2}
            )
        )
        self._consumer = Consumer(
            self.settings.client_config(
                **{
                    "group.id": self.config.group_id,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": self.config.session_timeout_ms,
                    "heartbeat.interval.ms": max(500, self.config.session_timeout_ms // 6),
                    "fetch.wait.max.ms": 10,
                    "isolation.level": "read_committed",
                }
            )
        )
        self._consumer.subscribe(
            [self.config.topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        log.info(
            "scorer %s consuming %s → %s",
            self.config.group_id,
            self.config.topic,
            self.config.scores_topic,
        )
        # Micro-batches are small: OpenMP threads in the model's predict cost more
        # to wake than they save (and spin against the broker on a busy machine).
        limits = threadpool_limits(limits=1)
        try:
            while not self.stopping and (deadline is None or time.monotonic() < deadline):
                if ready is not None and self.assigned:
                    ready.set()
                self.champion.poll()
                messages = self._consumer.consume(
                    num_messages=self.config.max_batch, timeout=self.config.max_wait_ms / 1000
                )
                if messages:
                    self._process(messages)
                self._maybe_log()
        finally:
            limits.restore_original_limits()
            self._close()

    def _wait_for_champion(self, deadline: float | None) -> None:
        waited = 0.0
        while not self.stopping and not self.champion.poll(force=True):
            if self.champion.model is not None:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            if waited % 10 == 0:
                log.warning(
                    "no champion model at %s yet: waiting (materialize churn_model)",
                    self.lake.url(registry.CHAMPION_FILE),
                )
            time.sleep(1.0)
            waited += 1

    def _close(self) -> None:
        if self._producer is not None:
            self._producer.flush(30)
        if self._consumer is not None:
            try:
                if self._committed:  # make the last asynchronous commit certain
                    self._consumer.commit(offsets=self._committed, asynchronous=False)
            except KafkaException as exc:
                log.warning("final offset commit: %s", exc)
            try:
                self._consumer.close()  # leaves the group at once: partitions move on
            except KafkaException as exc:
                log.warning("closing the consumer: %s", exc)
        self._log_line(final=True)

    # --- rebalancing --------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        numbers = [p.partition for p in partitions]
        committed = {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=30)}
        lake_start = {p: 0 for p in numbers}
        if self.config.bootstrap:
            started = time.perf_counter()
            boot = bootstrap_state(self.lake, self.config.topic, numbers)
            self.state.merge(boot.state)
            lake_start = boot.start_offsets
            log.info(
                "partitions %s: %d events of %d customers from %d lake files in %.1f s",
                numbers,
                boot.events,
                len(boot.state),
                boot.files,
                time.perf_counter() - started,
            )
        for tp in partitions:
            owed = committed.get(tp.partition, -1)
            held = lake_start.get(tp.partition, 0)
            if owed is None or owed < 0:
                owed = held  # never scored here: the lake's history is context, not news
            tp.offset = min(owed, held)
            self.score_from[tp.partition] = owed
            log.info(
                "partition %d: reading from %d, scoring from %d", tp.partition, tp.offset, owed
            )
        self.assigned.update(numbers)
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Every batch is produced before the next poll, so nothing is pending; make
        # the partitions' last asynchronous commit certain before the next owner reads it.
        revoked = {p.partition for p in partitions}
        mine = [tp for tp in self._committed if tp.partition in revoked]
        if mine:
            try:
                consumer.commit(offsets=mine, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revoke: %s", exc)
        self.assigned.difference_update(revoked)

    # --- one micro-batch ------------------------------------------------------------

    def _process(self, messages: list) -> None:
        values, metas = [], []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", error)
                continue
            values.append(message.value())
            metas.append(message)
        if not metas:
            return
        received_ms = now_ms()
        batch = validate_batch(values, now=received_ms)
        self.stats.consumed += len(metas)
        self._window.consumed += len(metas)
        if batch.rejects:
            self._quarantine(batch.rejects, metas)

        events = batch.events
        positions = batch.indices.to_pylist()
        ts_ms = events.column("ts").cast(pa.int64()).to_pylist()
        rows = list(
            zip(
                events.column("event_id").to_pylist(),
                events.column("customer_id").to_pylist(),
                events.column("event_type").to_pylist(),
                ts_ms,
                events.column("value").to_pylist(),
                events.column("attributes").to_pylist(),
                strict=True,
            )
        )
        self.state.add(rows)
        owed = [
            (row, metas[pos])
            for row, pos in zip(rows, positions, strict=True)
            if metas[pos].offset() >= self.score_from.get(metas[pos].partition(), 0)
        ]
        replayed = len(rows) - len(owed)
        self.stats.replayed += replayed
        if owed:
            self._score_and_produce(owed)
        self._commit(metas)
        self.stats.batches += 1

    def _score_and_produce(self, owed: list) -> None:
        model, spec = self.champion.model, self.champion.spec
        assert model is not None and spec is not None
        # each customer as of the date of its latest owed event
        latest: dict[str, int] = {}
        for row, _ in owed:
            latest[row[1]] = max(latest.get(row[1], 0), row[3])
        by_day: dict[date, list[str]] = defaultdict(list)
        for customer, ts in latest.items():
            by_day[datetime.fromtimestamp(ts / 1000, UTC).date()].append(customer)
        scores: dict[str, tuple[date, float]] = {}
        for as_of, customers in by_day.items():
            features = compute_features(self.state.frame(customers), as_of, spec)
            if features.height:
                probabilities = model.predict_proba(features)
                for customer, p in zip(features["customer_id"], probabilities, strict=True):
                    scores[customer] = (as_of, float(p))
        scored_at = datetime.now(UTC)
        scored_ms = int(scored_at.timestamp() * 1000)
        encode = msgspec.json.encode
        topic, bands = self.config.scores_topic, self.config.bands
        for row, message in owed:
            customer = row[1]
            hit = scores.get(customer)
            if hit is None:
                as_of, p, band = (
                    datetime.fromtimestamp(row[3] / 1000, UTC).date(),
                    None,
                    INACTIVE_BAND,
                )
                self.stats.inactive += 1
            else:
                as_of, p = hit
                band = bands.band(p)
            _, created = message.timestamp()
            latency = float(scored_ms - created) if created > 0 else 0.0
            value = encode(
                StreamScoreMessage(
                    customer_id=customer,
                    as_of=as_of,
                    churn_probability=p,
                    risk_band=band,
                    model_version=model.version,
                    scored_at=scored_at,
                    partition=message.partition(),
                    offset=message.offset(),
                    event_id=row[0],
                    latency_ms=latency,
                )
            )
            self._produce(topic, customer.encode(), value)
            self.stats.latencies_ms.append(latency)
            self._window.latencies_ms.append(latency)
        self._flush()
        self.stats.scored += len(owed)
        self._window.scored += len(owed)

    def _produce(self, topic: str, key: bytes, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=self._on_delivery)
                return
            except BufferError:
                self._producer.poll(0.05)

    def _on_delivery(self, err, _msg) -> None:
        if err is not None:
            self._delivery_errors.append(str(err))

    def _flush(self) -> None:
        remaining = self._producer.flush(30)
        if remaining or self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors[:3], []
            raise KafkaException(
                f"scores not delivered to {self.config.scores_topic!r} ({remaining} pending, "
                f"errors: {errors}); offsets not committed, the events will be scored again"
            )

    def _commit(self, metas: list) -> None:
        last: dict[int, int] = {}
        for message in metas:
            last[message.partition()] = max(last.get(message.partition(), -1), message.offset())
        offsets = [TopicPartition(self.config.topic, p, o + 1) for p, o in last.items()]
        self._consumer.commit(offsets=offsets, asynchronous=True)
        done = {tp.partition: tp for tp in self._committed}
        done.update({tp.partition: tp for tp in offsets})
        self._committed = list(done.values())

    def _quarantine(self, rejects: list[tuple[int, str, str]], metas: list) -> None:
        now = datetime.now(UTC)
        rows = [
            (
                metas[i].topic(),
                metas[i].partition(),
                metas[i].offset(),
                metas[i].key(),
                metas[i].value(),
                reason,
                detail,
                now,
            )
            for i, reason, detail in rejects
        ]
        columns = list(zip(*rows, strict=True))
        table = pa.table(
            [pa.array(c, type=f.type) for c, f in zip(columns, QUARANTINE_SCHEMA, strict=True)],
            schema=QUARANTINE_SCHEMA,
        )
        first, last = min(columns[2]), max(columns[2])
        partition = columns[1][0]
        path = (
            f"{SCORER_QUARANTINE_DIR}/{self.config.group_id}/"
            f"{self.config.topic}-p{partition}-{first}-{last}-{now.strftime('%Y%m%dT%H%M%S%f')}.parquet"
        )
        self.lake.write_parquet(path, table)
        self.stats.rejected += len(rows)
        self._window.rejected += len(rows)

    # --- reporting -------------------------------------------------------------------

    def _maybe_log(self) -> None:
        if time.monotonic() - self._window_started >= self.config.log_interval_s:
            self._log_line()

    def _log_line(self, final: bool = False) -> None:
        seconds = max(time.monotonic() - self._window_started, 1e-9)
        w = self._window
        log.info(
            "%s%d events (%.0f/s), %d scored, %d rejected, latency p50 %.1f ms p99 %.1f ms, "
            "%d customers in state, model %s",
            "final: " if final else "",
            w.consumed,
            w.consumed / seconds,
            w.scored,
            w.rejected,
            w.latency(50),
            w.latency(99),
            len(self.state),
            self.champion.model.version if self.champion.model else "(none)",
        )
        self._window = ScorerStats()
        self._window_started = time.monotonic()

"""The streaming scorer: customer-events in, churn-scores out, within milliseconds.

One process is one member of a Kafka consumer group (partitions are the unit
of parallelism: run more processes to scale out). For each micro-batch (what
arrived within `max_wait_ms`, at most `max_batch` messages) it

1. validates the messages with the extract's rules (`validate_batch`); bad
   ones go to the `quarantine/scorer` table in the lake with their reason, as in the
   extract;
2. adds the valid events to the per-customer state (`serving.state`);
3. recomputes the touched customers' features with the batch pipeline's own
   `compute_features` (as of each event's date, with the events seen so far)
   and scores them with the champion in one call;
4. produces one message per event to `churn-scores` (key customer_id; the
   batch score fields plus the event's partition, offset, event_id and the
   event-to-score latency) and goes on with the next micro-batch while the
   broker acknowledges them. A micro-batch's offsets are committed only once
   every one of its scores is delivered, and only after the batches before it:
   at-least-once. A crash between produce and commit makes the next owner
   score those events again; duplicates carry the same (partition, offset),
   which identifies them. A failed delivery stops the scorer (its offsets and
   all later ones stay uncommitted).

Waiting for each micro-batch's acknowledgements before reading the next one
(a `flush()` per batch) kept the scorer idle for a broker round trip per
batch; see benchmarks/streaming.py for what each choice here measured.

On assignment it loads the partitions' history from the lake (bootstrap) and
starts at the older of the group's committed offset and the lake's ledger:
events the lake holds enter the state without being scored again, events past
the committed offset are scored. `champion.json` is polled; a new champion is
loaded without a restart.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import msgspec
import numpy as np
import polars as pl
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from threadpoolctl import threadpool_limits

from churn_platform.events.contract import (
    EVENTS_TOPIC,
    SCORES_TOPIC,
    QuarantineRow,
    quarantine_table,
)
from churn_platform.events.validation import BatchReject, now_ms, validate_batch, validate_rows
from churn_platform.features.churn import CANCELLATION, ChurnDefinition
from churn_platform.features.customer import DAY_MS, customers_features
from churn_platform.features.definitions import FeatureSpec, compute_features
from churn_platform.kafka.admin import ensure_topic, is_unreachable
from churn_platform.kafka.config import KafkaSettings
from churn_platform.lake import tables
from churn_platform.lake.store import Lake
from churn_platform.ml import registry
from churn_platform.ml.flat import SmallBatchPredictor
from churn_platform.ml.frame import input_rows, model_input
from churn_platform.ml.reasons import Reasoner
from churn_platform.ml.score import RiskBands, ScoreReason
from churn_platform.serving.metrics import LatencyHistogram, consumer_lag
from churn_platform.serving.state import CustomerState, bootstrap_state

log = logging.getLogger("churn_platform.serve")


DEFAULT_GROUP = "churn-platform-scorer"
_EPOCH = date(1970, 1, 1)
INACTIVE_BAND = "inactive"
# a score as the scorer hands it on: as-of date, probability (None: inactive), band, reasons
Scored = tuple[date, float | None, str, list]


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
    reasons: list[ScoreReason] = []


def _freeze_heap() -> None:
    """Exempt what is alive now (modules, model, state) from the collector's full passes.

    A full collection walks every tracked object, over a hundred thousand after
    start-up, and the scorer stalled for it every few seconds (docs/benchmarks.md,
    Streaming).
    Frozen objects are never walked again; what the scorer allocates per batch
    is still collected.
    """
    gc.collect()
    gc.freeze()


def _next_offsets(partitions: np.ndarray, offsets: np.ndarray) -> dict[int, int]:
    """partition → one past the highest offset read: what a commit of these messages says."""
    return {int(p): int(offsets[partitions == p].max()) + 1 for p in np.unique(partitions)}


def decode_stream_score(value: bytes) -> StreamScoreMessage:
    return msgspec.json.decode(value, type=StreamScoreMessage)


@dataclass(frozen=True)
class ServeConfig:
    topic: str = EVENTS_TOPIC
    scores_topic: str = SCORES_TOPIC
    group_id: str = DEFAULT_GROUP
    # A big batch is cheap when there is a backlog: the features of a customer
    # cost the same for one new event as for fifty. Live, a batch is what
    # arrived while the previous one was scored (or within `max_wait_ms`).
    max_batch: int = 50_000
    # A live stream's request mix is what costs on a small machine (the broker's CPU
    # more than the scorer's: docs/benchmarks.md, Streaming). A 20 ms window, fetches
    # that wait up to 50 ms for data and scores produced in 10 ms batches halve the
    # scorer's CPU on a quiet stream (100/s) and take 0.1 core off the broker.
    max_wait_ms: int = 20
    fetch_wait_ms: int = 50
    linger_ms: int = 10
    # micro-batches of at most this many messages take the per-customer path (plain rows,
    # `features.customer`); bigger ones (a backlog) the frame path (Arrow,
    # `compute_features` once per as-of date), which costs less per event from about here
    small_batch: int = 1_000
    # delivered offsets are committed at most this often (a restart scores again at
    # most what was delivered since: at-least-once either way)
    commit_interval_ms: int = 1_000
    reload_interval_s: float = 2.0
    log_interval_s: float = 10.0
    lag_interval_s: float = 1.0  # how often the lag gauge is refreshed (no broker request)
    bands: RiskBands = field(default_factory=RiskBands)
    session_timeout_ms: int = 6_000
    bootstrap: bool = True
    # While no broker answers: probe again after 0.2, 0.4, … s, at most this long
    # apart (librdkafka's own reconnect backoff gets the same cap).
    retry_backoff_s: float = 0.2
    retry_backoff_max_s: float = 5.0


@dataclass
class ScorerStats:
    consumed: int = 0
    scored: int = 0
    rejected: int = 0
    inactive: int = 0
    replayed: int = 0  # events added to state without a score (already scored before)
    per_customer: int = 0  # customers scored from `features.customer` (not a frame)
    batches: int = 0
    busy_s: float = 0.0  # time spent on batches (not waiting for messages)
    # the latest latencies (bounded: a long-running scorer must not grow)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=200_000))

    def latency(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else 0.0


@dataclass
class _InFlight:
    """A micro-batch whose scores are on their way: its offsets wait for every delivery."""

    offsets: dict[int, int]  # partition → the next offset to commit
    pending: int = 0
    errors: list[str] = field(default_factory=list)

    def delivered(self, err, _msg) -> None:
        self.pending -= 1
        if err is not None:
            self.errors.append(str(err))


class ChampionWatcher:
    """The champion model, reloaded when `champion.json` changes (polled)."""

    def __init__(self, lake: Lake, interval_s: float) -> None:
        self.lake = lake
        self.interval_s = interval_s
        self.model: registry.LoadedModel | None = None
        self.spec: FeatureSpec | None = None
        self.churn: ChurnDefinition = CANCELLATION
        # the model's own arithmetic without scikit-learn's per-call overhead, when it
        # has the candidate's shape; checked against scikit-learn on its first batch
        self._fast: SmallBatchPredictor | None = None
        self._fast_verified = False
        # each score's reasons, from the same model input as the predictor's (None: the
        # model's shape has none, or its predictor was dropped)
        self.reasoner: Reasoner | None = None
        # features of a few customers from `features.customer`, checked against
        # `compute_features` on the first batch after each load
        self.per_customer_features = True
        self.features_verified = False
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
        self.spec = model.record.spec or FeatureSpec.from_columns(model.features)
        self.churn = model.record.churn
        self._fast = model.predictor_for(0)  # a micro-batch: the served arrays, if any
        self._fast_verified = False
        self.reasoner = Reasoner.of(model, self._fast) if self._fast is not None else None
        self.per_customer_features = True
        self.features_verified = False
        self._marker = marker
        self.loads += 1
        # last: a reader in another thread (the metrics endpoint) that sees the new model
        # sees everything that goes with it
        self.model = model
        gc.freeze()  # the new model is long-lived too (see _freeze_heap)
        log.info(
            "serving champion %s (%d features; churn: %s)",
            model.version,
            len(model.features),
            self.churn.describe(),
        )
        return True

    @property
    def uses_small_batch_predictor(self) -> bool:
        """Whether scores come from `small_batch_predictor` (else scikit-learn's estimator)."""
        return self._fast is not None

    def predict_proba(self, features: pl.DataFrame) -> np.ndarray:
        """The champion's P(churned) for each row of a feature table."""
        return self.score_frame(features, reasons=False)[0]

    def score_frame(
        self, features: pl.DataFrame, reasons: bool = True
    ) -> tuple[np.ndarray, list[list[dict]] | None]:
        """The champion's P(churned) for each row of a feature table, and their reasons
        (None without a reasoner)."""
        model = self.model
        assert model is not None
        fast = self._fast
        if fast is None:
            return model.estimator_proba(features), None
        x = model_input(features, model.features, self.spec)
        matrix = fast.matrix(x)
        leaves = fast.leaves(matrix)  # the probabilities' and the reasons' walk, done once
        probabilities = fast.probability(matrix, leaves)
        if not self._fast_verified:
            # against the estimator itself: the model's `predict_proba` of a small batch
            # walks the same arrays as `fast`, and would agree with them whatever they hold
            expected = model.estimator_proba(features)
            if not np.array_equal(probabilities, expected):
                log.warning(
                    "champion %s: the small-batch predictor differs from predict_proba "
                    "(max %.3g); using scikit-learn's estimator",
                    model.version,
                    float(np.abs(probabilities - expected).max()),
                )
                self._fast = None
                self.reasoner = None
                return expected, None
            self._fast_verified = True
        reasoner = self.reasoner
        if not reasons or reasoner is None:
            return probabilities, None
        return probabilities, reasoner.reasons(matrix, x, leaves)

    def score_rows(self, rows: list[dict]) -> tuple[np.ndarray, list[list[dict]] | None]:
        """`score_frame` of feature rows given as dicts (`customer_features`)."""
        model, spec = self.model, self.spec
        assert model is not None and spec is not None
        fast = self._fast
        if fast is None or not self._fast_verified:
            # the first batch goes through the frame path, which checks the predictor
            return self.score_frame(pl.DataFrame(rows, schema=spec.schema(), orient="row"))
        inputs = input_rows(rows, model.features, spec)
        matrix = fast.matrix_rows(inputs)
        leaves = fast.leaves(matrix)
        probabilities = fast.probability(matrix, leaves)
        reasoner = self.reasoner
        return probabilities, None if reasoner is None else reasoner.rows(inputs, matrix, leaves)

    def verify_features(self, rows: list[dict], expected: list[pl.DataFrame]) -> bool:
        """Whether `customer_features` gave `compute_features`'s rows; if not, it is not
        used again for this champion."""
        want = {r["customer_id"]: r for frame in expected for r in frame.to_dicts()}
        got = {r["customer_id"]: r for r in rows}
        if not want and not got:
            return True  # nobody active: nothing checked yet
        problem = None
        if set(want) != set(got):
            problem = f"active customers differ: {sorted(set(want) ^ set(got))[:3]}"
        else:
            for customer, row in want.items():
                bad = [k for k, v in row.items() if not _same_value(v, got[customer][k])]
                if bad:
                    problem = f"customer {customer}: {bad[:3]}"
                    break
        if problem is not None:
            log.warning(
                "champion %s: per-customer features differ from compute_features (%s); "
                "using compute_features",
                self.model.version if self.model else "?",
                problem,
            )
            self.per_customer_features = False
            return False
        self.features_verified = True
        return True


def _same_value(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=1e-12, abs_tol=0.0)
    return a == b


def _by_date(latest: dict[str, date]) -> dict[date, list[str]]:
    """customer → as-of date, turned into as-of date → customers."""
    by_date: dict[date, list[str]] = {}
    for customer, as_of in latest.items():
        by_date.setdefault(as_of, []).append(customer)
    return by_date


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
        self._inflight: deque[_InFlight] = deque()  # produced, oldest first
        self._delivered: dict[int, int] = {}  # partition → next offset, all scores delivered
        self._committed: dict[int, int] = {}  # partition → offset last sent in a commit
        self._commit_due = 0.0
        # an outage: the first "broker unreachable" error seen, and when
        self._suspect: KafkaError | None = None
        self._down_since: float | None = None
        self._backoff = self.config.retry_backoff_s
        self.outages: list[float] = []  # seconds each logged outage lasted
        self._window = ScorerStats()
        self._window_started = time.monotonic()
        # what the metrics endpoint shows beyond `stats` (serving/metrics.py)
        self.latency = LatencyHistogram()
        self.rejected_by_reason: Counter[str] = Counter()
        self.lag: dict[int, int] = {}  # partition → messages beyond what was read
        self._positions: dict[int, int] = {}  # partition → next offset to read
        self._lag_due = 0.0

    # --- lifecycle ----------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def reachable(self) -> int:
        """1, or 0 during an outage (the cluster did not answer)."""
        return 0 if self._down_since is not None else 1

    def run(self, max_seconds: float | None = None, ready: threading.Event | None = None) -> None:
        """Consume and score until `request_stop()` (or `max_seconds`)."""
        deadline = time.monotonic() + max_seconds if max_seconds else None
        self._wait_for_champion(deadline)
        if self.stopping:
            return
        ensure_topic(self.settings, self.config.scores_topic)
        reconnect = {
            "reconnect.backoff.max.ms": int(1000 * self.config.retry_backoff_max_s),
            "error_cb": self._on_client_error,
        }
        self._producer = Producer(
            self.settings.client_config(
                **{
                    "enable.idempotence": True,
                    "acks": "all",
                    "linger.ms": self.config.linger_ms,
                    **reconnect,
                }
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
                    "fetch.wait.max.ms": self.config.fetch_wait_ms,
                    # librdkafka's default (1 s) pauses a partition whenever its local
                    # queue is full: a backlog would be read in stalls
                    "fetch.queue.backoff.ms": 10,
                    "isolation.level": "read_committed",
                    "on_commit": self._on_commit,
                    **reconnect,
                }
            )
        )
        self._consumer.subscribe(
            [self.config.topic], on_assign=self._on_assign, on_revoke=self._on_revoke
        )
        log.info(
            "scorer %s consuming %s → %s (polars threads %d)",
            self.config.group_id,
            self.config.topic,
            self.config.scores_topic,
            pl.thread_pool_size(),
        )
        # Micro-batches are small: OpenMP threads in the model's predict cost more
        # to wake than they save (and spin against the broker on a busy machine).
        limits = threadpool_limits(limits=1)
        window = self.config.max_wait_ms / 1000
        try:
            while not self.stopping and (deadline is None or time.monotonic() < deadline):
                if ready is not None and self.assigned:
                    ready.set()
                self.champion.poll()
                # Always a full window, even right after a long batch: taking what is
                # queued at once made more, smaller batches and was no faster here.
                messages = self._consumer.consume(
                    num_messages=self.config.max_batch, timeout=window
                )
                started = time.monotonic()
                if messages:
                    self._process(messages)
                self._settle()
                if self._suspect is not None:
                    self._wait_for_broker()
                finished = time.monotonic()
                self.stats.busy_s += finished - started
                self._window.busy_s += finished - started
                self._maybe_log()
                self._refresh_lag(finished)
        finally:
            limits.restore_original_limits()
            self._close()

    # --- broker outages ----------------------------------------------------------

    def _on_client_error(self, error: KafkaError) -> None:
        """librdkafka's error callback (runs inside consume/poll, on this thread)."""
        if is_unreachable(error):
            self._suspect = self._suspect or error
        else:
            log.warning("Kafka client error from %s: %s", self.settings.bootstrap_servers, error)

    def _wait_for_broker(self) -> None:
        """Probe the cluster; while it does not answer, wait with bounded exponential backoff.

        The probe (a metadata request) is the wait: it returns as soon as a
        broker answers. Scores already produced wait in the producer's queue
        and go out when the broker is back; nothing is committed meanwhile.
        """
        try:
            self._consumer.list_topics(self.config.topic, timeout=self._backoff)
        except KafkaException as exc:
            now = time.monotonic()
            if self._down_since is None:
                self._down_since = now - self._backoff
                log.warning(
                    "Kafka at %s is unreachable (%s): scoring paused, retrying with backoff "
                    "%.1f s up to %.1f s; scores already produced wait in the producer queue",
                    self.settings.bootstrap_servers,
                    self._suspect.str() if self._suspect else exc,
                    self.config.retry_backoff_s,
                    self.config.retry_backoff_max_s,
                )
            else:
                log.warning(
                    "Kafka at %s still unreachable after %.1f s; next try in %.1f s",
                    self.settings.bootstrap_servers,
                    now - self._down_since,
                    min(2 * self._backoff, self.config.retry_backoff_max_s),
                )
            self._backoff = min(2 * self._backoff, self.config.retry_backoff_max_s)
            return
        if self._down_since is not None:
            seconds = time.monotonic() - self._down_since
            self.outages.append(seconds)
            log.info(
                "Kafka at %s is reachable again after %.1f s: scoring resumes",
                self.settings.bootstrap_servers,
                seconds,
            )
        self._suspect, self._down_since = None, None
        self._backoff = self.config.retry_backoff_s

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """A failed commit is sent again at the next settle (not only when offsets move)."""
        failed = [tp.partition for tp in partitions if error is not None or tp.error is not None]
        for p in failed:
            self._committed.pop(p, None)
        if failed and self._down_since is None:
            log.warning("offset commit of partitions %s failed (%s): will retry", failed, error)

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
            try:
                self._settle(commit=False)
            except KafkaException as exc:  # commit what was delivered before the failure
                log.error("%s", exc)
        if self._consumer is not None:
            try:
                self._commit_now(set(self._delivered), asynchronous=False)
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
            held = self.state.warm_histories()
            lake_start = boot.start_offsets
            log.info(
                "partitions %s: %d events of %d customers from %d lake files in %.1f s "
                "(%d customers' events held as arrays)",
                numbers,
                boot.events,
                len(boot.state),
                boot.files,
                time.perf_counter() - started,
                held,
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
            self._positions[tp.partition] = tp.offset
        self.assigned.update(numbers)
        self._lag_due = 0.0
        consumer.assign(partitions)
        _freeze_heap()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Wait for the scores still on their way, then commit what was delivered,
        # synchronously, before the next owner reads the partitions' offsets.
        revoked = {p.partition for p in partitions}
        if self._producer is not None:
            self._producer.flush(30)
            self._settle(commit=False)
        try:
            self._commit_now(revoked, asynchronous=False, consumer=consumer)
        except KafkaException as exc:
            log.warning("commit on revoke: %s", exc)
        for partition in revoked:
            self._delivered.pop(partition, None)
            self._committed.pop(partition, None)
            self._positions.pop(partition, None)
        self.assigned.difference_update(revoked)
        self.lag = {p: n for p, n in self.lag.items() if p not in revoked}

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
        # a handful of messages (a live stream): plain rows and per-customer features;
        # more (a backlog): Arrow, polars and one `compute_features` per as-of date
        small = len(metas) <= self.config.small_batch
        if small:
            rows, kept, rejects = validate_rows(values, now=received_ms)
        else:
            batch = validate_batch(values, now=received_ms)
            rejects = batch.rejects
        self.stats.consumed += len(metas)
        self._window.consumed += len(metas)
        if rejects:
            self._quarantine(rejects, metas)

        partitions = np.fromiter((m.partition() for m in metas), np.int64, len(metas))
        offsets = np.fromiter((m.offset() for m in metas), np.int64, len(metas))
        inflight = _InFlight(_next_offsets(partitions, offsets))
        self._positions.update(inflight.offsets)
        if small and rows:
            self.state.append_rows(rows)
            positions = np.array(kept, dtype=np.int64)
            owed = self._owed(partitions[positions], offsets[positions])
            if owed is None:  # every event (the usual case)
                owed = np.arange(len(positions))
            self.stats.replayed += len(positions) - len(owed)
            if len(owed):
                owed_rows = [rows[i] for i in owed.tolist()]
                customers = [r[1] for r in owed_rows]
                event_days = [r[3] // DAY_MS for r in owed_rows]
                latest: dict[str, int] = {}
                for customer, day in zip(customers, event_days, strict=True):
                    if latest.get(customer, -1) < day:
                        latest[customer] = day
                scores = self._scores_of({c: _EPOCH + timedelta(days=d) for c, d in latest.items()})
                self._produce_scores(
                    customers,
                    [r[0] for r in owed_rows],
                    lambda: [_EPOCH + timedelta(days=d) for d in event_days],
                    positions[owed],
                    metas,
                    scores,
                    inflight,
                )
        elif not small and batch.events.num_rows:
            frame = pl.from_arrow(batch.events)
            self.state.add_events(frame)
            positions = batch.indices.to_numpy()
            owed = self._owed(partitions[positions], offsets[positions])
            if owed is None:
                owed = np.arange(len(positions))
            self.stats.replayed += len(positions) - len(owed)
            if len(owed):
                rows_frame = frame[owed] if len(owed) < frame.height else frame
                # each customer as of the date of its latest owed event, one call per date
                latest_frame = rows_frame.group_by("customer_id").agg(
                    pl.col("ts").max().dt.date().alias("as_of")
                )
                by_date: dict[date, list[str]] = {}
                for (as_of,), group in latest_frame.group_by("as_of"):
                    by_date[as_of] = group["customer_id"].to_list()
                self._produce_scores(
                    rows_frame["customer_id"].to_list(),
                    rows_frame["event_id"].to_list(),
                    lambda: rows_frame["ts"].dt.date().to_list(),
                    positions[owed],
                    metas,
                    self._scores_by_frame(by_date),
                    inflight,
                )
        # only now: a batch that failed half-way must never count as delivered
        self._inflight.append(inflight)
        self.stats.batches += 1
        self._window.batches += 1

    def _owed(self, partitions: np.ndarray, offsets: np.ndarray) -> np.ndarray | None:
        """Rows whose event is owed a score (None: all of them); the others were scored before."""
        score_from = self.score_from
        if all(
            offsets[partitions == p].min() >= score_from.get(int(p), 0)
            for p in np.unique(partitions)
        ):
            return None
        floor = np.array([score_from.get(int(p), 0) for p in partitions], dtype=np.int64)
        return np.flatnonzero(offsets >= floor)

    def _scores_of(self, latest: dict[str, date]) -> dict[str, Scored]:
        """Scores of a few customers, each as of its date: per-customer features
        (`features.customer`, checked against `compute_features` on the first batch
        of each champion), one predict call for all of them."""
        champion, state = self.champion, self.state
        spec, churn = champion.spec, champion.churn
        assert spec is not None
        if not champion.per_customer_features:
            return self._scores_by_frame(_by_date(latest))
        items = []
        slow: dict[str, date] = {}
        for customer, as_of in latest.items():
            history = state.history(customer)
            if history.repeats:  # a repeated event id: compute_features counts it once
                slow[customer] = as_of
            else:
                items.append((customer, history, as_of))
        rows = [row for row in customers_features(items, spec, churn) if row is not None]
        if not champion.features_verified:
            checked = {c: a for c, a in latest.items() if c not in slow}
            expected = self._features_by_frame(_by_date(checked))
            if not champion.verify_features(rows, expected):
                return self._scores_by_frame(_by_date(latest))
        scores = self._scores_by_frame(_by_date(slow)) if slow else {}
        if rows:
            self.stats.per_customer += len(rows)
            bands = self.config.bands
            probabilities, reasons = champion.score_rows(rows)
            for i, (row, p) in enumerate(zip(rows, probabilities.tolist(), strict=True)):
                scores[row["customer_id"]] = (
                    row["as_of"],
                    p,
                    bands.band(p),
                    [] if reasons is None else reasons[i],
                )
        return scores

    def _features_by_frame(self, by_date: dict[date, list[str]]) -> list[pl.DataFrame]:
        champion = self.champion
        return [
            compute_features(self.state.frame(customers), as_of, champion.spec, champion.churn)
            for as_of, customers in by_date.items()
        ]

    def _scores_by_frame(self, by_date: dict[date, list[str]]) -> dict[str, Scored]:
        """Scores of customers grouped by as-of date: `compute_features` once per date."""
        scores: dict[str, Scored] = {}
        bands = self.config.bands
        for features in self._features_by_frame(by_date):
            if features.height:
                as_of = features["as_of"][0]
                probabilities, reasons = self.champion.score_frame(features)
                for i, (customer, p) in enumerate(
                    zip(features["customer_id"], probabilities.tolist(), strict=True)
                ):
                    scores[customer] = (
                        as_of,
                        p,
                        bands.band(p),
                        [] if reasons is None else reasons[i],
                    )
        return scores

    def _produce_scores(
        self,
        customers: list[str],
        event_ids: list[str],
        event_dates: Callable[[], list[date]],
        positions: np.ndarray,
        metas: list,
        scores: dict[str, Scored],
        inflight: _InFlight,
    ) -> None:
        """One message per owed event: its customer's score (or "inactive")."""
        model = self.champion.model
        assert model is not None
        scored_at = datetime.now(UTC)
        scored_ms = int(scored_at.timestamp() * 1000)
        encode = msgspec.json.encode
        topic, version = self.config.scores_topic, model.version
        produce, delivered = self._producer.produce, inflight.delivered
        latencies: list[float] = []
        inactive = 0
        dates = None
        for i, (customer, event_id, position) in enumerate(
            zip(customers, event_ids, positions.tolist(), strict=True)
        ):
            hit = scores.get(customer)
            if hit is None:  # inactive after its events (e.g. cancelled): nobody to score
                if dates is None:
                    dates = event_dates()
                hit = (dates[i], None, INACTIVE_BAND, [])
                inactive += 1
            message = metas[position]
            created = message.timestamp()[1]
            latency = float(scored_ms - created) if created > 0 else 0.0
            value = encode(
                StreamScoreMessage(
                    customer_id=customer,
                    as_of=hit[0],
                    churn_probability=hit[1],
                    risk_band=hit[2],
                    model_version=version,
                    scored_at=scored_at,
                    partition=message.partition(),
                    offset=message.offset(),
                    event_id=event_id,
                    latency_ms=latency,
                    reasons=hit[3],
                )
            )
            key = customer.encode()
            inflight.pending += 1
            try:
                produce(topic, value, key, on_delivery=delivered)
            except BufferError:
                self._produce_when_room(topic, value, key, delivered)
            latencies.append(latency)
        self.stats.inactive += inactive
        self.latency.observe_ms(latencies)
        self.stats.latencies_ms.extend(latencies)
        self._window.latencies_ms.extend(latencies)
        self.stats.scored += len(latencies)
        self._window.scored += len(latencies)
        self._producer.poll(0)  # serve delivery reports of earlier batches

    def _produce_when_room(self, topic: str, value: bytes, key: bytes, on_delivery) -> None:
        while True:
            self._producer.poll(0.05)
            try:
                self._producer.produce(topic, value, key, on_delivery=on_delivery)
                return
            except BufferError:
                continue

    def _settle(self, commit: bool = True) -> None:
        """Take in delivery reports; batches fully delivered, oldest first, may be committed.

        A failed delivery raises: neither its batch's offsets nor any later
        batch's are committed, so the next owner scores those events again.
        """
        if self._producer is None:
            return
        self._producer.poll(0)
        inflight = self._inflight
        while inflight and inflight[0].pending <= 0:
            done = inflight.popleft()
            if done.errors:
                inflight.clear()
                raise KafkaException(
                    f"scores not delivered to {self.config.scores_topic!r} (errors: "
                    f"{done.errors[:3]}); offsets not committed, the events will be scored again"
                )
            self._delivered.update(done.offsets)
        if commit and time.monotonic() >= self._commit_due:
            self._commit_now(set(self._delivered), asynchronous=True)

    def _commit_now(
        self, partitions: set[int], asynchronous: bool, consumer: Consumer | None = None
    ) -> None:
        """Commit the delivered offsets of `partitions` that moved since the last commit."""
        consumer = consumer or self._consumer
        moved = {
            p: o
            for p, o in self._delivered.items()
            if p in partitions
            and p in self.assigned
            and (asynchronous is False or self._committed.get(p) != o)
        }
        if not moved or consumer is None:
            return
        offsets = [TopicPartition(self.config.topic, p, o) for p, o in moved.items()]
        consumer.commit(offsets=offsets, asynchronous=asynchronous)
        self._committed.update(moved)
        self._commit_due = time.monotonic() + self.config.commit_interval_ms / 1000

    def _quarantine(self, rejects: list[BatchReject], metas: list) -> None:
        now = datetime.now(UTC)
        rows = [
            QuarantineRow(
                topic=metas[r.position].topic(),
                partition=metas[r.position].partition(),
                offset=metas[r.position].offset(),
                key=metas[r.position].key(),
                value=metas[r.position].value(),
                reason=r.reason,
                detail=r.detail,
                quarantined_at=now,
            )
            for r in rejects
        ]
        table = quarantine_table(rows)
        offsets = [row.offset for row in rows]
        first, last = min(offsets), max(offsets)
        spec = tables.SCORER_QUARANTINE
        tables.create(self.lake, spec, spec.schema)  # before its first data file
        written = tables.write_file(
            self.lake,
            spec,
            table,
            {"group_id": self.config.group_id},
            f"{self.config.topic}-p{rows[0].partition}-{first}-{last}",
        )
        tables.commit(self.lake, spec, [written], schema=spec.schema)
        self.stats.rejected += len(rows)
        self.rejected_by_reason.update(row.reason for row in rows)
        self._window.rejected += len(rows)

    # --- reporting -------------------------------------------------------------------

    def _refresh_lag(self, now: float) -> None:
        """The lag gauge, from the high watermarks the consumer cached from its fetches."""
        if now < self._lag_due or self._consumer is None:
            return
        self._lag_due = now + self.config.lag_interval_s
        highs = {}
        for partition in self.assigned:
            try:
                _low, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.config.topic, partition), cached=True
                )
            except KafkaException:
                continue
            highs[partition] = high
        self.lag = consumer_lag(highs, self._positions)

    def _maybe_log(self) -> None:
        if time.monotonic() - self._window_started >= self.config.log_interval_s:
            self._log_line()

    def _log_line(self, final: bool = False) -> None:
        seconds = max(time.monotonic() - self._window_started, 1e-9)
        w = self._window
        log.info(
            "%s%d events (%.0f/s), %d scored, %d rejected, latency p50 %.1f ms p99 %.1f ms, "
            "%d batches (%.1f ms each, busy %.0f%%), %d customers in state, model %s",
            "final: " if final else "",
            w.consumed,
            w.consumed / seconds,
            w.scored,
            w.rejected,
            w.latency(50),
            w.latency(99),
            w.batches,
            1000 * w.busy_s / max(w.batches, 1),
            100 * w.busy_s / seconds,
            len(self.state),
            self.champion.model.version if self.champion.model else "(none)",
        )
        self._window = ScorerStats()
        self._window_started = time.monotonic()

"""Read exact offset ranges of a topic: from given start offsets to partition EOF.

The reader uses `assign()` (no consumer-group join: we own the offsets) and
`enable.partition.eof`. A partition's range ends at the offset of the first EOF
event it reports (or at a per-partition cap); the partition is done once every
message below that offset has been read, because the EOF event can overtake
messages still queued locally. The high watermark is not trusted: the embedded
broker reports it from the last batch's base offset.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from churn_platform.kafka.config import KafkaSettings

# librdkafka's default fetch.queue.backoff.ms (1000) pauses a partition for a
# second whenever its local queue is full; at 10 ms a consume loop reads much
# faster (docs/benchmarks.md, Extract). Bigger fetches cut round trips on loopback
# and real clusters.
FAST_CONSUMER_CONFIG = {
    "enable.partition.eof": True,
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    # An offset outside the partition is an error, never a silent jump to the end.
    "auto.offset.reset": "error",
    "fetch.queue.backoff.ms": 10,
    "fetch.max.bytes": 52_428_800,
    "max.partition.fetch.bytes": 10_485_760,
    "queued.max.messages.kbytes": 65_536,
    "fetch.wait.max.ms": 100,
}
# How long one `consume()` may block. librdkafka returns a batch only when it is
# full or this has passed, so a read's last, partial batch waits all of it (at
# 0.5 s, idle time at the end of every extract: docs/benchmarks.md, Extract).
# A chunk still gathers `chunk_size` messages over as many calls as it takes.
CONSUME_WAIT_S = 0.05


_error = Message.error
_value = Message.value
_partition = Message.partition
_offset = Message.offset


def _positions(batch: list[Message]) -> tuple[np.ndarray, np.ndarray]:
    """Each message's partition and offset (map() over the method descriptors loops in C)."""
    n = len(batch)
    return (
        np.fromiter(map(_partition, batch), np.int32, n),
        np.fromiter(map(_offset, batch), np.int64, n),
    )


def _last_offsets(partitions: np.ndarray, offsets: np.ndarray) -> dict[int, int]:
    """partition → its last offset in a batch.

    A batch holds runs of one partition's messages, each in offset order (as
    librdkafka queues them), so the end of a partition's last run is its highest.
    """
    if not len(partitions):
        return {}
    ends = np.flatnonzero(np.append(partitions[1:] != partitions[:-1], True))
    return dict(zip(partitions[ends].tolist(), offsets[ends].tolist(), strict=True))


class ReadError(RuntimeError):
    """The range could not be read; the message says why and what to do."""


def fast_consumer(settings: KafkaSettings, group_id: str, **overrides: object) -> Consumer:
    """A consumer tuned for reading ranges fast; `group_id` is used only for commits."""
    return Consumer(
        settings.client_config(**{"group.id": group_id, **FAST_CONSUMER_CONFIG, **overrides})
    )


@dataclass
class Chunk:
    """Messages read in one go: values, partitions (int32) and offsets (int64) side by side.

    `messages` keeps the Message objects so the rare rejected message can give
    back its key without every message paying for it.
    """

    values: list[bytes | None]
    partitions: np.ndarray
    offsets: np.ndarray
    messages: list[Message]

    def __len__(self) -> int:
        return len(self.values)


@dataclass
class OffsetRangeReader:
    """Read `topic` partitions from `start_offsets` to EOF (or `max_per_partition`)."""

    settings: KafkaSettings
    topic: str
    start_offsets: dict[int, int]
    group_id: str = "churn-platform-extract"
    max_per_partition: int | None = None
    chunk_size: int = 20_000
    stall_timeout: float = 30.0
    eof_grace: float = 1.0
    next_offsets: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.next_offsets = dict(self.start_offsets)

    def chunks(self) -> Iterator[Chunk]:
        """Yield chunks of about `chunk_size` messages until every partition is done."""
        if self.max_per_partition is not None and self.max_per_partition < 1:
            raise ValueError(f"max_per_partition must be >= 1, got {self.max_per_partition}")
        remaining = set(self.start_offsets)
        if not remaining:
            return
        consumer = fast_consumer(self.settings, self.group_id)
        # stop[p]: the first offset not to read (the cap, then also the EOF offset)
        stop = {p: float("inf") for p in remaining}
        if self.max_per_partition is not None:
            stop = {p: start + self.max_per_partition for p, start in self.start_offsets.items()}
        try:
            consumer.assign(
                [TopicPartition(self.topic, p, offset) for p, offset in self.start_offsets.items()]
            )
            self._finish(
                consumer, remaining, [p for p in remaining if self.next_offsets[p] >= stop[p]]
            )
            eof_seen: dict[int, float] = {}  # partition → when its EOF event came
            last_seen: dict[int, float] = {}  # partition → when its last message came
            values: list[bytes | None] = []
            partitions: list[np.ndarray] = []
            offsets: list[np.ndarray] = []
            messages: list[Message] = []
            last_progress = time.monotonic()
            while remaining:
                batch = consumer.consume(min(self.chunk_size, 100_000), CONSUME_WAIT_S)
                now = time.monotonic()
                if batch:
                    last_progress = now
                elif now - last_progress > self.stall_timeout:
                    raise ReadError(
                        f"no data and no end-of-partition from Kafka at "
                        f"{self.settings.bootstrap_servers} for {self.stall_timeout:.0f} s while "
                        f"reading {self.topic!r} partitions {sorted(remaining)}: is the broker up?"
                    )
                if any(map(_error, batch)):
                    errors = [m for m in batch if m.error() is not None]
                    batch = [m for m in batch if m.error() is None]
                    for m in errors:
                        p = self._on_error(m)
                        if p is not None and p in remaining and p not in eof_seen:
                            # The EOF event can overtake messages of its partition
                            # still queued locally: the partition is done only when
                            # everything below the EOF offset has been read.
                            eof_seen[p] = now
                            stop[p] = min(stop[p], m.offset())
                if batch:
                    parts, offs = _positions(batch)
                    last = _last_offsets(parts, offs)
                    if any(o >= stop[p] for p, o in last.items()):
                        # past a cap or an EOF: newer data belongs to the next run
                        limits = np.full(len(parts), np.inf)
                        for p in last:
                            limits[parts == p] = stop[p]
                        keep = offs < limits
                        batch = [batch[i] for i in np.flatnonzero(keep).tolist()]
                        parts, offs = parts[keep], offs[keep]
                        last = _last_offsets(parts, offs)
                    values += map(_value, batch)
                    partitions.append(parts)
                    offsets.append(offs)
                    messages += batch
                    for p, offset in last.items():
                        self.next_offsets[p] = offset + 1
                        last_seen[p] = now
                done = [p for p in remaining if self.next_offsets[p] >= stop[p]]
                for p in remaining.intersection(eof_seen).difference(done):
                    if now - max(eof_seen[p], last_seen.get(p, 0.0)) > self.eof_grace:
                        # offsets between the last message and EOF hold no data
                        # (transaction markers, compacted records): the range ends at EOF
                        self.next_offsets[p] = max(self.next_offsets[p], stop[p])
                        done.append(p)
                self._finish(consumer, remaining, done)
                if len(values) >= self.chunk_size or (not remaining and values):
                    yield Chunk(
                        values, np.concatenate(partitions), np.concatenate(offsets), messages
                    )
                    values, partitions, offsets, messages = [], [], [], []
        finally:
            consumer.close()

    def _finish(self, consumer: Consumer, remaining: set[int], done: list[int]) -> None:
        if done:
            remaining.difference_update(done)
            consumer.pause([TopicPartition(self.topic, p) for p in done])

    def _on_error(self, message: Message) -> int | None:
        """The partition of an EOF event; raises on errors that stop the read."""
        err = message.error()
        code = err.code()
        if code == KafkaError._PARTITION_EOF:
            return message.partition()
        if code in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
            p = message.partition()
            raise ReadError(
                f"offset {self.next_offsets.get(p)} of {self.topic!r} partition {p} is outside "
                f"what Kafka at {self.settings.bootstrap_servers} holds ({err.str()}): the topic was "
                "recreated or its data expired. If that is expected, reset the lake's offsets "
                "(`churn-platform extract --reset-offsets`) to read from the earliest offset."
            )
        if err.fatal() or code in (
            KafkaError.UNKNOWN_TOPIC_OR_PART,
            KafkaError._UNKNOWN_TOPIC,
            KafkaError._UNKNOWN_PARTITION,
            KafkaError.TOPIC_AUTHORIZATION_FAILED,
            KafkaError.SASL_AUTHENTICATION_FAILED,
        ):
            raise ReadError(
                f"reading {self.topic!r} from {self.settings.bootstrap_servers} failed: {err.str()}"
            )
        # Anything else (a transient broker or network error) librdkafka retries itself.
        return None

"""Read exact offset ranges of a topic: from given start offsets to partition EOF.

The reader uses `assign()` (no consumer-group join: we own the offsets) and
`enable.partition.eof`, and stops each partition at the EOF it first reaches,
or at a per-partition cap. It does not trust the high watermark, which the
embedded broker reports from the last batch's base offset.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from churn_platform.kafka.config import KafkaSettings

# librdkafka's default fetch.queue.backoff.ms (1000) pauses a partition for a
# second whenever its local queue is full; at 10 ms a consume loop reads about
# twice as fast. Bigger fetches cut round trips on loopback and real clusters.
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


class ReadError(RuntimeError):
    """The range could not be read; the message says why and what to do."""


def fast_consumer(settings: KafkaSettings, group_id: str, **overrides: object) -> Consumer:
    """A consumer tuned for reading ranges fast; `group_id` is used only for commits."""
    return Consumer(
        settings.client_config(**{"group.id": group_id, **FAST_CONSUMER_CONFIG, **overrides})
    )


@dataclass
class Chunk:
    """Messages read in one go: parallel lists of values, partitions and offsets.

    `messages` keeps the Message objects so the rare rejected message can give
    back its key without every message paying for it.
    """

    values: list[bytes | None]
    partitions: list[int]
    offsets: list[int]
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
    chunk_size: int = 100_000
    stall_timeout: float = 30.0
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
            bounded = self.max_per_partition is not None
            values: list[bytes | None] = []
            partitions: list[int] = []
            offsets: list[int] = []
            messages: list[Message] = []
            last_progress = time.monotonic()
            while remaining:
                batch = consumer.consume(min(self.chunk_size, 100_000), 0.5)
                if not batch:
                    if time.monotonic() - last_progress > self.stall_timeout:
                        raise ReadError(
                            f"no data and no end-of-partition from Kafka at "
                            f"{self.settings.bootstrap_servers} for {self.stall_timeout:.0f} s while "
                            f"reading {self.topic!r} partitions {sorted(remaining)}: is the broker up?"
                        )
                    continue
                last_progress = time.monotonic()
                eof: dict[int, int] = {}
                errors = [m for m in batch if m.error() is not None]
                if errors:
                    batch = [m for m in batch if m.error() is None]
                    for m in errors:
                        self._on_error(m, remaining, eof)
                    for p, offset in eof.items():
                        stop[p] = min(stop[p], offset)
                    bounded = True
                if bounded:
                    # A partition's messages arrive in offset order and its EOF
                    # after all of them, so everything below the stop is ours and
                    # anything at or past it (newer data) is the next run's.
                    batch = [m for m in batch if m.offset() < stop[m.partition()]]
                if batch:
                    values += [m.value() for m in batch]
                    parts = [m.partition() for m in batch]
                    offs = [m.offset() for m in batch]
                    partitions += parts
                    offsets += offs
                    messages += batch
                    self._advance(parts, offs)
                for p, offset in eof.items():
                    # offsets between the last message and EOF (transaction markers,
                    # compacted records) hold no data: the range ends at EOF
                    self.next_offsets[p] = max(self.next_offsets[p], min(offset, stop[p]))
                done = [p for p in remaining if p in eof or self.next_offsets[p] >= stop[p]]
                self._finish(consumer, remaining, done)
                if len(values) >= self.chunk_size or (not remaining and values):
                    yield Chunk(values, partitions, offsets, messages)
                    values, partitions, offsets, messages = [], [], [], []
        finally:
            consumer.close()

    def _finish(self, consumer: Consumer, remaining: set[int], done: list[int]) -> None:
        if done:
            remaining.difference_update(done)
            consumer.pause([TopicPartition(self.topic, p) for p in done])

    def _advance(self, partitions: list[int], offsets: list[int]) -> None:
        # Messages of one partition arrive in offset order, so the last one seen
        # for each partition is its highest.
        last = dict(zip(partitions, offsets, strict=True))
        for p, offset in last.items():
            self.next_offsets[p] = offset + 1

    def _on_error(self, message: Message, remaining: set[int], eof: dict[int, int]) -> None:
        err = message.error()
        code = err.code()
        if code == KafkaError._PARTITION_EOF:
            if message.partition() in remaining:
                eof.setdefault(message.partition(), message.offset())
            return
        if code in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET):
            p = message.partition()
            raise ReadError(
                f"offset {self.next_offsets.get(p)} of {self.topic!r} partition {p} is outside "
                f"what Kafka at {self.settings.bootstrap_servers} holds ({err.str()}): the topic was "
                "recreated or its data expired. If that is expected, reset the ledger "
                "(`churn-platform extract --reset-ledger`) to read from the earliest offset."
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

"""Producing to Kafka fast and without losing messages.

`EventProducer` wraps a confluent-kafka `Producer` tuned for throughput
(idempotent, large batches, `linger.ms` 50): `send` waits for queue space
instead of failing, and `close` flushes and raises if any delivery failed.
"""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import KafkaError, Producer

from churn_platform.kafka.config import KafkaSettings

THROUGHPUT_PRODUCER_CONFIG = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 50,
    "batch.size": 1_000_000,
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 512 * 1024,
    "compression.type": "none",
}


class ProduceError(RuntimeError):
    """Messages could not be delivered."""


class EventProducer:
    """Produce key/value messages; counts deliveries and remembers the first error."""

    def __init__(self, settings: KafkaSettings, **overrides: object) -> None:
        config = settings.client_config(**{**THROUGHPUT_PRODUCER_CONFIG, **overrides})
        self._producer = Producer(config)
        self._bootstrap = settings.bootstrap_servers
        self.delivered = 0
        self.failed = 0
        self.first_error: KafkaError | None = None

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is None:
            self.delivered += 1
        else:
            self.failed += 1
            if self.first_error is None:
                self.first_error = err

    def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        """Queue one message, waiting for room when the local queue is full."""
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
                )
                return
            except BufferError:
                self._producer.poll(0.05)

    def send_all(
        self, topic: str, messages: Iterable[tuple[bytes | str | None, bytes | None]]
    ) -> int:
        """Queue (key, value) pairs; returns how many were queued."""
        n = 0
        for key, value in messages:
            self.send(topic, value, key)
            n += 1
            if n % 10_000 == 0:
                self._producer.poll(0)
        return n

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery callbacks."""
        self._producer.poll(timeout)

    def close(self, timeout: float = 60.0) -> None:
        """Flush everything queued; raise `ProduceError` if anything was not delivered."""
        remaining = self._producer.flush(timeout)
        if remaining:
            raise ProduceError(
                f"{remaining} messages still undelivered to {self._bootstrap} after {timeout:.0f} s; "
                "is the broker reachable?"
            )
        if self.failed:
            raise ProduceError(
                f"{self.failed} messages failed delivery to {self._bootstrap}: {self.first_error}"
            )

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._producer.flush(5)

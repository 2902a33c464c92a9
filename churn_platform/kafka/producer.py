"""Producing to Kafka fast and without losing messages.

`EventProducer` wraps a confluent-kafka `Producer` tuned for throughput
(idempotent, large batches, `linger.ms` 50): `send` waits for queue space
instead of failing, and `close` flushes and raises if any delivery failed.

While no broker answers, messages wait in the local queue and librdkafka
retries them until `message.timeout.ms` (5 minutes by default): the outage and
the recovery are logged once each, naming the address. A message counts as
delivered only when the broker acknowledged it (acks=all).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from confluent_kafka import KafkaError, Producer

from churn_platform.kafka.admin import is_unreachable
from churn_platform.kafka.config import KafkaSettings

log = logging.getLogger("churn_platform.kafka.producer")

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
    """Messages could not be delivered; `delivered` were acknowledged, `failed` were not."""

    def __init__(self, message: str, delivered: int = 0, failed: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered
        self.failed = failed


class EventProducer:
    """Produce key/value messages; counts deliveries and remembers the first error."""

    def __init__(self, settings: KafkaSettings, **overrides: object) -> None:
        config = settings.client_config(
            **{**THROUGHPUT_PRODUCER_CONFIG, "error_cb": self._on_client_error, **overrides}
        )
        self._producer = Producer(config)
        self._bootstrap = settings.bootstrap_servers
        self.delivered = 0
        self.failed = 0
        self.first_error: KafkaError | None = None
        self.down_since: float | None = None  # when the broker stopped answering
        self.outages: list[float] = []  # seconds each outage lasted, once it ended

    def _on_client_error(self, error: KafkaError) -> None:
        if not is_unreachable(error):
            log.warning("Kafka producer error from %s: %s", self._bootstrap, error.str())
        elif self.down_since is None:
            self.down_since = time.monotonic()
            log.warning(
                "Kafka at %s is unreachable (%s): %d messages wait in the local queue and are "
                "retried until the broker is back or message.timeout.ms passes",
                self._bootstrap,
                error.str(),
                len(self._producer),
            )

    def _on_delivery(self, err: KafkaError | None, _msg: object) -> None:
        if err is None:
            self.delivered += 1
            if self.down_since is not None:
                self._recovered()
        else:
            self.failed += 1
            if self.first_error is None:
                self.first_error = err

    def _recovered(self) -> None:
        seconds = time.monotonic() - self.down_since
        self.outages.append(seconds)
        self.down_since = None
        log.info(
            "Kafka at %s acknowledges messages again after %.1f s; %d still queued",
            self._bootstrap,
            seconds,
            len(self._producer),
        )

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
                "is the broker reachable?",
                delivered=self.delivered,
                failed=self.failed + remaining,
            )
        if self.failed:
            raise ProduceError(
                f"{self.failed} messages failed delivery to {self._bootstrap} "
                f"({self.delivered} delivered): {self.first_error.str() if self.first_error else ''}",
                delivered=self.delivered,
                failed=self.failed,
            )

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self._producer.flush(5)

"""Handing a replay's messages to Kafka as fast as one Python thread can.

A replay is bound by confluent-kafka's `produce()` (a call per message, with
the GIL held; docs/benchmarks.md, Replay), so everything else happens beside
it: `prefetched` builds the next batches in a thread (polars releases the
GIL while it works), and
`BulkProducer.send` calls `produce` from C through `map()` instead of a
Python loop, asking librdkafka for delivery reports of failures only
(`delivery.report.only.error`): a report per message costs a Python call per
message. What was delivered is then what was queued less what failed or is
still queued (`acknowledged`).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator
from itertools import islice, repeat
from typing import TypeVar

from confluent_kafka import KafkaError, Producer

from churn_platform.kafka.admin import is_unreachable
from churn_platform.kafka.config import KafkaSettings
from churn_platform.kafka.producer import THROUGHPUT_PRODUCER_CONFIG

log = logging.getLogger("churn_platform.events.replay")

T = TypeVar("T")
# Messages per call into C. The GIL is held throughout (no bytecode runs), so
# this bounds how long the thread building the next batches waits for it; each
# hand-over costs too: 20k beat 2k and 500 (benchmarks/replay.py, docs/benchmarks.md).
_CHUNK = 20_000
_DONE = object()


class BulkProducer:
    """Produce lists of (key, value) messages; counts failures and remembers the first."""

    def __init__(self, settings: KafkaSettings, overrides: dict[str, object] | None = None):
        config = {
            **THROUGHPUT_PRODUCER_CONFIG,
            "delivery.report.only.error": True,
            "on_delivery": self._on_failure,
            "error_cb": self._on_client_error,
            **(overrides or {}),
        }
        self._producer = Producer(settings.client_config(**config))
        self.bootstrap = settings.bootstrap_servers
        self.queued = 0
        self.failed = 0
        self.remaining = 0
        self.first_error: KafkaError | None = None
        self._unreachable_logged = False

    def _on_failure(self, error: KafkaError | None, _msg: object) -> None:
        if error is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = error

    def _on_client_error(self, error: KafkaError) -> None:
        if not is_unreachable(error):
            log.warning("Kafka producer error from %s: %s", self.bootstrap, error.str())
        elif not self._unreachable_logged:
            self._unreachable_logged = True
            log.warning(
                "Kafka at %s is unreachable (%s): messages wait in the local queue and are "
                "retried until the broker is back or message.timeout.ms passes",
                self.bootstrap,
                error.str(),
            )

    @property
    def acknowledged(self) -> int:
        """Messages the broker acknowledged (exact once `flush` returned)."""
        return self.queued - self.failed - self.remaining

    def send(self, topic: str, keys: list[bytes | None], values: list[bytes]) -> None:
        """Queue every message, waiting for room whenever the local queue is full."""
        produce, poll = self._producer.produce, self._producer.poll
        done = 0
        while done < len(values):
            end = min(done + _CHUNK, len(values))
            queued: list[None] = []
            try:
                # list.extend keeps what map() returned before a BufferError
                queued.extend(
                    map(produce, repeat(topic), islice(values, done, end), islice(keys, done, end))
                )
                poll(0)
            except BufferError:
                poll(0.05)
            done += len(queued)
        self.queued += done

    def flush(self, timeout: float) -> int:
        """Wait for every queued message; returns how many are still undelivered."""
        self.remaining = self._producer.flush(timeout)
        return self.remaining

    def abandon(self) -> None:
        """After a failure: give queued messages a moment, then drop the rest (counted failed)."""
        self._producer.flush(5)
        self._producer.purge()
        self.remaining = self._producer.flush(5)  # purged messages report their failure here


def prefetched(items: Iterator[T], depth: int = 2) -> Iterator[T]:
    """`items`, computed up to `depth` ahead in a thread; its exceptions surface here.

    Memory stays bounded: at most `depth` items wait, one is being made.
    """
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread
            put(exc)
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=work, name="replay-build", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()

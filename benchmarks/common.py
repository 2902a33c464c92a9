"""What more than one benchmark measures against (imported as `common` from benchmarks/)."""

from __future__ import annotations

import os
import platform
import time
import uuid
from datetime import UTC, datetime


def result_header(benchmark: str, note: str, load_before: tuple[float, ...]) -> dict:
    """What every results file opens with: which benchmark, when, on what, the note,
    and the load average at the start (`load_before`, `os.getloadavg()`) and now."""
    return {
        "benchmark": benchmark,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}  cores={os.cpu_count()}",
        "note": note,
        "load_average_1_5_15": {
            "start": [round(x, 2) for x in load_before],
            "end": [round(x, 2) for x in os.getloadavg()],
        },
    }


def raw_consume(
    settings, topic: str, start: dict[int, int] | None = None, expected: int = 0
) -> tuple[int, float]:
    """The least any extract or scorer must do: read value, partition and offset of each message.

    `assign()` from `start` (partition → offset; default every partition from 0)
    and `consume()` in large batches until every partition reached EOF and at
    least `expected` messages were read (the embedded broker's high watermark
    lags, so EOF is the end). Returns the message count and the loop's seconds.
    """
    from confluent_kafka import KafkaError, TopicPartition

    from churn_platform.kafka.admin import partitions_of
    from churn_platform.kafka.reader import CONSUME_WAIT_S, fast_consumer

    if start is None:
        start = {p: 0 for p in partitions_of(settings, topic)}
    consumer = fast_consumer(settings, f"bench-raw-{uuid.uuid4().hex[:6]}")
    consumer.assign([TopicPartition(topic, p, o) for p, o in start.items()])
    started = time.perf_counter()
    n = 0
    eof: set[int] = set()
    while len(eof) < len(start) or n < expected:
        for m in consumer.consume(100_000, CONSUME_WAIT_S):
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(m.partition())
                continue
            m.value()
            m.partition()
            m.offset()
            n += 1
    seconds = time.perf_counter() - started
    consumer.close()
    return n, seconds

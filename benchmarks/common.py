"""What more than one benchmark measures against (imported as `common` from benchmarks/)."""

from __future__ import annotations

import time


def raw_consume(settings, topic: str) -> tuple[int, float]:
    """The least any extract must do: read value, partition and offset of each message.

    `assign()` from offset 0 and `consume()` in large batches to every partition's
    EOF (the embedded broker's high watermark lags, so EOF is the end). Returns the
    message count and the seconds the loop took.
    """
    from confluent_kafka import KafkaError, TopicPartition

    from churn_platform.kafka.admin import partitions_of
    from churn_platform.kafka.reader import fast_consumer

    partitions = partitions_of(settings, topic)
    consumer = fast_consumer(settings, "bench-raw")
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    started = time.perf_counter()
    n = 0
    eof: set[int] = set()
    while len(eof) < len(partitions):
        for m in consumer.consume(100_000, 0.5):
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

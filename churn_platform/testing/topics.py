"""What a Kafka topic holds, read from the start to the end, and simulated rounds produced
to it, for tests.

`topic_contents` reads every partition with assign() from offset 0 until each
one reports EOF, with a consumer group of its own that commits nothing, so it
neither moves nor depends on any group's offsets.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime

from churn_platform.events.simulator import SimulatorConfig, simulate
from churn_platform.kafka.admin import partitions_of
from churn_platform.kafka.config import KafkaSettings
from churn_platform.kafka.producer import EventProducer

ROUND_END = datetime(2026, 11, 1, tzinfo=UTC)  # where produce_round's simulated days end


def topic_contents(
    settings: KafkaSettings, topic: str
) -> dict[int, list[tuple[int, bytes | None, bytes | None]]]:
    """partition → [(offset, key, value)], read with assign() from 0 to EOF."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    partitions = partitions_of(settings, topic)
    consumer = Consumer(
        settings.client_config(
            **{
                "group.id": f"topic-contents-{uuid.uuid4().hex[:8]}",
                "enable.partition.eof": True,
                "enable.auto.commit": False,
            }
        )
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    contents: dict[int, list[tuple]] = {p: [] for p in partitions}
    at_eof: set[int] = set()
    try:
        while len(at_eof) < len(partitions):
            msg = consumer.poll(5.0)
            assert msg is not None, f"no EOF from partitions {set(partitions) - at_eof}"
            if msg.error():
                assert msg.error().code() == KafkaError._PARTITION_EOF, msg.error()
                at_eof.add(msg.partition())
                continue
            contents[msg.partition()].append((msg.offset(), msg.key(), msg.value()))
    finally:
        consumer.close()
    return contents


def topic_messages(settings: KafkaSettings, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every message of `topic` as (key, value), partition by partition in offset order."""
    contents = topic_contents(settings, topic)
    return [(key, value) for p in sorted(contents) for _, key, value in contents[p]]


def produce_round(settings, topic, seed, customers=40, days=20, bad_fraction=0.05):
    """Produce one simulated batch; returns (valid event ids, Counter of bad reasons)."""
    messages = list(
        simulate(
            SimulatorConfig(
                customers=customers, days=days, seed=seed, end=ROUND_END, bad_fraction=bad_fraction
            )
        )
    )
    with EventProducer(settings) as producer:
        for m in messages:
            producer.send(topic, m.value, m.key)
    valid = [m.event_id for m in messages if m.expected_reason is None]
    bad = Counter(m.expected_reason for m in messages if m.expected_reason is not None)
    return valid, bad

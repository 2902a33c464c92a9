"""At-least-once with asynchronous delivery: offsets follow only fully delivered batches."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaException

from churn_platform.kafka.config import KafkaSettings
from churn_platform.lake.store import Lake
from churn_platform.serving.scorer import ServeConfig, StreamingScorer, _InFlight


class _Producer:
    def poll(self, _timeout: float = 0) -> int:
        return 0


class _Consumer:
    def __init__(self) -> None:
        self.commits: list[dict[int, int]] = []

    def commit(self, offsets, asynchronous: bool) -> None:
        self.commits.append({tp.partition: tp.offset for tp in offsets})


@pytest.fixture
def scorer(tmp_path) -> StreamingScorer:
    scorer = StreamingScorer(
        KafkaSettings("127.0.0.1:9"), Lake(str(tmp_path)), ServeConfig(commit_interval_ms=0)
    )
    scorer._producer, scorer._consumer = _Producer(), _Consumer()
    scorer.assigned = {0, 1}
    return scorer


def test_a_batch_is_committed_once_it_and_every_batch_before_it_are_delivered(scorer):
    first, second = _InFlight({0: 10}, pending=2), _InFlight({0: 20, 1: 5}, pending=1)
    scorer._inflight.extend([first, second])
    second.delivered(None, None)
    scorer._settle()
    assert scorer._consumer.commits == []  # the older batch is still on its way
    first.delivered(None, None)
    scorer._settle()
    assert scorer._consumer.commits == []
    first.delivered(None, None)
    scorer._settle()
    assert scorer._consumer.commits == [{0: 20, 1: 5}]


def test_a_failed_delivery_stops_the_scorer_and_commits_nothing_after_it(scorer):
    done, failed, later = _InFlight({0: 10}), _InFlight({0: 20}, 1), _InFlight({0: 30})
    scorer._inflight.extend([done, failed, later])
    failed.delivered("broker said no", None)
    with pytest.raises(KafkaException, match="scored again"):
        scorer._settle()
    # what was delivered before the failure may still be committed (on close), never later
    assert scorer._delivered == {0: 10}
    assert not scorer._inflight

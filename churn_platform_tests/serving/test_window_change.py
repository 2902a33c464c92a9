"""Change the feature windows: training, batch scoring and streaming follow them alike.

The windows are part of the feature spec, recorded with every table and every
model, so the scorer computes the columns its champion was trained on, batch
scoring refuses a table of other windows, and the training set recomputes the
tables of older windows instead of mixing them.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from churn_platform.events.simulator import SimulatorConfig, produce_simulation
from churn_platform.features import definitions
from churn_platform.features.definitions import compute_features
from churn_platform.features.materialize import materialize_features, read_features
from churn_platform.ingestion.extract import ExtractConfig, extract_topic
from churn_platform.kafka.admin import ensure_topic
from churn_platform.lake.store import Lake
from churn_platform.ml import registry
from churn_platform.ml.frame import model_input
from churn_platform.ml.score import check_served_windows, score_table
from churn_platform.ml.train import TrainConfig, train_models
from churn_platform.ml.training_set import (
    TrainingSetError,
    build_training_set,
    ensure_inputs,
    training_dates,
)
from churn_platform.serving.scorer import ServeConfig
from churn_platform.testing.serving import (
    Running,
    live_event,
    produce,
    register_champion,
    wait_for_scores,
)

COUNTS, VALUES = (5, 21, 60), 14


@pytest.fixture
def windows(monkeypatch):
    """The code's windows changed from (7, 28, 90) / 28."""
    monkeypatch.setattr(definitions, "WINDOWS_DAYS", COUNTS)
    monkeypatch.setattr(definitions, "VALUE_WINDOW_DAYS", VALUES)
    return monkeypatch


def test_changed_windows_reach_training_batch_and_streaming_alike(
    kafka_settings, topic, tmp_path, windows
):
    now = datetime.now(UTC)
    today = now.date()
    lake = Lake(str(tmp_path / "lake"))
    # the history through the topic, so the scorer's state and the lake agree on it
    config = SimulatorConfig(customers=300, days=150, seed=23, end=now)
    produce_simulation(kafka_settings, topic, config, partitions=3)
    extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    dates = training_dates(lake).dates
    ensure_inputs(lake, dates, engine="polars")

    # training: the new windows' columns, the valued types kept
    training = build_training_set(lake, dates)
    assert training.spec.windows() == (COUNTS, VALUES)
    valued = training.spec.valued_types
    assert valued, "the simulator's purchases carry values"
    for t in valued:
        assert f"{t}_value_sum_{VALUES}d" in training.features
    old = ("_count_7d", "_count_28d", "_count_90d", "_value_sum_28d", "_value_mean_28d")
    assert not [f for f in training.features if f.endswith(old)]
    trained = train_models(
        training.table, training.features, TrainConfig(importance_repeats=1, importance_rows=200)
    )
    assert any(f.endswith(f"_value_sum_{VALUES}d") for f in trained.features)
    version = register_champion(
        lake, trained, training=training.manifest(), card="a model of other windows"
    )
    champion = registry.load_champion(lake)
    assert champion.record.spec.windows() == (COUNTS, VALUES)

    # streaming: live events scored by the scorer, with the champion's spec
    scores_topic = f"scores-{uuid.uuid4().hex[:8]}"
    ensure_topic(kafka_settings, scores_topic, partitions=3)
    customers = sorted(read_features(lake, dates[-1], ["customer_id"])["customer_id"])[:25]
    messages = [live_event(i, c, "purchase") for i, c in enumerate(customers)]
    serve = ServeConfig(
        topic=topic,
        scores_topic=scores_topic,
        group_id=f"scorer-{uuid.uuid4().hex[:8]}",
        reload_interval_s=0.5,
        log_interval_s=5,
    )
    with Running(kafka_settings, lake, serve) as scorer:
        produce(kafka_settings, topic, messages)
        scores = wait_for_scores(kafka_settings, scores_topic, len(messages))
        assert len(scores) == len(messages)
        assert scorer.champion.spec.windows() == (COUNTS, VALUES)
        streaming = compute_features(scorer.state.frame(customers), today, scorer.champion.spec)

    # batch: the same events extracted, today's table, scored by the champion
    extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    materialize_features(lake, today, engine="polars")
    batch = read_features(lake, today)
    check_served_windows(champion, definitions.FeatureSpec.current((), ()), today)
    mine = batch.filter(pl.col("customer_id").is_in(customers))
    assert mine.height == streaming.height > 0
    spec = champion.record.spec
    assert_frame_equal(
        model_input(streaming, champion.features, spec), model_input(mine, champion.features, spec)
    )
    # the new windows' valued columns hold values, not fills
    sums = model_input(mine, champion.features, spec).select(
        pl.col(f"{t}_value_sum_{VALUES}d") for t in valued
    )
    assert sums.to_numpy().sum() > 0
    batch_scores = score_table(champion, batch, today)
    expected = dict(
        zip(batch_scores["customer_id"], batch_scores["churn_probability"], strict=True)
    )
    latest = {}
    for s in sorted(scores, key=lambda s: (s.scored_at, s.offset)):
        latest[s.customer_id] = s
    for customer in mine["customer_id"]:
        assert latest[customer].churn_probability == expected[customer]  # bit for bit
        assert latest[customer].model_version == version

    # the windows set back: the champion is still served its own columns, batch scoring
    # refuses a table of today's windows, and the training set recomputes older tables
    windows.undo()
    assert definitions.current_windows() == ((7, 28, 90), 28)
    assert compute_features(scorer.state.frame(customers), today, champion.record.spec).equals(
        streaming
    )
    materialize_features(lake, today, engine="polars")
    with pytest.raises(ValueError, match="retrain .* after changing WINDOWS_DAYS"):
        from churn_platform.features.materialize import read_feature_spec

        check_served_windows(champion, read_feature_spec(lake, today), today)
    with pytest.raises(TrainingSetError, match="rematerialize customer_features"):
        build_training_set(lake, [*dates, today])
    computed = ensure_inputs(lake, dates, engine="polars")
    assert [c for c in computed if c.startswith("customer_features")] == [
        f"customer_features {d.isoformat()}" for d in dates
    ]
    assert build_training_set(lake, dates).spec.windows() == ((7, 28, 90), 28)

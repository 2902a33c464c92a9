"""The streaming scorer against the real embedded broker and a real lake.

One module-scoped world: a simulated history produced to Kafka and extracted
into a lake (so the ledger and the lake agree with the topic), and a champion
trained on the shared ML lake. Each test uses its own scores topic and
consumer group.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta

import msgspec
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from prometheus_client.parser import text_string_to_metric_families

from churn_platform.events.simulator import SimulatorConfig, produce_simulation
from churn_platform.events.validation import validate
from churn_platform.features.definitions import compute_features
from churn_platform.features.materialize import materialize_features, read_features
from churn_platform.ingestion.extract import ExtractConfig, extract_topic
from churn_platform.kafka.admin import ensure_topic
from churn_platform.lake import tables
from churn_platform.lake.store import Lake
from churn_platform.ml.frame import model_input
from churn_platform.ml.reasons import TYPICAL_KEY, Reasoner, typical_values
from churn_platform.ml.score import score_table
from churn_platform.serving.metrics import serve_metrics
from churn_platform.serving.scorer import (
    ChampionWatcher,
    ServeConfig,
)
from churn_platform.testing.serving import (
    Running,
    live_event,
    produce,
    register_champion,
    scores_in_topic,
    serve_command,
    wait_for_scores,
)

HISTORY_CUSTOMERS = 300
HISTORY_DAYS = 100


@pytest.fixture
def world(kafka_settings, topic, trained_model, tmp_path):
    """A topic with history, the same history extracted into a lake, a champion."""
    now = datetime.now(UTC)
    produce_simulation(
        kafka_settings,
        topic,
        SimulatorConfig(customers=HISTORY_CUSTOMERS, days=HISTORY_DAYS, seed=5, end=now),
        partitions=3,
    )
    lake = Lake(str(tmp_path / "lake"))
    extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    typical = typical_values(trained_model.split.holdout, trained_model.features, None)
    version = register_champion(lake, trained_model, training={TYPICAL_KEY: typical})
    scores_topic = f"scores-{uuid.uuid4().hex[:8]}"
    ensure_topic(kafka_settings, scores_topic, partitions=3)
    return lake, version, scores_topic


def customers_of(lake: Lake) -> list[str]:
    from churn_platform.lake.raw import read_raw_events

    return sorted(read_raw_events(lake)["customer_id"].unique().to_list())


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """(sample name, sorted labels) → value, as Prometheus would read the endpoint."""
    with urllib.request.urlopen(url, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def lag_of(metrics: dict) -> dict[int, float]:
    return {
        int(dict(labels)["partition"]): value
        for (name, labels), value in metrics.items()
        if name == "churn_scorer_consumer_lag_messages"
    }


def config_for(topic, scores_topic, group=None, **overrides) -> ServeConfig:
    return ServeConfig(
        topic=topic,
        scores_topic=scores_topic,
        group_id=group or f"scorer-{uuid.uuid4().hex[:8]}",
        reload_interval_s=0.5,
        log_interval_s=5,
        **overrides,
    )


@pytest.mark.parametrize("small_batch", [64, 0], ids=["per-customer", "frame"])
def test_streaming_features_and_scores_equal_the_batch_pipeline(
    kafka_settings, topic, world, small_batch
):
    """No training/serving skew: the same events give the same features and probabilities,
    whichever path a micro-batch takes (a few messages: `features.customer`; many: frames)."""
    lake, version, scores_topic = world
    customers = customers_of(lake)[:40]
    messages = [live_event(i, c) for i, c in enumerate(customers)]
    messages += [live_event(100 + i, c, "feature_use") for i, c in enumerate(customers[:10])]
    config = config_for(topic, scores_topic, small_batch=small_batch)
    with Running(kafka_settings, lake, config) as scorer:
        if small_batch:  # a few at a time, as a live stream comes
            for start in range(0, len(messages), 7):
                produce(kafka_settings, topic, messages[start : start + 7])
        else:
            produce(kafka_settings, topic, messages)
        scores = wait_for_scores(kafka_settings, scores_topic, len(messages))
        assert len(scores) == len(messages)
        today = datetime.now(UTC).date()
        model = scorer.champion.model
        assert scorer.champion.uses_small_batch_predictor  # the fast path scored them
        if small_batch:
            assert scorer.stats.per_customer > 0 and scorer.champion.features_verified
        else:
            assert scorer.stats.per_customer == 0
        streaming = compute_features(scorer.state.frame(customers), today, scorer.champion.spec)

    # the batch pipeline on the same events: extract them, features as of today
    extract_topic(kafka_settings, lake, ExtractConfig(topic=topic))
    materialize_features(lake, today, engine="polars")
    batch = read_features(lake, today).filter(pl.col("customer_id").is_in(customers))
    assert batch.height == streaming.height > 0
    assert_frame_equal(model_input(streaming, model.features), model_input(batch, model.features))
    # the latest streaming score of each customer is the batch score
    latest = {}
    for s in sorted(scores, key=lambda s: (s.scored_at, s.offset)):
        latest[s.customer_id] = s
    expected = dict(zip(batch["customer_id"], model.predict_proba(batch), strict=True))
    # and its reasons are the batch scores' reasons: same features, values, texts, floats
    reasoner = Reasoner.of(model)
    assert reasoner is not None
    batch_scores = score_table(model, batch, today, reasoner=reasoner)
    reasons = dict(zip(batch_scores["customer_id"], batch_scores["reasons"], strict=True))
    assert sum(len(r) for r in reasons.values()) > len(reasons)
    assert any("(typical " in r["text"] for rs in reasons.values() for r in rs)
    for customer, p in expected.items():
        assert latest[customer].churn_probability == p  # bit for bit
        assert latest[customer].model_version == version
        assert latest[customer].as_of == today
        streamed = [msgspec.structs.asdict(r) for r in latest[customer].reasons]
        assert streamed == reasons[customer].to_list()
    inactive = [s for s in latest.values() if s.churn_probability is None]
    assert {s.customer_id for s in inactive} == set(customers) - set(expected)
    assert all(s.risk_band == "inactive" for s in inactive)
    # every message names its event: partition, offset and a latency
    assert len({(s.partition, s.offset) for s in scores}) == len(messages)
    assert all(0 <= s.latency_ms < 60_000 for s in scores)


def test_a_small_batch_predictor_that_disagrees_is_dropped_for_predict_proba(
    trained_model, tmp_path, caplog
):
    """The fast path is checked against scikit-learn's estimator on its first batch."""
    lake = Lake(str(tmp_path / "lake"))
    register_champion(lake, trained_model)
    watcher = ChampionWatcher(lake, interval_s=60)
    assert watcher.poll(force=True) and watcher.uses_small_batch_predictor
    rows = trained_model.split.holdout.head(25)
    expected = watcher.model.estimator_proba(rows)
    np.testing.assert_array_equal(watcher.predict_proba(rows), expected)  # checked: kept
    assert watcher.uses_small_batch_predictor
    watcher.poll(force=True)  # same champion: nothing reloaded
    register_champion(lake, trained_model)
    assert watcher.poll(force=True) and watcher.uses_small_batch_predictor
    # wrong served arrays for the new model (every margin 0): the model's own
    # `predict_proba` of a small batch walks them too, so only the estimator can tell
    model = watcher.model
    wrong = dataclasses.replace(model.predictor, trees=lambda m: np.zeros(len(m)))
    object.__setattr__(model, "predictor", wrong)
    watcher._fast = model.predictor_for(0)
    assert watcher._fast is wrong and watcher.reasoner is not None
    assert not np.array_equal(model.predict_proba(rows), expected)
    with caplog.at_level(logging.WARNING, logger="churn_platform.serve"):
        np.testing.assert_array_equal(watcher.predict_proba(rows), expected)
    assert not watcher.uses_small_batch_predictor
    assert watcher.reasoner is None  # its reasons would explain the wrong arithmetic too
    assert "differs from predict_proba" in caplog.text
    np.testing.assert_array_equal(watcher.predict_proba(rows), expected)
    features = trained_model.split.holdout.head(3).to_dicts()
    np.testing.assert_array_equal(watcher.score_rows(features)[0], expected[:3])


def test_restart_resumes_warm_and_scores_each_event_once(kafka_settings, topic, world):
    """A restarted scorer starts from its committed offsets: nothing twice, nothing missed."""
    lake, _, scores_topic = world
    customers = customers_of(lake)[:30]
    group = f"scorer-{uuid.uuid4().hex[:8]}"
    with Running(kafka_settings, lake, config_for(topic, scores_topic, group)) as first:
        produce(kafka_settings, topic, [live_event(i, c) for i, c in enumerate(customers)])
        assert len(wait_for_scores(kafka_settings, scores_topic, 30)) == 30
        assert first.stats.scored == 30
        # bootstrapped from the lake: the customers already have their history
        assert len(first.state) >= HISTORY_CUSTOMERS * 0.9
    produce(kafka_settings, topic, [live_event(50 + i, c) for i, c in enumerate(customers)])
    with Running(kafka_settings, lake, config_for(topic, scores_topic, group)) as second:
        scores = wait_for_scores(kafka_settings, scores_topic, 60)
        time.sleep(2)  # anything extra would arrive now
        scores = scores_in_topic(kafka_settings, scores_topic)
        assert second.stats.scored == 30
        # the first run's live events are not in the lake yet: they were read again
        # into the state (so the features count them) but not scored again
        assert second.stats.replayed == 30
    keys = [(s.partition, s.offset) for s in scores]
    assert len(keys) == len(set(keys)) == 60


def test_a_new_champion_is_served_without_a_restart(kafka_settings, topic, world, trained_model):
    lake, version, scores_topic = world
    customers = customers_of(lake)[:5]
    with Running(kafka_settings, lake, config_for(topic, scores_topic)) as scorer:
        produce(kafka_settings, topic, [live_event(i, c) for i, c in enumerate(customers)])
        wait_for_scores(kafka_settings, scores_topic, 5)
        newer = register_champion(lake, trained_model)
        deadline = time.monotonic() + 20
        while scorer.champion.model.version != newer and time.monotonic() < deadline:
            time.sleep(0.2)
        assert scorer.champion.loads == 2
        produce(kafka_settings, topic, [live_event(10 + i, c) for i, c in enumerate(customers)])
        scores = wait_for_scores(kafka_settings, scores_topic, 10)
    versions = [s.model_version for s in sorted(scores, key=lambda s: s.offset)]
    assert {s.model_version for s in scores} == {version, newer}
    assert sum(v == newer for v in versions) >= 5


def test_bad_messages_are_quarantined_and_the_batch_still_scored(kafka_settings, topic, world):
    lake, _, scores_topic = world
    customers = customers_of(lake)[:3]
    good = [live_event(i, c) for i, c in enumerate(customers)]
    future = datetime.now(UTC) + timedelta(days=30)
    bad = [
        (b"{not json", b"k"),
        (b'{"event_id": "\xff\xfe"}', b"k"),
        (
            json.dumps(
                {
                    "event_id": "x",
                    "customer_id": "c",
                    "event_type": "login",
                    "ts": future.isoformat(),
                }
            ).encode(),
            b"c",
        ),
    ]
    with Running(kafka_settings, lake, config_for(topic, scores_topic)) as scorer:
        produce(kafka_settings, topic, good[:1] + bad + good[1:])
        scores = wait_for_scores(kafka_settings, scores_topic, len(good))
        deadline = time.monotonic() + 10
        while scorer.stats.rejected < len(bad) and time.monotonic() < deadline:
            time.sleep(0.2)
        group = scorer.config.group_id
    assert len(scores) == len(good)
    quarantined = tables.read(lake, tables.SCORER_QUARANTINE, where={"group_id": group})
    assert pl.read_delta(lake.url(tables.SCORER_QUARANTINE.name)).height == quarantined.height
    # the extract's rules and reason codes, message by message
    expected = sorted(validate(value).reason for value, _ in bad)
    assert sorted(quarantined["reason"].to_list()) == expected
    assert "ts_out_of_range" in expected and "invalid_json" in expected
    assert set(quarantined["value"].to_list()) == {value for value, _ in bad}


def test_serve_command_stops_cleanly_on_sigterm(kafka_settings, topic, world, tmp_path):
    lake, version, scores_topic = world
    env = {
        **{k: v for k, v in os.environ.items() if k != "POLARS_MAX_THREADS"},
        "CHURN_LAKE": lake.uri,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            serve_command(
                topic,
                scores_topic,
                f"cli-{uuid.uuid4().hex[:6]}",
                extra=("--metrics-port", "0"),  # any free port; the log says which
            ),
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while "scoring from" not in log.read_text() and time.monotonic() < deadline:
                assert process.poll() is None, log.read_text()
                time.sleep(0.3)
            produce(kafka_settings, topic, [live_event(0, customers_of(lake)[0])])
            assert len(wait_for_scores(kafka_settings, scores_topic, 1)) == 1
            url = re.search(r"metrics on (http://\S+)", log.read_text())[1]
            assert url.startswith("http://127.0.0.1:")  # loopback unless --metrics-host
            metrics = scrape(url)
            assert metrics[("churn_scorer_events_scored_total", ())] == 1
            versions = [
                dict(labels)["version"]
                for (name, labels), _ in metrics.items()
                if name == "churn_scorer_champion_info"
            ]
            assert versions == [version]
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
    text = log.read_text()
    assert "stopping" in text and "final:" in text
    assert "(polars threads 1)" in text  # `serve` sizes polars' pool before importing it


# --- metrics ---------------------------------------------------------------------------


def test_the_metrics_endpoint_counts_what_the_scorer_did_and_its_lag_drains(
    kafka_settings, topic, world
):
    """A backlog waits in the topic; the scorer reads it in small batches while it is scraped."""
    lake, version, scores_topic = world
    customers = customers_of(lake)[:200]
    good = [live_event(i, customers[i % len(customers)]) for i in range(3000)]
    bad = [(b"{not json", b"k"), (b"[]", b"k")]
    # in chunks, each flushed: the embedded broker reports the last batch's base offset as
    # the high watermark, so one batch would show no lag at all
    for start in range(0, len(good), 300):
        produce(kafka_settings, topic, good[start : start + 300])
    produce(kafka_settings, topic, bad)
    config = config_for(topic, scores_topic, max_batch=100, lag_interval_s=0.05)
    with Running(kafka_settings, lake, config) as scorer:
        server = serve_metrics(scorer, 0)  # a free port on loopback
        try:
            assert server.url == f"http://127.0.0.1:{server.port}/metrics"
            most_behind = 0.0
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                metrics = scrape(server.url)
                lag = lag_of(metrics)
                most_behind = max(most_behind, sum(lag.values()))
                consumed = metrics[("churn_scorer_events_consumed_total", ())]
                if consumed == len(good) + len(bad) and lag and not any(lag.values()):
                    break
                time.sleep(0.02)
            metrics = scrape(server.url)
        finally:
            server.close()
        champion_churn = scorer.champion.churn.describe()

    def value(name: str, **labels) -> float:
        return metrics[(name, tuple(sorted(labels.items())))]

    assert value("churn_scorer_events_consumed_total") == len(good) + len(bad)
    assert value("churn_scorer_events_scored_total") == len(good)
    expected = sorted(validate(v).reason for v, _ in bad)
    assert expected == ["invalid_json", "not_an_object"]
    for reason in expected:
        assert value("churn_scorer_events_rejected_total", reason=reason) == 1
    # every score's latency is in the histogram
    assert value("churn_scorer_score_latency_seconds_count") == len(good)
    assert value("churn_scorer_score_latency_seconds_bucket", le="+Inf") == len(good)
    assert value("churn_scorer_score_latency_seconds_sum") > 0
    assert value("churn_scorer_batches_total") >= len(good) / 100
    # behind while the backlog was read, caught up at the end, on every partition it holds
    assert most_behind > 0
    assert lag_of(metrics) == {0: 0, 1: 0, 2: 0}
    assert value("churn_scorer_assigned_partitions") == 3
    assert value("churn_scorer_champion_info", version=version, churn=champion_churn) == 1
    assert value("churn_scorer_champion_loads_total") == 1
    assert value("churn_scorer_kafka_reachable") == 1
    assert value("churn_scorer_customers") >= HISTORY_CUSTOMERS * 0.9
    assert value("process_resident_memory_bytes") > 0


def test_serve_names_a_metrics_port_that_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                *(sys.executable, "-m", "churn_platform.cli", "serve"),
                *("--metrics-port", str(port), "--lake", str(tmp_path)),
            ],
            env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},  # never contacted
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 2, done.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
    assert "--metrics-port" in done.stderr and "Traceback" not in done.stderr


def test_lag_counts_what_is_beyond_the_next_offset_to_read():
    from churn_platform.serving.metrics import consumer_lag

    # a watermark behind the position (the embedded broker's last batch) is caught up;
    # an unknown one (-1001: nothing fetched yet) or a partition not held is left out
    highs = {0: 120, 1: 40, 2: -1001, 3: 7}
    assert consumer_lag(highs, {0: 100, 1: 45, 2: 0}) == {0: 20, 1: 0}


# --- scale out: partitions are the unit of parallelism ---------------------------------


def test_two_scorers_split_the_partitions_and_score_every_event_once(
    kafka_settings,
    topic,
    world,  # noqa: F811
):
    lake, _, scores_topic = world
    group = f"scale-{uuid.uuid4().hex[:8]}"
    customers = customers_of(lake)[:120]
    first = Running(kafka_settings, lake, config_for(topic, scores_topic, group))
    second = Running(kafka_settings, lake, config_for(topic, scores_topic, group))
    with first as a, second as b:
        # wait until the rebalance settled: both hold partitions, none twice
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline and not (a.assigned and b.assigned):
            time.sleep(0.2)
        assert a.assigned and b.assigned, (a.assigned, b.assigned)
        assert not a.assigned & b.assigned
        assert a.assigned | b.assigned == {0, 1, 2}
        produce(kafka_settings, topic, [live_event(i, c) for i, c in enumerate(customers)])
        scores = wait_for_scores(kafka_settings, scores_topic, len(customers))
        time.sleep(1.5)  # a duplicate would show up now
        scores = scores_in_topic(kafka_settings, scores_topic)
        assert a.stats.scored > 0 and b.stats.scored > 0
        assert a.stats.scored + b.stats.scored == len(customers)
    keys = [(s.partition, s.offset) for s in scores]
    assert len(keys) == len(set(keys)) == len(customers)
    assert {s.customer_id for s in scores} == set(customers)

"""A team's own data, end to end: real purchases no one here wrote, to a champion and scores.

CDNOW_master.txt (the `lifetimes` package's copy of a CD retailer's purchases,
1997-98) is replayed with column mapping only into the real broker, then
`churn-platform train` runs the project's Dagster jobs on a real instance
under the inactivity definition (no purchase in 90 days): extract, features
and labels for the training dates, the gated model, the champion, batch
scores. Then the streaming scorer serves the same champion: new purchases get
scores equal to what the batch path computes for them. And under the default
(cancellation) definition the same data stops before any long step, saying
there is no churn and what to set.

The feature engine is polars here: Beam's equality with it is tested in
churn_platform_tests/features; 21 Beam runs of this path take two minutes.
"""

from __future__ import annotations

import json
import re
import threading
import uuid
from datetime import date

import msgspec
import pytest
from threadpoolctl import threadpool_limits

from churn_platform.cli import main
from churn_platform.features.definitions import compute_features
from churn_platform.features.inputs import feature_inputs, read_inputs
from churn_platform.ingestion.extract import ExtractConfig, extract_topic
from churn_platform.kafka.admin import ensure_topic, partitions_of
from churn_platform.kafka.producer import EventProducer
from churn_platform.kafka.reader import OffsetRangeReader
from churn_platform.lake.store import Lake
from churn_platform.ml import registry
from churn_platform.ml.reasons import Reasoner
from churn_platform.ml.score import read_scores, score_table
from churn_platform.serving.scorer import ServeConfig, StreamingScorer, decode_stream_score
from churn_platform.testing.public_data import CDNOW_REPLAY_OPTIONS, cdnow_master_path

LAST_COMPLETE = date(1998, 6, 29)  # the data end on 1998-06-30


@pytest.fixture(scope="module")
def cdnow_topic(broker):
    """CDNOW replayed once into a topic of its own (replay --topic, column mapping only)."""
    settings = broker.settings
    topic = f"cdnow-{uuid.uuid4().hex[:8]}"
    # two partitions: a small catalogue in few files (the lake writes one per partition and day)
    argv = [
        "replay",
        str(cdnow_master_path()),
        *CDNOW_REPLAY_OPTIONS,
        "--topic",
        topic,
        "--partitions",
        "2",
    ]
    code = main([*argv, "--bootstrap-servers", settings.bootstrap_servers, "--no-progress"])
    assert code == 0
    return settings, topic


def train(settings, topic, lake, *extra) -> tuple[int, dict, str]:
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), threadpool_limits(1):
        code = main(
            [
                "train",
                *("--bootstrap-servers", settings.bootstrap_servers),
                *("--topic", topic, "--lake", str(lake), "--engine", "polars", "--json"),
                *extra,
            ]
        )
    text = out.getvalue()
    return code, (json.loads(text) if text.strip() else {}), err.getvalue()


@pytest.mark.timeout(600)
def test_cdnow_reaches_a_champion_and_batch_and_live_scores(cdnow_topic, tmp_path, monkeypatch):
    settings, topic = cdnow_topic
    monkeypatch.chdir(tmp_path)  # the project instance: tmp_path/var/dagster
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.setenv("CHURN_DEFINITION", "inactivity")
    monkeypatch.setenv("CHURN_HORIZON_DAYS", "90")
    lake = Lake(str(tmp_path / "lake"))

    code, summary, log = train(settings, topic, tmp_path / "lake")
    print(
        {r["job"]: r["seconds"] for r in summary.get("runs", [])[:3]},
        sum(r["seconds"] for r in summary.get("runs", [])),
    )
    assert code == 0, log
    assert "Traceback" not in log
    assert summary["extract_rows"] == 69_659 and summary["extract_rejected"] == 0
    assert "23,570 customers, 1997-01-01..1998-06-30 (purchase 69,659)" in summary["data"]
    assert summary["churn_definition"].startswith("inactivity: no activity within 90 days")
    # a 90-day horizon: 2 holdout + 12 purged + 1 calibration + 5 training weekly dates
    assert len(summary["training_as_of_dates"]) == 20
    assert summary["split"]["holdout_dates"] == "1998-03-24..1998-03-31"
    assert summary["gate_passed"] and summary["champion_version"] == summary["candidate_version"]
    assert summary["champion_holdout_roc_auc"] > 0.65  # measured 0.71; a recency rule gets 0.59
    assert summary["served_rows"] == summary["training_rows"]
    # a business without subscriptions: its features say so and are left out of the model
    assert "days_since_subscription_change" in summary["dropped_features"]
    record = registry.read_record(lake, summary["champion_version"])
    assert record.churn.key() == "inactivity:90"
    assert "- Churn: inactivity: no activity within 90 days" in record.card
    assert summary["scores_as_of"] == LAST_COMPLETE.isoformat()
    scores = read_scores(lake, LAST_COMPLETE)
    assert scores.height == summary["customers_scored"] == summary["customers_with_features"] > 1000
    assert summary["scores_produced_to_kafka"] == scores.height
    # reasons on data no one here wrote: a purchase history explains a buyer's risk
    assert scores["reasons"].null_count() == 0
    top = scores.head(50)["reasons"].to_list()
    assert all(top) and all(r["contribution"] > 0 for rs in top for r in rs)
    texts = [r["text"] for rs in top for r in rs]
    assert any("purchase" in t or "events in the last" in t for t in texts), texts[:5]
    assert sum("(typical " in t for t in texts) > len(texts) // 2
    # each step was a run of the project's instance, visible in the UI
    assert (tmp_path / "var" / "dagster" / "dagster.yaml").exists()
    jobs = [run["job"] for run in summary["runs"]]
    assert jobs[0] == "raw_customer_events_job" and jobs[-2:] == ["training_job", "scoring_job"]
    # features_job for the latest date; the 20 training dates in training_set, in one pass
    assert jobs.count("features_job") == 1 and all(run["success"] for run in summary["runs"])
    assert summary["checks_failed"] == 0 and summary["checks_passed"] >= 4 * 21

    # live: the streaming scorer serves the champion on the same topic
    scores_topic = f"scores-{uuid.uuid4().hex[:8]}"
    ensure_topic(settings, scores_topic, partitions=3)
    config = ServeConfig(
        topic=topic,
        scores_topic=scores_topic,
        group_id=f"scorer-{uuid.uuid4().hex[:8]}",
        reload_interval_s=0.5,
        log_interval_s=5,
    )
    buyers = scores["customer_id"].head(5).to_list()
    scorer = StreamingScorer(settings, lake, config)
    ready = threading.Event()
    thread = threading.Thread(
        target=scorer.run, kwargs={"max_seconds": 120, "ready": ready}, daemon=True
    )
    thread.start()
    try:
        assert ready.wait(60), "the scorer never got its partitions"
        assert scorer.champion.churn.key() == "inactivity:90"
        with EventProducer(settings) as producer:
            for i, customer in enumerate(buyers):
                body = {
                    "event_id": f"live-{i}",
                    "customer_id": customer,
                    "event_type": "purchase",
                    "ts": "1998-06-30T15:00:00Z",
                    "value": 12.5,
                }
                producer.send(topic, json.dumps(body).encode(), customer.encode())
        live = wait_for(settings, scores_topic, len(buyers))
    finally:
        scorer.request_stop()
        thread.join(30)
    assert sorted(s.customer_id for s in live) == sorted(buyers)
    assert {s.as_of for s in live} == {date(1998, 6, 30)}
    # the batch path on the same events gives the same probabilities
    extract_topic(settings, lake, ExtractConfig(topic=topic))
    as_of = date(1998, 6, 30)
    events = read_inputs(lake, feature_inputs(lake, as_of))
    model = registry.load_champion(lake)
    batch = compute_features(events, as_of, model.record.spec, model.record.churn)
    batch = batch.filter(batch["customer_id"].is_in(buyers))
    expected = dict(zip(batch["customer_id"], model.predict_proba(batch), strict=True))
    assert {s.customer_id: s.churn_probability for s in live} == expected
    # with the same reasons
    batch_scores = score_table(model, batch, as_of, reasoner=Reasoner.of(model))
    reasons = dict(zip(batch_scores["customer_id"], batch_scores["reasons"].to_list(), strict=True))
    assert {s.customer_id: [msgspec.structs.asdict(r) for r in s.reasons] for s in live} == reasons


def wait_for(settings, topic: str, count: int, timeout: float = 60.0) -> list:
    import time

    deadline = time.monotonic() + timeout
    while True:
        reader = OffsetRangeReader(
            settings, topic, dict.fromkeys(partitions_of(settings, topic), 0)
        )
        found = [decode_stream_score(m.value()) for c in reader.chunks() for m in c.messages]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_cdnow_under_the_cancellation_definition_stops_saying_there_is_no_churn(
    cdnow_topic, tmp_path, monkeypatch
):
    """Activity-only data and the default definition: exit 1 before any features run, with
    the counts and the setting (CHURN_DEFINITION=inactivity)."""
    settings, topic = cdnow_topic
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    for name in ("CHURN_DEFINITION", "CHURN_HORIZON_DAYS", "CHURN_QUALIFYING_EVENTS"):
        monkeypatch.delenv(name, raising=False)
    code, summary, log = train(settings, topic, tmp_path / "lake")
    assert code == 1, log
    stopped = summary["stopped"]
    assert stopped.startswith("no model: no churn at all under the cancellation definition")
    assert re.search(r"the [\d,]+ events hold no subscription events", stopped), stopped
    assert "CHURN_DEFINITION=inactivity" in stopped
    assert [run["job"] for run in summary["runs"]] == ["raw_customer_events_job"]
    assert "Traceback" not in log
    # a qualifying type the data never holds is named too
    monkeypatch.setenv("CHURN_DEFINITION", "inactivity")
    monkeypatch.setenv("CHURN_QUALIFYING_EVENTS", "login")
    code, summary, _ = train(settings, topic, tmp_path / "lake", "--skip-extract")
    assert code == 1
    assert "CHURN_QUALIFYING_EVENTS names login, which the events never hold" in summary["stopped"]
    assert "(activity types: purchase)" in summary["stopped"]


def test_bad_churn_settings_are_one_line(monkeypatch, capsys):
    monkeypatch.setenv("CHURN_DEFINITION", "dormant")
    assert main(["train", "--bootstrap-servers", "127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("churn-platform train: CHURN_DEFINITION='dormant' is not a churn")
    assert len(err.strip().splitlines()) == 1

"""The churn simulator: determinism, the event contract, ground truth, Kafka and CLI."""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import Counter
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition

from churn_platform.cli import main
from churn_platform.events.contract import (
    SUBSCRIPTION_CANCELLED,
    SUBSCRIPTION_CHANGED,
    SUBSCRIPTION_STARTED,
    Event,
    Reason,
    Rejection,
)
from churn_platform.events.simulator import (
    SimulatorConfig,
    SimulatorConfigError,
    live_messages,
    malformed_message,
    produce_simulation,
    run_live,
    simulate,
)
from churn_platform.events.validation import validate, validate_batch
from churn_platform.kafka.admin import BrokerUnavailable, partitions_of

END = datetime(2026, 10, 1, 12, 0, tzinfo=UTC)
END_MS = int(END.timestamp() * 1000)
DAY_MS = 86_400_000
ACTIVITY = ("login", "session", "feature_use")


def small(**overrides) -> SimulatorConfig:
    return SimulatorConfig(**{"customers": 60, "days": 20, "seed": 5, "end": END, **overrides})


def as_tuples(messages) -> list[tuple]:
    return [(m.key, m.value, m.expected_reason) for m in messages]


# --- determinism and the contract ----------------------------------------------


def test_same_seed_gives_identical_messages_and_another_seed_does_not():
    first = as_tuples(simulate(small(bad_fraction=0.05)))
    assert first == as_tuples(simulate(small(bad_fraction=0.05)))
    other = as_tuples(simulate(small(bad_fraction=0.05, seed=6)))
    assert other != first
    # ids are namespaced by seed, so two businesses never share an event id
    ids = {m.event_id for m in simulate(small())}
    assert ids.isdisjoint(m.event_id for m in simulate(small(seed=6)))


def test_every_valid_message_validates_and_every_bad_one_is_rejected_with_its_reason():
    messages = list(simulate(small(customers=200, days=30, bad_fraction=0.05)))
    bad = Counter()
    for m in messages:
        result = validate(m.value, now=END_MS)
        if m.expected_reason is None:
            assert isinstance(result, Event), (m.value, result)
            assert (result.event_id, result.customer_id, result.event_type, result.ts_ms) == (
                m.event_id,
                m.customer_id,
                m.event_type,
                m.ts_ms,
            )
            assert m.key == m.customer_id.encode()
        else:
            assert isinstance(result, Rejection), m.value[:200]
            assert result.reason == m.expected_reason, (m.value[:200], result)
            bad[m.expected_reason] += 1
    assert set(bad) == set(Reason.ALL)
    assert sum(bad.values()) / len(messages) == pytest.approx(0.05, abs=0.005)

    # the batch validator the extract uses agrees message by message
    batch = validate_batch([m.value for m in messages], now=END_MS)
    expected = [(i, m.expected_reason) for i, m in enumerate(messages) if m.expected_reason]
    assert [(r.position, r.reason) for r in batch.rejects] == expected
    assert batch.events.num_rows == len(messages) - len(expected)


@pytest.mark.parametrize("reason", Reason.ALL)
def test_every_variant_of_a_malformed_message_gets_its_reason(reason):
    for variant in range(12):
        raw = malformed_message(reason, variant, "c0000042", "2026-09-30T10:00:00.000Z", "e-1")
        result = validate(raw, now=END_MS)
        assert isinstance(result, Rejection) and result.reason == reason, (
            variant,
            raw[:120],
            result,
        )


def test_bad_messages_are_added_without_changing_the_valid_stream():
    clean = list(simulate(small()))
    dirty = list(simulate(small(bad_fraction=0.2)))
    assert all(m.expected_reason is None for m in clean)
    assert [m for m in dirty if m.expected_reason is None] == clean
    assert len(dirty) > len(clean)


def test_config_errors_name_the_setting():
    cases = {
        "customers must be >= 1": {"customers": 0},
        "days must be >= 1": {"days": 0},
        "bad_fraction must be in [0, 1)": {"bad_fraction": 1.0},
        "end must be timezone-aware": {"end": datetime(2026, 1, 1)},
        "end - days must not be before 1980-01-01": {
            "end": datetime(1981, 1, 1, tzinfo=UTC),
            "days": 400,
        },
        "seed must be an integer": {"seed": 1.5},
    }
    for message, kwargs in cases.items():
        with pytest.raises(SimulatorConfigError, match=re.escape(message)):
            SimulatorConfig(**kwargs)


def test_default_end_is_now_resolved_once():
    before = int(time.time() * 1000)
    messages = list(simulate(SimulatorConfig(customers=20, days=3, seed=1)))
    after = int(time.time() * 1000)
    ts = [m.ts_ms for m in messages]
    assert before - 3 * DAY_MS <= min(ts) and max(ts) <= after
    assert all(isinstance(validate(m.value), Event) for m in messages)


# --- the simulated business ------------------------------------------------------


@pytest.fixture(scope="module")
def business() -> tuple[SimulatorConfig, pl.DataFrame]:
    """2,000 customers over 120 days, decoded into one frame."""
    config = SimulatorConfig(customers=2000, days=120, seed=11, end=END)
    rows = []
    for m in simulate(config):
        e = validate(m.value, now=END_MS)
        attrs = e.attributes or {}
        rows.append((e.event_id, e.customer_id, e.event_type, e.ts_ms, e.value, attrs.get("mrr")))
    frame = pl.DataFrame(
        rows,
        schema={
            "event_id": pl.String,
            "customer_id": pl.String,
            "event_type": pl.String,
            "ts": pl.Int64,
            "value": pl.Float64,
            "mrr": pl.Float64,
        },
        orient="row",
    )
    return config, frame


def test_event_times_span_the_window_in_order_with_unique_ids(business):
    config, events = business
    ts = events["ts"].to_numpy()
    assert ts.min() >= END_MS - config.days * DAY_MS and ts.max() <= END_MS
    assert ts.min() < END_MS - (config.days - 1) * DAY_MS and ts.max() > END_MS - DAY_MS
    assert (np.diff(ts) >= 0).all()
    assert events["event_id"].n_unique() == events.height
    assert events["customer_id"].str.contains(r"^c\d{7}$").all()
    assert events["customer_id"].n_unique() == config.customers
    per_customer_day = events.height / config.customers / config.days * 90
    assert 50 <= per_customer_day <= 150
    types = set(events["event_type"].unique())
    assert {
        "login",
        "session",
        "feature_use",
        "purchase",
        "support_ticket",
        "payment_failed",
    } <= types
    assert {SUBSCRIPTION_STARTED, SUBSCRIPTION_CHANGED, SUBSCRIPTION_CANCELLED} <= types


def test_lifecycle_is_consistent(business):
    _, events = business
    per_customer = events.group_by("customer_id", maintain_order=True).agg(
        first=pl.col("event_type").first(),
        last=pl.col("event_type").last(),
        starts=(pl.col("event_type") == SUBSCRIPTION_STARTED).sum(),
        cancels=(pl.col("event_type") == SUBSCRIPTION_CANCELLED).sum(),
    )
    assert (per_customer["first"] == SUBSCRIPTION_STARTED).all()
    assert (per_customer["starts"] == 1).all()
    assert (per_customer["cancels"] <= 1).all()
    # nothing after a cancellation: cancelled customers end with it
    cancelled = per_customer.filter(pl.col("cancels") == 1)
    assert (cancelled["last"] == SUBSCRIPTION_CANCELLED).all()
    assert cancelled.height > 0


def test_lifecycle_events_carry_the_subscription_state():
    for m in simulate(small(customers=300, days=60)):
        e = validate(m.value, now=END_MS)
        if e.event_type == SUBSCRIPTION_STARTED:
            assert set(e.attributes) == {"plan", "mrr", "channel", "country"}
            assert e.attributes["mrr"] > 0
        elif e.event_type == SUBSCRIPTION_CHANGED:
            assert set(e.attributes) == {"plan", "mrr"}
        elif e.event_type in ("session", "purchase", "payment_failed"):
            assert e.value is not None and e.value > 0


def snapshots(events: pl.DataFrame, days: int, horizon: int = 30) -> pl.DataFrame:
    """Per active customer at weekly as-of dates: 7/28-day activity, last mrr, and
    whether it cancels within `horizon` days."""
    start = END_MS - days * DAY_MS
    lifecycle = events.group_by("customer_id").agg(
        start_ts=pl.col("ts").filter(pl.col("event_type") == SUBSCRIPTION_STARTED).first(),
        cancel_ts=pl.col("ts").filter(pl.col("event_type") == SUBSCRIPTION_CANCELLED).first(),
    )
    frames = []
    for day in range(35, days - horizon + 1, 7):
        asof = start + day * DAY_MS
        past = events.filter(pl.col("ts") <= asof)
        recent = past.filter(pl.col("ts") > asof - 28 * DAY_MS)
        features = recent.group_by("customer_id").agg(
            activity_28=pl.col("event_type").is_in(ACTIVITY).sum(),
            activity_7=(
                pl.col("event_type").is_in(ACTIVITY) & (pl.col("ts") > asof - 7 * DAY_MS)
            ).sum(),
        )
        mrr = past.drop_nulls("mrr").group_by("customer_id").agg(mrr=pl.col("mrr").last())
        active = lifecycle.filter(
            (pl.col("start_ts") <= asof - 28 * DAY_MS)
            & (pl.col("cancel_ts").is_null() | (pl.col("cancel_ts") > asof))
        )
        frames.append(
            active.join(features, on="customer_id", how="left")
            .join(mrr, on="customer_id", how="left")
            .fill_null(0)
            .with_columns(
                churned=pl.col("cancel_ts").is_between(asof + 1, asof + horizon * DAY_MS),
            )
        )
    return pl.concat(frames)


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties get average ranks)."""
    ranks = pl.Series(scores).rank("average").to_numpy()
    positives = labels.sum()
    negatives = labels.size - positives
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def test_churn_rate_is_in_a_realistic_range(business):
    config, events = business
    rate = snapshots(events, config.days)["churned"].mean()
    assert 0.04 <= rate <= 0.2, rate


def test_ground_truth_churners_disengage_and_fail_payments_before_cancelling(business):
    """The 28 days before a cancellation against the last 28 days of those who stay."""
    _, events = business
    bounds = events.group_by("customer_id").agg(
        first=pl.col("ts").min(),
        cancel=pl.col("ts").filter(pl.col("event_type") == SUBSCRIPTION_CANCELLED).first(),
    )
    bounds = bounds.with_columns(anchor=pl.coalesce("cancel", pl.lit(END_MS))).filter(
        pl.col("anchor") - pl.col("first") > 28 * DAY_MS
    )
    before = events.join(bounds, on="customer_id").filter(
        pl.col("ts").is_between(pl.col("anchor") - 28 * DAY_MS, pl.col("anchor"), closed="right")
    )
    per_customer = before.group_by("customer_id").agg(
        churned=pl.col("cancel").is_not_null().first(),
        activity=pl.col("event_type").is_in(ACTIVITY).sum(),
        failures=(pl.col("event_type") == "payment_failed").sum(),
        tickets=(pl.col("event_type") == "support_ticket").sum(),
    )
    churned = per_customer.filter(pl.col("churned"))
    stayed = per_customer.filter(~pl.col("churned"))
    assert churned.height >= 100 and stayed.height >= 500
    assert churned["activity"].mean() < 0.6 * stayed["activity"].mean()
    assert churned["failures"].mean() > 3 * stayed["failures"].mean()
    assert (churned["failures"] > 0).mean() > 2 * (stayed["failures"] > 0).mean()
    assert churned["tickets"].mean() > 2 * stayed["tickets"].mean()


def test_engagement_predicts_churn_and_price_alone_does_not(business):
    config, events = business
    snap = snapshots(events, config.days)
    labels = snap["churned"].to_numpy()
    assert labels.sum() >= 100
    engagement = auc(-snap["activity_28"].to_numpy(), labels)
    trend = auc(-((snap["activity_7"] + 1) / (snap["activity_28"] / 4 + 1)).to_numpy(), labels)
    price = auc(snap["mrr"].to_numpy(), labels)
    # one raw count already ranks churners well; a model combining windows does better
    assert engagement > 0.68 and trend > 0.6, (engagement, trend)
    assert abs(price - 0.5) < 0.1, price


def test_cancellations_are_mostly_predictable_from_the_decline():
    """Cancelled customers were, on average, much less active in their last 28 days
    than in their own first 28 days (their own baseline)."""
    config = SimulatorConfig(customers=1500, days=120, seed=3, end=END)
    rows = [
        (m.customer_id, m.event_type, m.ts_ms)
        for m in simulate(config)
        if m.event_type in (*ACTIVITY, SUBSCRIPTION_STARTED, SUBSCRIPTION_CANCELLED)
    ]
    events = pl.DataFrame(
        rows,
        schema={"customer_id": pl.String, "event_type": pl.String, "ts": pl.Int64},
        orient="row",
    )
    bounds = events.group_by("customer_id").agg(
        first=pl.col("ts").min(),
        cancel=pl.col("ts").filter(pl.col("event_type") == SUBSCRIPTION_CANCELLED).first(),
    )
    lived = bounds.filter(pl.col("cancel") - pl.col("first") > 70 * DAY_MS)
    activity = events.filter(pl.col("event_type").is_in(ACTIVITY)).join(lived, on="customer_id")
    per = activity.group_by("customer_id").agg(
        early=(pl.col("ts") < pl.col("first") + 28 * DAY_MS).sum(),
        late=(pl.col("ts") > pl.col("cancel") - 28 * DAY_MS).sum(),
    )
    assert per.height >= 50
    assert per["late"].sum() < 0.5 * per["early"].sum()


# --- live mode (no broker) -------------------------------------------------------


def fake_clock(start_ms: int):
    counter = itertools.count()
    return lambda: start_ms + next(counter)


def test_live_content_is_deterministic_apart_from_timestamps():
    config = small(customers=80, days=10, bad_fraction=0.05)
    now = int(time.time() * 1000)
    a = list(itertools.islice(live_messages(config, fake_clock(now)), 3000))
    b = list(itertools.islice(live_messages(config, fake_clock(now + 5000)), 3000))

    def content(m):
        if m.expected_reason is not None:
            return (m.key, m.expected_reason)
        e = validate(m.value, now=now + 10_000)
        assert isinstance(e, Event), (m.value, e)
        return (m.key, e.event_id, e.customer_id, e.event_type, e.value, e.attributes)

    assert [content(m) for m in a] == [content(m) for m in b]
    assert [m.ts_ms for m in a if m.ts_ms] != [m.ts_ms for m in b if m.ts_ms]
    ts = [m.ts_ms for m in a if m.ts_ms is not None]
    assert ts == sorted(ts) and now <= ts[0]
    for m in a:
        if m.expected_reason is not None:
            assert validate(m.value, now=now + 10_000).reason == m.expected_reason

    # the live stream continues the window: new ids, more than one simulated day,
    # new customers sign up, some cancel
    window_ids = {m.event_id for m in simulate(config)}
    live_ids = {m.event_id for m in a if m.event_id}
    assert window_ids.isdisjoint(live_ids)
    types = Counter(m.event_type for m in a)
    assert types[SUBSCRIPTION_STARTED] > 0 and types[SUBSCRIPTION_CANCELLED] > 0
    assert len({m.event_id.split("-")[1] for m in a if m.event_id}) > 1


# --- Kafka ---------------------------------------------------------------------------


def consume_all(settings, topic: str, timeout: float = 30.0) -> list:
    """Every message of `topic`, read from offset 0 of each partition up to its end."""
    consumer = Consumer(
        settings.client_config(
            **{
                "group.id": f"test-{topic}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.queue.backoff.ms": 10,
            }
        )
    )
    partitions = partitions_of(settings, topic)
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    messages, at_eof = [], set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_eof) < len(partitions):
            assert time.monotonic() < deadline, f"only partitions {at_eof} reached EOF"
            for msg in consumer.consume(10_000, timeout=0.5):
                if msg.error() is None:
                    messages.append(msg)
                    at_eof.discard(msg.partition())
                elif msg.error().code() == KafkaError._PARTITION_EOF:
                    at_eof.add(msg.partition())
                else:
                    raise AssertionError(msg.error())
    finally:
        consumer.close()
    return messages


def test_produce_simulation_writes_every_message_to_kafka(kafka_settings, topic):
    config = small(customers=150, days=15, bad_fraction=0.03)
    expected = list(simulate(config))
    summary = produce_simulation(kafka_settings, topic, config)

    assert summary.messages_produced == len(expected)
    valid = [m for m in expected if m.expected_reason is None]
    assert summary.events_valid_produced == len(valid)
    assert summary.bad_by_reason == dict(
        Counter(m.expected_reason for m in expected if m.expected_reason)
    )
    assert summary.customers == len({m.customer_id for m in valid})
    assert summary.churn_events == sum(m.event_type == SUBSCRIPTION_CANCELLED for m in valid)
    assert summary.first_ts == json.loads(valid[0].value)["ts"]
    assert summary.last_ts == json.loads(valid[-1].value)["ts"]
    assert json.loads(json.dumps(summary.as_dict()))["messages_produced"] == len(expected)

    consumed = consume_all(kafka_settings, topic)
    assert len(consumed) == len(expected)
    assert Counter(m.value() for m in consumed) == Counter(m.value for m in expected)
    ids = set()
    for msg in consumed:
        event = validate(msg.value(), now=END_MS)
        if isinstance(event, Event):
            assert msg.key() == event.customer_id.encode()
            ids.add(event.event_id)
    assert ids == {m.event_id for m in valid}


def test_run_live_stops_after_max_events(kafka_settings, topic):
    config = small(customers=50, days=5, end=None)
    started = time.perf_counter()
    summary = run_live(kafka_settings, topic, config, rate=2000, max_events=300)
    elapsed = time.perf_counter() - started
    assert summary.live and summary.messages_produced == summary.events_valid_produced == 300
    assert elapsed < 10
    consumed = consume_all(kafka_settings, topic)
    assert len(consumed) == 300
    now = int(time.time() * 1000)
    ts = [validate(m.value(), now=now).ts_ms for m in consumed]
    assert all(now - 60_000 <= t <= now for t in ts)


def test_run_live_paces_and_stops_when_asked(kafka_settings, topic):
    stop = threading.Event()
    timer = threading.Timer(1.0, stop.set)
    timer.start()
    try:
        summary = run_live(kafka_settings, topic, small(customers=30, days=3), rate=200, stop=stop)
    finally:
        timer.cancel()
    # about 200 messages in about one second
    assert 120 <= summary.messages_produced <= 300, summary.as_dict()


# --- CLI -----------------------------------------------------------------------------


def test_cli_simulate_prints_a_json_summary(kafka_settings, topic, capsys):
    code = main(
        [
            "simulate",
            "--customers",
            "50",
            "--days",
            "10",
            "--bootstrap-servers",
            kafka_settings.bootstrap_servers,
            "--topic",
            topic,
            "--json",
            "--no-progress",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["topic"] == topic
    assert summary["customers"] == 50
    assert summary["messages_produced"] == summary["events_valid_produced"] > 0
    assert len(consume_all(kafka_settings, topic)) == summary["messages_produced"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--customers", "0"], "--customers must be >= 1"),
        (["--bad-fraction", "1.5"], "--bad-fraction must be in [0, 1)"),
        (["--end", "next tuesday"], "--end 'next tuesday' is not an ISO date"),
        (["--end", "2999-01-01"], "more than 1 day in the future"),
        (["--live", "--rate", "0"], "--rate must be > 0"),
    ],
)
def test_cli_setting_errors_name_the_setting(argv, message, capsys):
    assert main(["simulate", "--no-progress", *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_unreachable_broker_says_what_to_do(monkeypatch, capsys):
    def unreachable(settings, *args, **kwargs):
        raise BrokerUnavailable(f"Kafka at {settings.bootstrap_servers} did not answer within 15 s")

    monkeypatch.setattr("churn_platform.cli.simulate.produce_simulation", unreachable)
    code = main(["simulate", "--bootstrap-servers", "127.0.0.1:1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "127.0.0.1:1" in err and "churn-platform broker" in err and "KAFKA_BOOTSTRAP_SERVERS" in err
    )


def test_cli_end_accepts_dates_and_times():
    from churn_platform.cli.simulate import parse_end

    assert parse_end("2026-10-01") == datetime(2026, 10, 1, tzinfo=UTC)
    assert parse_end("2026-10-01T12:00:00Z") == datetime(2026, 10, 1, 12, tzinfo=UTC)
    assert parse_end("2026-10-01T14:00:00+02:00") == datetime(2026, 10, 1, 12, tzinfo=UTC)
    assert parse_end(None) is None
    assert parse_end("2026-10-01").tzinfo is not None

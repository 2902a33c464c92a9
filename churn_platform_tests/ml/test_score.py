"""Batch scoring: risk bands at their edges, chunking, the lake round trip and Kafka delivery."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, timezone

import msgspec
import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from churn_platform.events.contract import SCORES_TOPIC
from churn_platform.kafka.admin import partitions_of
from churn_platform.kafka.reader import OffsetRangeReader
from churn_platform.lake import tables
from churn_platform.lake.store import Lake, LakeError
from churn_platform.ml import estimators
from churn_platform.ml.frame import model_input
from churn_platform.ml.reasons import Reasoner
from churn_platform.ml.score import (
    SCORES_SCHEMA,
    RiskBands,
    ScoresMissing,
    band_counts,
    bands_from_setting,
    decode_score_message,
    produce_scores,
    read_scores,
    score_table,
    scores_producer,
    top_at_risk,
    top_at_risk_markdown,
    write_scores,
)

AS_OF = date(2024, 3, 1)
SCORED_AT = datetime(2024, 3, 2, 6, 30, 15, 123_456, tzinfo=UTC)
FEATURES = ["events_28d", "days_since_last_event", "mrr", "plan"]


def feature_table(rows: int, seed: int, as_of: date = AS_OF) -> pl.DataFrame:
    """A small feature table whose churn depends on activity, recency and plan."""
    rng = np.random.default_rng(seed)
    events = rng.poisson(8, rows).astype(float)
    recency = rng.integers(0, 60, rows).astype(float)
    recency[rng.random(rows) < 0.1] = np.nan
    plan = rng.choice(["basic", "pro", "team"], rows)
    return pl.DataFrame(
        {
            "customer_id": [f"c{i:05d}" for i in rng.permutation(rows)],
            "as_of": [as_of] * rows,
            "events_28d": events,
            "days_since_last_event": recency,
            "mrr": rng.gamma(2, 20, rows),
            "plan": plan,
        },
        nan_to_null=True,
    )


@dataclass
class TinyModel:
    """Shaped like the registry's LoadedModel; records the size of every call."""

    version: str
    features: list[str]
    estimator: object
    calls: list[int] = field(default_factory=list)

    def predict_proba(self, table: pl.DataFrame) -> np.ndarray:
        self.calls.append(table.height)
        return estimators.positive_probability(self.estimator, model_input(table, self.features))


@pytest.fixture(scope="module")
def fitted() -> object:
    train = feature_table(600, seed=1)
    rng = np.random.default_rng(2)
    logit = (
        1.5
        - 0.3 * train["events_28d"].to_numpy()
        + 0.8 * (train["plan"].to_numpy() == "basic")
        + 0.01 * train["mrr"].to_numpy()
    )
    y = (rng.random(train.height) < 1 / (1 + np.exp(-logit))).astype(int)
    estimator = estimators.build_estimator("gradient_boosting", FEATURES, seed=0, max_iter=50)
    return estimator.fit(model_input(train, FEATURES), y)


@pytest.fixture
def model(fitted) -> TinyModel:
    return TinyModel("gradient_boosting-20240302-abc123", list(FEATURES), fitted)


@pytest.fixture
def features() -> pl.DataFrame:
    return feature_table(250, seed=5)


@pytest.fixture
def scores(model, features) -> pl.DataFrame:
    return score_table(model, features, AS_OF, RiskBands(), scored_at=SCORED_AT)


# --- risk bands --------------------------------------------------------------------


def test_default_bands():
    bands = RiskBands()
    assert bands.cutoffs == (0.1, 0.3)
    assert bands.names == ("low", "medium", "high")


@pytest.mark.parametrize(
    ("p", "band"),
    [
        (0.0, "low"),
        (0.0999999, "low"),
        (0.1, "medium"),
        (0.2, "medium"),
        (0.2999999, "medium"),
        (0.3, "high"),
        (1.0, "high"),
    ],
)
def test_a_band_includes_its_lower_cutoff(p, band):
    bands = RiskBands()
    assert bands.band(p) == band
    assigned = pl.select(bands.band_of(pl.lit(p, pl.Float64))).item()
    assert assigned == band


def test_band_expression_matches_scalar_rule_for_many_bands():
    bands = RiskBands((0.05, 0.2, 0.5, 0.8), ("a", "b", "c", "d", "e"))
    grid = np.round(np.linspace(0, 1, 201), 6)
    frame = pl.DataFrame({"p": grid}).with_columns(bands.band_of(pl.col("p")).alias("band"))
    assert frame["band"].dtype == pl.String
    assert frame["band"].to_list() == [bands.band(p) for p in grid]
    one = RiskBands((0.5,), ("keep", "call"))
    assert pl.select(one.band_of(pl.lit(0.5))).item() == "call"
    assert pl.select(one.band_of(pl.lit(0.49))).item() == "keep"


@pytest.mark.parametrize(
    ("cutoffs", "names", "message"),
    [
        ((), ("only",), "risk_band_cutoffs is empty"),
        ((0.3, 0.1), ("low", "medium", "high"), "strictly ascending"),
        ((0.1, 0.1), ("low", "medium", "high"), "strictly ascending"),
        ((0.0, 0.3), ("low", "medium", "high"), "strictly between 0 and 1"),
        ((0.1, 1.0), ("low", "medium", "high"), "strictly between 0 and 1"),
        ((0.1, float("nan")), ("low", "medium", "high"), "strictly between 0 and 1"),
        (("x", 0.3), ("low", "medium", "high"), "strictly between 0 and 1"),
        ((0.1, 0.3), ("low", "high"), "name every band"),
        ((0.1, 0.3), ("low", "low", "high"), "distinct"),
        ((0.1, 0.3), ("low", "", "high"), "non-empty"),
    ],
)
def test_bad_bands_name_the_setting_and_the_fix(cutoffs, names, message):
    with pytest.raises(ValueError, match=message) as caught:
        RiskBands(cutoffs, names)
    assert "risk_band_cutoffs" in str(caught.value) or "names" in str(caught.value)


def test_bands_are_frozen_tuples_even_from_lists():
    bands = RiskBands([0.2, 0.6], ["a", "b", "c"])  # type: ignore[arg-type]
    assert bands.cutoffs == (0.2, 0.6) and bands.names == ("a", "b", "c")
    assert hash(bands) == hash(RiskBands((0.2, 0.6), ("a", "b", "c")))


def test_bands_from_setting():
    assert bands_from_setting("0.1, 0.3") == RiskBands()
    assert bands_from_setting([0.5]).names == ("band_1", "band_2")
    assert bands_from_setting("0.2,0.5,0.9", ["a", "b", "c", "d"]).cutoffs == (0.2, 0.5, 0.9)
    with pytest.raises(ValueError, match="risk_band_cutoffs"):
        bands_from_setting("0.1,abc")


# --- scoring -------------------------------------------------------------------------


def test_scores_have_the_schema_one_row_per_customer(scores, features, model):
    assert scores.schema == SCORES_SCHEMA
    assert scores.height == features.height
    assert sorted(scores["customer_id"]) == sorted(features["customer_id"])
    assert scores["as_of"].unique().to_list() == [AS_OF]
    assert scores["model_version"].unique().to_list() == [model.version]
    # stored to the millisecond, in UTC
    assert scores["scored_at"].unique().to_list() == [
        datetime(2024, 3, 2, 6, 30, 15, 123_000, tzinfo=UTC)
    ]
    p = scores["churn_probability"]
    assert p.min() >= 0 and p.max() <= 1 and p.n_unique() > 3


def test_scores_are_the_models_probabilities_with_their_bands(scores, features, model):
    expected = dict(
        zip(
            features["customer_id"],
            estimators.positive_probability(model.estimator, model_input(features, FEATURES)),
            strict=True,
        )
    )
    bands = RiskBands()
    for customer_id, p, band in scores.select(
        "customer_id", "churn_probability", "risk_band"
    ).rows():
        assert p == pytest.approx(expected[customer_id], abs=1e-12)
        assert band == bands.band(p)


def test_order_is_probability_descending_then_customer_id(scores):
    rows = scores.select("churn_probability", "customer_id").rows()
    assert rows == sorted(rows, key=lambda r: (-r[0], r[1]))


def test_ties_are_ordered_by_customer_id(features):
    class Constant:
        version = "constant"
        features = FEATURES

        def predict_proba(self, table: pl.DataFrame) -> np.ndarray:
            return np.full(table.height, 0.2)

    tied = score_table(Constant(), features, AS_OF, scored_at=SCORED_AT)
    assert tied["customer_id"].to_list() == sorted(features["customer_id"])
    assert tied["risk_band"].unique().to_list() == ["medium"]


@pytest.mark.parametrize("chunk_rows", [1, 7, 100, 250, 10_000])
def test_chunked_scoring_equals_unchunked(model, features, scores, chunk_rows):
    model.calls.clear()
    chunked = score_table(model, features, AS_OF, scored_at=SCORED_AT, chunk_rows=chunk_rows)
    assert_frame_equal(chunked, scores)
    assert max(model.calls) <= chunk_rows
    assert sum(model.calls) == features.height
    assert len(model.calls) == -(-features.height // chunk_rows)


def test_empty_feature_table_gives_empty_scores(model, features):
    empty = score_table(model, features.head(0), AS_OF, scored_at=SCORED_AT)
    assert empty.schema == SCORES_SCHEMA
    assert empty.is_empty()


def test_scored_at_defaults_to_now_in_utc(model, features):
    before = datetime.now(UTC) - timedelta(seconds=1)
    stamp = score_table(model, features.head(3), AS_OF)["scored_at"][0]
    assert before <= stamp <= datetime.now(UTC)
    east = datetime(2024, 3, 2, 8, 30, tzinfo=timezone(timedelta(hours=2)))
    converted = score_table(model, features.head(3), AS_OF, scored_at=east)["scored_at"][0]
    assert converted == datetime(2024, 3, 2, 6, 30, tzinfo=UTC)


def test_scoring_rejects_tables_that_would_give_wrong_scores(model, features):
    with pytest.raises(ValueError, match="not 2024-03-02"):
        score_table(model, features, AS_OF + timedelta(days=1))
    with pytest.raises(ValueError, match="repeated customer_ids"):
        score_table(model, pl.concat([features, features.head(2)]), AS_OF)
    with pytest.raises(ValueError, match="no customer_id"):
        score_table(model, features.drop("customer_id"), AS_OF)
    with pytest.raises(ValueError, match="no timezone"):
        score_table(model, features, AS_OF, scored_at=datetime(2024, 3, 2))
    with pytest.raises(ValueError, match="chunk_rows"):
        score_table(model, features, AS_OF, chunk_rows=0)


def test_scoring_rejects_a_model_that_does_not_return_probabilities(features):
    class Broken:
        version = "broken"
        features = FEATURES

        def __init__(self, output):
            self.output = output

        def predict_proba(self, table: pl.DataFrame) -> np.ndarray:
            return self.output(table.height)

    with pytest.raises(ValueError, match="one positive-class probability per row"):
        score_table(Broken(lambda n: np.zeros((n, 2))), features, AS_OF)
    with pytest.raises(ValueError, match=r"outside \[0, 1\] or NaN"):
        score_table(Broken(lambda n: np.full(n, np.nan)), features, AS_OF)
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        score_table(Broken(lambda n: np.full(n, 1.5)), features, AS_OF)


# --- summaries -----------------------------------------------------------------------


def test_band_counts_list_every_band_with_zeros(scores):
    counts = band_counts(scores, RiskBands())
    assert list(counts) == ["low", "medium", "high"]
    assert sum(counts.values()) == scores.height
    assert counts == {band: scores.filter(pl.col("risk_band") == band).height for band in counts}
    only_high = scores.with_columns(pl.lit("high").alias("risk_band"))
    assert band_counts(only_high, RiskBands()) == {"low": 0, "medium": 0, "high": scores.height}
    assert band_counts(scores.head(0), RiskBands()) == {"low": 0, "medium": 0, "high": 0}


def test_band_counts_reject_bands_from_other_cutoffs(scores):
    with pytest.raises(ValueError, match="not one of"):
        band_counts(scores, RiskBands((0.5,), ("keep", "call")))


def test_top_at_risk(scores):
    top = top_at_risk(scores, 5)
    assert top.columns == ["rank", "customer_id", "churn_probability", "risk_band", "reasons"]
    assert top["rank"].to_list() == [1, 2, 3, 4, 5]
    assert top["customer_id"].to_list() == scores["customer_id"].head(5).to_list()
    assert top_at_risk(scores, 0).is_empty()
    assert top_at_risk(scores, 10_000).height == scores.height
    with pytest.raises(ValueError, match="n must be"):
        top_at_risk(scores, -1)


def test_top_at_risk_markdown(scores):
    lines = top_at_risk_markdown(scores, 3).splitlines()
    assert lines[0] == "| rank | customer | churn probability | band | why |"
    assert len(lines) == 2 + 3
    first = scores.row(0, named=True)
    assert lines[2] == (
        f"| 1 | {first['customer_id']} | {first['churn_probability']:.3f} | "
        f"{first['risk_band']} | — |"  # scored without reasons
    )
    assert top_at_risk_markdown(scores.head(0)) == "_no customers scored_"
    odd = scores.head(1).with_columns(pl.lit("a|b\nc").alias("customer_id"))
    assert "| a\\|b c |" in top_at_risk_markdown(odd)


# --- the lake ------------------------------------------------------------------------


def committed_files(lake: Lake, as_of=AS_OF) -> list[str]:
    return [
        tables.file_path(tables.SCORES, f)
        for f in tables.data_files(lake, tables.SCORES, {"as_of": as_of})
    ]


def test_write_read_roundtrip(tmp_path, scores):
    lake = Lake(tmp_path / "lake")
    version = write_scores(lake, scores, AS_OF)
    assert version == tables.version(lake, tables.SCORES)
    (path,) = committed_files(lake)
    assert path.startswith("scores/churn_scores/as_of=2024-03-01/")
    assert_frame_equal(read_scores(lake, AS_OF), scores)


def test_rerun_replaces_the_scores_in_one_commit(tmp_path, scores):
    lake = Lake(tmp_path / "lake")
    first = write_scores(lake, scores, AS_OF)
    other_day = scores.head(3).with_columns(pl.lit(AS_OF + timedelta(days=1)).alias("as_of"))
    write_scores(lake, other_day, AS_OF + timedelta(days=1))
    lake.write_bytes(f"{tables.SCORES.name}/as_of=2024-03-01/part-1.parquet", b"uncommitted")
    rescored = scores.head(10).with_columns(pl.lit("v2").alias("model_version"))
    write_scores(lake, rescored, AS_OF)
    assert_frame_equal(read_scores(lake, AS_OF), rescored)
    assert len(committed_files(lake)) == 1  # the old file is replaced, the stray one unseen
    assert_frame_equal(read_scores(lake, AS_OF + timedelta(days=1)), other_day)
    assert_frame_equal(read_scores(lake, AS_OF, version=first), scores)


def test_no_customers_to_score_is_an_empty_partition_not_a_missing_one(tmp_path, scores):
    lake = Lake(tmp_path / "lake")
    write_scores(lake, scores.head(0), AS_OF)
    assert read_scores(lake, AS_OF).is_empty()


def test_write_rejects_scores_of_another_date_or_shape(tmp_path, scores):
    lake = Lake(tmp_path / "lake")
    with pytest.raises(ValueError, match="not all as of 2024-03-02"):
        write_scores(lake, scores, AS_OF + timedelta(days=1))
    with pytest.raises(ValueError, match="score_table"):
        write_scores(lake, scores.drop("risk_band"), AS_OF)
    assert tables.version(lake, tables.SCORES) is None


def test_missing_scores_name_the_url_and_the_fix(tmp_path):
    lake = Lake(tmp_path / "lake")
    with pytest.raises(ScoresMissing) as caught:
        read_scores(lake, AS_OF)
    assert isinstance(caught.value, LakeError)
    message = str(caught.value)
    assert tables.table_uri(lake, tables.SCORES) in message
    assert "materialize churn_scores for 2024-03-01" in message


def test_damaged_scores_are_an_error_naming_the_file(tmp_path, scores):
    lake = Lake(tmp_path / "lake")
    write_scores(lake, scores, AS_OF)
    (path,) = committed_files(lake)
    lake.write_bytes(path, b"not parquet")
    with pytest.raises(LakeError, match=re.escape(f"could not read {lake.url(path)}")):
        read_scores(lake, AS_OF)


# --- Kafka ---------------------------------------------------------------------------


def read_all(kafka_settings, topic: str) -> list:
    partitions = partitions_of(kafka_settings, topic)
    reader = OffsetRangeReader(kafka_settings, topic, dict.fromkeys(partitions, 0))
    return [message for chunk in reader.chunks() for message in chunk.messages]


def test_produce_scores_delivers_one_keyed_json_message_per_customer(kafka_settings, topic, scores):
    delivered = produce_scores(kafka_settings, scores, topic=topic, chunk_rows=40)
    assert delivered == scores.height

    messages = read_all(kafka_settings, topic)
    assert len(messages) == scores.height
    expected = {row["customer_id"]: row for row in scores.iter_rows(named=True)}
    assert sorted(m.key().decode("utf-8") for m in messages) == sorted(expected)
    for message in messages:
        row = expected[message.key().decode("utf-8")]
        raw = message.value()
        assert b" " not in raw  # compact JSON
        body = json.loads(raw)
        assert body == {
            "customer_id": row["customer_id"],
            "as_of": "2024-03-01",
            "churn_probability": row["churn_probability"],
            "risk_band": row["risk_band"],
            "model_version": row["model_version"],
            "scored_at": "2024-03-02T06:30:15.123Z",
            "reasons": [],
        }
        decoded = decode_score_message(raw)
        assert decoded.as_of == AS_OF
        assert decoded.scored_at == row["scored_at"]
        assert decoded.churn_probability == row["churn_probability"]
    # one customer's messages always go to the same partition
    by_key = {}
    for message in messages:
        assert by_key.setdefault(message.key(), message.partition()) == message.partition()


def test_produce_scores_creates_a_missing_topic(kafka_settings, topic, scores):
    new_topic = f"{topic}-scores"
    assert produce_scores(kafka_settings, scores.head(5), topic=new_topic) == 5
    assert partitions_of(kafka_settings, new_topic)
    assert len(read_all(kafka_settings, new_topic)) == 5


def test_produce_scores_checks_its_input_before_connecting(scores):
    from churn_platform.kafka.config import KafkaSettings

    unreachable = KafkaSettings("127.0.0.1:1")
    with pytest.raises(ValueError, match="score_table"):
        produce_scores(unreachable, scores.drop("scored_at"))
    with pytest.raises(ValueError, match="chunk_rows"):
        produce_scores(unreachable, scores, chunk_rows=0)


def test_a_producer_started_early_is_the_one_that_delivers_the_scores(
    kafka_settings, topic, scores
):
    from churn_platform.kafka.config import KafkaSettings

    # creating it asks the broker nothing: an unreachable one fails only at produce time
    scores_producer(KafkaSettings("127.0.0.1:1"))
    producer = scores_producer(kafka_settings)
    assert produce_scores(kafka_settings, scores, topic=topic, producer=producer) == scores.height
    assert producer.delivered == scores.height
    assert len(read_all(kafka_settings, topic)) == scores.height


def test_scores_topic_constant():
    assert SCORES_TOPIC == "churn-scores"


# --- reasons ---------------------------------------------------------------------------


@dataclass
class CalibratedModel(TinyModel):
    """A calibrated boosting (the shape the registry serves): it has reasons."""


@pytest.fixture(scope="module")
def calibrated(fitted) -> object:
    later = feature_table(400, seed=3)
    rng = np.random.default_rng(4)
    logit = 1.5 - 0.3 * later["events_28d"].to_numpy() + 0.8 * (later["plan"] == "basic")
    y = (rng.random(later.height) < 1 / (1 + np.exp(-logit.to_numpy()))).astype(int)
    return estimators.calibrate(fitted, model_input(later, FEATURES), y)


@pytest.fixture
def explained(calibrated, features):
    model = CalibratedModel("gb-calibrated", list(FEATURES), calibrated)
    typical = {"events_28d": 8.0, "days_since_last_event": 29.5, "mrr": 31.0, "plan": "pro"}
    reasoner = Reasoner.build(calibrated, FEATURES, typical=typical)
    assert reasoner is not None
    scores = score_table(model, features, AS_OF, scored_at=SCORED_AT, reasoner=reasoner)
    return model, reasoner, scores


def test_scores_carry_the_reasoners_reasons(explained, features):
    model, reasoner, scores = explained
    assert scores.schema == SCORES_SCHEMA
    by_customer = dict(zip(scores["customer_id"], scores["reasons"].to_list(), strict=True))
    rows = model_input(features, FEATURES).to_dicts()
    for customer, expected in zip(features["customer_id"], reasoner.rows(rows), strict=True):
        assert by_customer[customer] == expected
    reasons = [r for rs in scores["reasons"].to_list() for r in rs]
    assert reasons and all(r["contribution"] > 0 for r in reasons)
    assert all(1 <= len(rs) <= 3 for rs in scores["reasons"].head(20).to_list())
    # chunked the same
    again = score_table(
        model, features, AS_OF, scored_at=SCORED_AT, reasoner=reasoner, chunk_rows=7
    )
    assert_frame_equal(again, scores)
    markdown = top_at_risk_markdown(scores, 3)
    assert scores["reasons"][0][0]["text"] in markdown.splitlines()[2]


def test_a_reasoner_that_is_not_the_models_arithmetic_gives_no_reasons(
    explained, features, monkeypatch
):
    model, reasoner, with_reasons = explained
    # the model serves the uncalibrated boosting; the reasoner walks the calibrated one
    other = TinyModel("gb-uncalibrated", list(FEATURES), model.estimator.estimator)
    alone = score_table(other, features, AS_OF, scored_at=SCORED_AT)
    for chunk_rows in (100_000, 7):
        scores = score_table(
            other, features, AS_OF, scored_at=SCORED_AT, reasoner=reasoner, chunk_rows=chunk_rows
        )
        assert_frame_equal(scores, alone)  # the model's own probabilities, reasons null
        assert scores["reasons"].null_count() == scores.height
    # the check compares the first chunk the reasoner walks anyway: each row walked once
    walked: list[int] = []
    walk = Reasoner.score_table
    monkeypatch.setattr(
        Reasoner,
        "score_table",
        lambda self, table: walked.append(table.height) or walk(self, table),
    )
    counting = replace(model, calls=[])
    again = score_table(
        counting, features, AS_OF, scored_at=SCORED_AT, reasoner=reasoner, chunk_rows=100
    )
    assert walked == [100, 100, 50]
    assert counting.calls == [100]  # the model, once, on the first chunk's rows
    assert_frame_equal(again, with_reasons)


def test_reasons_go_through_the_lake_and_kafka(explained, tmp_path, kafka_settings, topic):
    _, _, scores = explained
    lake = Lake(tmp_path / "lake")
    write_scores(lake, scores, AS_OF)
    assert_frame_equal(read_scores(lake, AS_OF), scores)
    assert produce_scores(kafka_settings, scores, topic=topic) == scores.height
    expected = {row["customer_id"]: row["reasons"] for row in scores.iter_rows(named=True)}
    for message in read_all(kafka_settings, topic):
        decoded = decode_score_message(message.value())
        got = [msgspec.structs.asdict(r) for r in decoded.reasons]
        assert got == expected[decoded.customer_id]


def test_scores_written_before_reasons_read_back_with_null_reasons(tmp_path, explained):
    """A lake scored by an older version: its partitions lack the column; new ones add it."""
    _, _, scores = explained
    lake = Lake(tmp_path / "lake")
    old_day = AS_OF - timedelta(days=1)
    old = scores.drop("reasons").with_columns(pl.lit(old_day).alias("as_of"))
    tables.write(lake, tables.SCORES, old.to_arrow(), replace={"as_of": old_day})
    write_scores(lake, scores, AS_OF)
    back = read_scores(lake, old_day)
    assert back["reasons"].null_count() == back.height == scores.height
    assert_frame_equal(read_scores(lake, AS_OF), scores)

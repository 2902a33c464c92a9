"""ML wiring, real: training job with blocking gate checks, champion, partitioned scoring."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import dagster as dg
import msgspec
import polars as pl
import pytest
from polars.testing import assert_frame_equal
from threadpoolctl import threadpool_limits

from churn_platform.defs.ml.assets import NO_REGRESSION_CHECK, QUALITY_CHECK
from churn_platform.defs.ml.definitions import SCORING_JOB, TRAINING_JOB
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.features.materialize import read_features
from churn_platform.kafka.admin import partitions_of
from churn_platform.kafka.config import KafkaSettings
from churn_platform.kafka.reader import OffsetRangeReader
from churn_platform.lake import tables
from churn_platform.ml import estimators, registry
from churn_platform.ml.frame import LABEL_COLUMN, model_input
from churn_platform.ml.score import decode_score_message, read_scores
from churn_platform.ml.training_set import read_training_set
from churn_platform_tests.defs.training_flow import (
    POLARS,
    QUIET,
    champion_bytes,
    definitions_for,
    evaluations,
    failure_text,
    materialized,
    run_job,
    train,
)
from churn_platform_tests.ml.ml_lake import copy_lake

TRAINING_ASSETS = {"training_set", "churn_model", "churn_champion"}
VERSION_FILES = {
    "model.skops",
    "model.npz",  # the served model as arrays: scored without scikit-learn
    "evaluated.skops",
    "baseline.skops",
    "metrics.json",
    "features.json",
    "gate.json",
    "training.json",
    "card.md",
    "manifest.json",
}
PLOTS = ("roc_curve", "precision_recall_curve", "calibration_curve", "feature_importance")
PNG = "data:image/png;base64,"


@pytest.fixture(scope="module", autouse=True)
def one_thread_per_library():
    """OpenMP threads fighting over a busy machine make HistGradientBoosting ~5x slower."""
    with threadpool_limits(1):
        yield


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def test_training_job_materializes_the_model_its_checks_and_the_champion(trained, ml_lake):
    """A good candidate passes both blocking checks, is registered in full and promoted."""
    lake, result = trained
    assert result.success
    done = materialized(result)
    assert set(done) == TRAINING_ASSETS
    checks = evaluations(result)
    assert {name: c.passed for name, c in checks.items()} == {
        QUALITY_CHECK: True,
        NO_REGRESSION_CHECK: True,
    }
    assert "no champion yet" in checks[NO_REGRESSION_CHECK].metadata["rules"].value
    rules = checks[QUALITY_CHECK].metadata["rules"].value
    assert "no_skill passed" in rules and "baseline passed" in rules and "floor" not in rules

    meta = done["churn_model"].metadata
    version = meta["version"].value
    auc, base = meta["holdout_roc_auc"].value, meta["baseline_roc_auc"].value
    assert 0.75 <= auc <= 1 and auc > base  # observed on this lake
    assert meta["top_decile_lift"].value > 1
    assert meta["gate"].value == "passed"
    for plot in PLOTS:
        assert PNG in meta[plot].value, plot
    assert meta["lake"].value.endswith(f"{registry.MODELS_DIR}/{version}")

    champion = json.loads(lake.read_bytes(registry.CHAMPION_FILE))
    assert champion["version"] == version and champion["previous"] is None
    assert done["churn_champion"].metadata["version"].value == version
    files = lake.list_files(registry.version_dir(version))
    assert {path.rsplit("/", 1)[1] for path in files} == VERSION_FILES
    record = registry.read_record(lake, version)
    assert record.gate.passed is True
    assert record.metrics["candidate"]["roc_auc"] == auc
    # the served model was fitted on every labelled date; the evaluated one on the train dates
    training_rows = read_training_set(lake).rows
    assert record.training["served_fit"] == "every labelled date"
    assert record.training["served_rows"] == training_rows > record.training["train_rows"]
    assert record.training["served_date_count"] == len(ml_lake.dates.dates)
    assert record.churn.key() == "cancellation:30"
    assert record.spec is not None and "login" in record.spec.activity_types
    assert "fitted on every labelled date" in meta["served_model"].value
    assert "- Churn: cancellation: a subscription_cancelled within 30 days" in record.card

    training = read_training_set(lake)
    ts_meta = done["training_set"].metadata
    assert ts_meta["rows"].value == training.rows > 0
    assert ts_meta["churn_rate"].value == round(training.positives / training.rows, 4)
    assert 0 < ts_meta["churn_rate"].value < 1
    assert ts_meta["as_of_dates"].value == len(ml_lake.dates.dates) == len(training.dates)
    per_date = ts_meta["per_date"].value
    assert "| as_of | rows | churned | churn_rate |" in per_date
    assert all(d.isoformat() in per_date for d in ml_lake.dates.dates)
    assert ts_meta["computed_inputs"].value.startswith("(none")  # all read from the lake
    # the model records the table versions its training set was built from, and the set's own
    lineage = record.training["training_set"]
    assert lineage == training.lineage()
    assert lineage["training_set_version"] == ts_meta["table_version"].value
    assert lineage["features_version"] == ts_meta["features_version"].value is not None
    assert lineage["labels_version"] == ts_meta["labels_version"].value is not None
    assert f"churn_labels v{lineage['labels_version']}" in record.card


def test_an_opt_in_floor_blocks_the_champion_naming_the_rule_and_setting(
    trained, ml_lake, tmp_path, instance
):
    """min_roc_auc=0.99 fails the floor rule; churn_champion never runs; the champion stays;
    the check, the run's log and the registry say which rule failed and what changes it."""
    lake = copy_lake(trained[0], tmp_path / "lake")
    before = champion_bytes(lake)
    assert before is not None
    versions_before = registry.list_versions(lake)

    result = train(lake, ml_lake.dates.dates[0], instance, min_roc_auc=0.99)

    assert not result.success
    checks = evaluations(result)
    assert not checks[QUALITY_CHECK].passed
    assert checks[NO_REGRESSION_CHECK].passed
    meta = checks[QUALITY_CHECK].metadata
    assert "floor FAILED" in meta["rules"].value and "< floor 0.9900" in meta["rules"].value
    assert meta["failed"].value == "floor"
    assert "min_roc_auc" in meta["change_with"].value
    assert "CHURN_MIN_ROC_AUC" in meta["change_with"].value
    logged = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("gate: floor FAILED" in message for message in logged), logged
    assert set(materialized(result)) == {"training_set", "churn_model"}
    assert champion_bytes(lake) == before
    # the failed candidate is registered (for inspection), with its gate recorded
    (new,) = sorted(set(registry.list_versions(lake)) - set(versions_before))
    record = registry.read_record(lake, new)
    assert record.gate.passed is False and record.gate.failed_rules == ["floor"]
    assert record.training["served_fit"] == "evaluation split"  # nothing refitted


def test_a_candidate_worse_than_the_champion_fails_no_regression(
    trained, ml_lake, tmp_path, instance
):
    """A champion that saw the holdout outscores any honest candidate: no_regression fails."""
    lake = copy_lake(trained[0], tmp_path / "lake")
    training = read_training_set(lake)
    x = model_input(training.table, training.features)
    y = training.table[LABEL_COLUMN].cast(pl.Int8).to_numpy()
    cheat = estimators.build_estimator(estimators.CANDIDATE_KIND, training.features, seed=1).fit(
        x, y
    )
    version = registry.new_version(token="cheating")
    registry.save_model(
        lake,
        version,
        cheat,
        features=training.features,
        metrics={"candidate": {"roc_auc": 1.0}},
        gate={"passed": True, "reasons": ["trained on every date, holdout included"]},
        training={},
        card="# cheating\n",
    )
    registry.promote(lake, version, reason="test: a champion that saw the holdout")
    before = champion_bytes(lake)

    result = train(lake, ml_lake.dates.dates[0], instance)

    assert not result.success
    checks = evaluations(result)
    assert checks[QUALITY_CHECK].passed
    assert not checks[NO_REGRESSION_CHECK].passed
    meta = checks[NO_REGRESSION_CHECK].metadata
    assert meta["champion"].value == version
    candidate_auc = materialized(result)["churn_model"].metadata["holdout_roc_auc"].value
    champion_auc = meta["champion_roc_auc"].value
    assert champion_auc > candidate_auc + 0.005
    assert "max_regression" in meta["change_with"].value
    reasons = meta["rules"].value
    assert f"{candidate_auc:.4f}" in reasons and f"{champion_auc:.4f}" in reasons
    assert "regression" in reasons and version in reasons
    assert "churn_champion" not in materialized(result)
    assert champion_bytes(lake) == before


def test_a_champion_of_another_churn_definition_is_replaced_not_compared(
    trained, ml_lake, tmp_path, instance
):
    """A champion trained for inactivity predicts another label: scoring refuses features of
    another population, no_regression says the two are not comparable, and the candidate of
    the definition in force is promoted."""
    lake = copy_lake(trained[0], tmp_path / "lake")
    current = registry.load_champion(lake)
    other = registry.new_version(now=datetime.now(UTC) - timedelta(minutes=1), token="other")
    registry.save_model(
        lake,
        other,
        current.estimator,
        features=current.features,
        metrics=current.record.metrics,
        gate={"passed": True, "reasons": ["test"]},
        training={"churn_definition": {"kind": "inactivity", "horizon_days": 60}},
        card="# inactivity\n",
    )
    registry.promote(lake, other, reason="test: another definition")
    as_of = ml_lake.dates.dates[-1]
    scoring = run_job(
        definitions_for(lake, ml_lake.dates.dates[0]),
        instance,
        SCORING_JOB,
        {"churn_scores": {"config": {"produce_to_kafka": False}}},
        partition=as_of.isoformat(),
    )
    assert not scoring.success
    text = failure_text(scoring)
    assert "was trained for inactivity:60" in text and "retrain (training_job)" in text

    result = train(lake, ml_lake.dates.dates[0], instance)

    assert result.success, failure_text(result)
    check = evaluations(result)[NO_REGRESSION_CHECK]
    assert check.passed
    assert "not comparable, the new definition replaces it" in check.metadata["rules"].value
    assert registry.read_champion(lake).version != other


def read_topic(settings: KafkaSettings, topic: str) -> list:
    partitions = partitions_of(settings, topic)
    reader = OffsetRangeReader(settings, topic, dict.fromkeys(partitions, 0))
    return [message for chunk in reader.chunks() for message in chunk.messages]


def test_scoring_job_scores_every_customer_to_the_lake_and_kafka(
    trained, ml_lake, tmp_path, instance, kafka_settings, topic
):
    """The champion scores each active customer once; lake and Kafka hold the same scores."""
    lake = copy_lake(trained[0], tmp_path / "lake")
    as_of = ml_lake.dates.dates[-1]
    champion = registry.read_champion(lake).version
    definitions = definitions_for(lake, ml_lake.dates.dates[0], kafka_settings)
    result = run_job(
        definitions,
        instance,
        SCORING_JOB,
        {"churn_scores": {"config": {"topic": topic}}},
        partition=as_of.isoformat(),
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    assert event.materialization.partition == as_of.isoformat()
    meta = event.materialization.metadata

    features = read_features(lake, as_of)
    customers = meta["customers_scored"].value
    assert customers == features.height > 0
    bands = {k: v.value for k, v in meta.items() if k.startswith("band_")}
    assert set(bands) == {"band_low", "band_medium", "band_high"}
    assert sum(bands.values()) == customers
    assert meta["model_version"].value == champion
    assert PNG in meta["histogram"].value
    assert "| rank | customer | churn probability | band | why |" in meta["top_at_risk"].value
    assert meta["produced_to_kafka"].value == customers
    assert meta["topic"].value == topic

    scores = read_scores(lake, as_of)
    assert scores.height == customers
    assert sorted(scores["customer_id"]) == sorted(features["customer_id"])
    assert scores["model_version"].unique().to_list() == [champion]
    assert scores["as_of"].unique().to_list() == [as_of]
    for band in ("low", "medium", "high"):
        assert scores.filter(pl.col("risk_band") == band).height == bands[f"band_{band}"]
    # every score has its reasons; typical values come from the champion's training record
    typical = registry.read_record(lake, champion).training["typical_values"]
    assert typical["as_of"] and typical["values"]["events_28d"] is not None
    assert scores["reasons"].null_count() == 0
    high = scores.filter(pl.col("risk_band") == "high")
    assert high.height and (high["reasons"].list.len() > 0).mean() > 0.9
    first = scores["reasons"][0][0]
    assert first["text"] in meta["top_at_risk"].value.splitlines()[2]
    assert "(typical " in first["text"] or first["feature"] == "plan"
    common = meta["common_reasons"].value
    assert "among the 'high' band" in common and len(common.splitlines()) >= 3
    reasons = dict(zip(scores["customer_id"], scores["reasons"].to_list(), strict=True))

    messages = read_topic(kafka_settings, topic)
    assert len(messages) == customers
    keys = [m.key().decode() for m in messages]
    assert sorted(keys) == sorted(scores["customer_id"])
    expected = dict(zip(scores["customer_id"], scores["churn_probability"], strict=True))
    for message in messages:
        decoded = decode_score_message(message.value())
        assert decoded.customer_id == message.key().decode()
        assert decoded.churn_probability == expected[decoded.customer_id]
        assert decoded.model_version == champion and decoded.as_of == as_of
        streamed = [msgspec.structs.asdict(r) for r in decoded.reasons]
        assert streamed == reasons[decoded.customer_id]


def test_scoring_without_a_usable_champion_fails_loudly(
    trained, ml_lake, tmp_path, instance, kafka_settings, topic
):
    """No champion, or a damaged champion model file: the run fails and nothing is scored."""
    as_of = ml_lake.dates.dates[-1]
    config = {"churn_scores": {"config": {"topic": topic}}}

    untrained = copy_lake(ml_lake.lake, tmp_path / "untrained")
    definitions = definitions_for(untrained, ml_lake.dates.dates[0], kafka_settings)
    result = run_job(definitions, instance, SCORING_JOB, config, partition=as_of.isoformat())
    assert not result.success
    assert not result.get_asset_materialization_events()
    text = failure_text(result)
    assert "no champion yet" in text and "champion.json does not exist" in text
    assert "ModelMissing" in text
    assert not tables.data_files(untrained, tables.SCORES, {"as_of": as_of})

    lake = copy_lake(trained[0], tmp_path / "corrupt")
    version = registry.read_champion(lake).version
    model_path = f"{registry.version_dir(version)}/model.skops"
    damaged = bytearray(lake.read_bytes(model_path))
    damaged[len(damaged) // 2] ^= 0xFF
    lake.write_bytes(model_path, bytes(damaged))
    definitions = definitions_for(lake, ml_lake.dates.dates[0], kafka_settings)
    result = run_job(definitions, instance, SCORING_JOB, config, partition=as_of.isoformat())
    assert not result.success
    assert not result.get_asset_materialization_events()
    text = failure_text(result)
    assert lake.url(model_path) in text and "does not match its manifest" in text
    assert "ModelCorrupt" in text
    assert not tables.data_files(lake, tables.SCORES, {"as_of": as_of})
    assert read_topic(kafka_settings, topic) == []


def test_churn_champion_refuses_a_newest_version_that_failed_its_gate(
    trained, ml_lake, tmp_path, instance
):
    """Materializing churn_champion alone never promotes a failed candidate."""
    lake = copy_lake(trained[0], tmp_path / "lake")
    current = registry.load_champion(lake)
    before = champion_bytes(lake)
    # a minute ahead: a name in the training run's second would sort by its random suffix
    failed = registry.new_version(now=datetime.now(UTC) + timedelta(minutes=1), token="failed")
    registry.save_model(
        lake,
        failed,
        current.estimator,
        features=current.features,
        metrics=current.record.metrics,
        gate={"passed": False, "reasons": ["holdout ROC AUC 0.6100 < floor 0.7500"]},
        training={},
        card="# failed\n",
    )
    assert registry.list_versions(lake)[-1] == failed

    definitions = definitions_for(lake, ml_lake.dates.dates[0])
    result = definitions.resolve_job_def(TRAINING_JOB).execute_in_process(
        instance=instance,
        asset_selection=[dg.AssetKey("churn_champion")],
        run_config=QUIET,
        raise_on_error=False,
    )
    assert not result.success
    assert not result.get_asset_materialization_events()
    text = failure_text(result)
    assert "PromotionRefused: model version" in text and "did not pass its gate" in text
    assert failed in text and "0.6100 < floor 0.7500" in text
    assert champion_bytes(lake) == before


def test_the_code_location_loads_the_ml_jobs_and_asset_graph(monkeypatch, tmp_path):
    """churn_platform.definitions.defs() wires the ML assets, their deps and both jobs."""
    monkeypatch.setenv("CHURN_LAKE", str(tmp_path / "lake"))
    monkeypatch.delenv("CHURN_FEATURES_START_DATE", raising=False)
    from churn_platform.definitions import defs

    definitions = defs()
    assert definitions.resolve_job_def(TRAINING_JOB)
    assert definitions.resolve_job_def(SCORING_JOB)
    graph = definitions.get_repository_def().asset_graph

    def parents(key: str) -> set[str]:
        return {k.to_user_string() for k in graph.get(dg.AssetKey(key)).parent_keys}

    assert parents("training_set") == {"customer_features", "churn_labels"}
    assert parents("churn_model") == {"training_set"}
    assert parents("churn_champion") == {"churn_model"}
    assert parents("churn_scores") == {"customer_features", "churn_champion"}
    check_keys = {k.name for k in graph.asset_check_keys if k.asset_key.path == ["churn_model"]}
    assert check_keys == {QUALITY_CHECK, NO_REGRESSION_CHECK}
    scores_partitions = definitions.resolve_assets_def("churn_scores").partitions_def
    assert scores_partitions == definitions.resolve_assets_def("customer_features").partitions_def
    assert definitions.resolve_assets_def("churn_model").partitions_def is None
    assert isinstance(definitions.resources["lake"], LakeResource)


def test_training_set_fills_missing_dates_in_one_pass_with_their_checks(ml_lake, tmp_path):
    """Dates the lake lacks are computed together, and each is recorded as that partition's
    materialization with the four feature checks it passed."""
    from churn_platform_tests.ml.test_training_set import drop_partition

    lake = copy_lake(ml_lake.lake, tmp_path / "lake")
    gone = ml_lake.dates.dates[2], ml_lake.dates.dates[7]
    for as_of in gone:
        drop_partition(lake, tables.FEATURES, as_of)
    definitions = dg.Definitions.merge(
        definitions_for(lake, ml_lake.dates.dates[0]),
        dg.Definitions(jobs=[dg.define_asset_job("only_training_set", selection=["training_set"])]),
    )
    with dg.instance_for_test() as test_instance:
        result = run_job(definitions, test_instance, "only_training_set", POLARS)
    assert result.success, failure_text(result)
    filled = {
        (e.asset_key.to_user_string(), e.materialization.partition)
        for e in result.get_asset_materialization_events()
    }
    for as_of in gone:
        assert ("customer_features", as_of.isoformat()) in filled
        assert ("churn_labels", as_of.isoformat()) in filled
    checks = result.get_asset_check_evaluations()
    assert {(c.check_name, c.partition) for c in checks} == {
        (name, as_of.isoformat())
        for name in (
            "schema_matches_feature_list",
            "no_unexpected_nulls",
            "values_in_range",
            "one_row_per_active_customer",
        )
        for as_of in gone
    }
    assert all(c.passed for c in checks)
    for as_of in gone:
        assert_frame_equal(read_features(lake, as_of), read_features(ml_lake.lake, as_of))


def test_scoring_steps_take_a_pool_of_their_own_so_two_never_overlap():
    from churn_platform.defs.features.definitions import features_partitions
    from churn_platform.defs.ingestion.assets import EXTRACT_POOL
    from churn_platform.defs.ml.assets import SCORES_POOL, build_scores_asset

    scores = build_scores_asset(features_partitions({}))
    assert scores.op.pool == SCORES_POOL != EXTRACT_POOL

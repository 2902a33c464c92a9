"""`churn-platform training-set rebuild`: a model's training set made again from the table
versions it recorded, after the inputs changed; and every bad input in one line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from deltalake import DeltaTable
from threadpoolctl import threadpool_limits

from churn_platform.cli import main
from churn_platform.features.materialize import materialize_features, read_features
from churn_platform.lake import tables
from churn_platform.ml import registry
from churn_platform.ml.train import TrainConfig, model_card, train_models
from churn_platform.ml.training_set import (
    build_training_set,
    read_training_set,
    write_training_set,
)
from churn_platform.testing.lakes import event, events_frame, write_events
from churn_platform_tests.ml.ml_lake import copy_lake

FAST = TrainConfig(importance_rows=600, importance_repeats=1)


def save(lake, version: str, training_record: dict) -> None:
    """Register a model trained on the lake's current training set, with `training_record`."""
    training = read_training_set(lake)
    with threadpool_limits(1):
        trained = train_models(training.table, training.features, FAST)
    registry.save_model(
        lake,
        version,
        trained.candidate,
        features=trained.features,
        metrics=trained.metrics,
        gate={"passed": True, "reasons": []},
        training=training_record,
        card=model_card(
            version,
            trained,
            training.rows,
            "",
            [],
            True,
            training.churn,
            None,
            training_record.get("training_set"),
        ),
    )


@pytest.fixture(scope="module")
def trained_lake(ml_lake, tmp_path_factory):
    """A copy of the ML lake with a training set written and a model recording its lineage."""
    lake = copy_lake(ml_lake.lake, tmp_path_factory.mktemp("rebuild") / "lake")
    training = build_training_set(lake, ml_lake.dates.dates)
    write_training_set(lake, training)
    save(
        lake,
        "v-rebuild",
        {"churn_definition": training.churn.to_dict(), "training_set": training.lineage()},
    )
    return lake, training


def rebuild(lake, version: str, capsys) -> tuple[int, str, str]:
    code = main(["training-set", "rebuild", "--model", version, "--lake", lake.uri])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_rebuild_equals_the_recorded_set_after_the_inputs_changed(
    trained_lake, ml_lake, capsys, tmp_path
):
    source, training = trained_lake
    lake = copy_lake(source, tmp_path / "lake")
    record = registry.read_record(lake, "v-rebuild")
    lineage = record.training["training_set"]
    assert lineage["training_set_version"] == tables.version(lake, tables.TRAINING_SET)
    assert lineage["features_version"] == tables.version(lake, tables.FEATURES)
    assert f"customer_features v{lineage['features_version']}" in record.card

    # more events for one training date: an active customer logs in ten more times
    d = ml_lake.dates.dates[-1]
    customer = read_features(lake, d)["customer_id"][0]
    morning = datetime(d.year, d.month, d.day, 8, tzinfo=UTC)
    extra = [
        event(f"extra-{i}", customer, "login", morning + timedelta(minutes=i)) for i in range(10)
    ]
    write_events(lake, events_frame(extra))
    materialize_features(lake, d, engine="polars")
    assert tables.version(lake, tables.FEATURES) > lineage["features_version"]

    now = build_training_set(lake, training.dates, training.churn)
    assert now.sha256() != lineage["sha256"]  # the current tables give another set

    code, out, err = rebuild(lake, "v-rebuild", capsys)
    assert (code, err) == (0, "")
    assert "equal to the recorded set" in out
    assert f"customer_features v{lineage['features_version']}" in out


def test_a_set_that_cannot_be_made_again_exits_1(trained_lake, capsys, tmp_path):
    source, training = trained_lake
    lake = copy_lake(source, tmp_path / "lake")
    lineage = {**training.lineage(), "sha256": "0" * 64}  # as if the features code had changed
    save(lake, "v-differs", {"churn_definition": training.churn.to_dict(), "training_set": lineage})
    code, out, err = rebuild(lake, "v-differs", capsys)
    assert (code, err) == (1, "")
    assert "DIFFERS from the recorded set" in out


def test_bad_input_is_one_line_and_exit_2(trained_lake, capsys, tmp_path):
    source, training = trained_lake
    lake = copy_lake(source, tmp_path / "lake")

    code, out, err = rebuild(lake, "v-none", capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "no model version v-none" in err and "Traceback" not in err

    code, _, err = rebuild(lake, "../escape", capsys)
    assert code == 2 and "bad model version" in err and len(err.strip().splitlines()) == 1

    save(lake, "v-old", {"churn_definition": training.churn.to_dict()})
    code, _, err = rebuild(lake, "v-old", capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "trained before training sets recorded their table versions" in err

    # vacuum removes the files only old versions reference: the recorded version is gone
    d = training.dates[-1]
    materialize_features(lake, d, engine="polars")
    DeltaTable(tables.table_uri(lake, tables.FEATURES)).vacuum(
        retention_hours=0, enforce_retention_duration=False, dry_run=False
    )
    code, _, err = rebuild(lake, "v-rebuild", capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "removed by vacuum" in err and "CHURN_LAKE_RETENTION_HOURS" in err

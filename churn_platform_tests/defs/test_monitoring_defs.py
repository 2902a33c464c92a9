"""Monitoring wiring, real: feature_drift against the champion, its warning check, the sensor."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest

from churn_platform.defs import tags
from churn_platform.defs.ml.definitions import TRAINING_JOB
from churn_platform.defs.monitoring.assets import DRIFT_CHECK, FEATURE_DRIFT
from churn_platform.defs.monitoring.sensors import DriftCursor, drift_retraining_sensor
from churn_platform.defs.resources.drift import (
    COOLDOWN_ENV,
    THRESHOLD_ENV,
    DriftResource,
)
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.features.materialize import read_feature_spec, read_features, write_features
from churn_platform.ml import registry
from churn_platform.ml.drift import measure_drift
from churn_platform_tests.defs.training_flow import QUIET, definitions_for, materialized
from churn_platform_tests.ml.ml_lake import copy_lake

PNG = "data:image/png;base64,"
TINY, HUGE = 1e-9, 1e6


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def lake(trained, tmp_path):
    """A private copy of the trained ml lake (the champion's training set and model)."""
    return copy_lake(trained[0], tmp_path / "lake")


def measure(lake, ml_lake, instance, threshold: float, as_of=None):
    """Materialize feature_drift (and its check) for one as-of date."""
    as_of = as_of or ml_lake.dates.dates[-1]
    definitions = definitions_for(
        lake, ml_lake.dates.dates[0], drift=DriftResource(psi_threshold=threshold)
    )
    result = definitions.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=[FEATURE_DRIFT],
        partition_key=as_of.isoformat(),
        instance=instance,
        run_config=QUIET,
        raise_on_error=False,
    )
    return result


def tick(instance, lake, threshold: float, cursor=None, cooldown: float = 0.0):
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "drift": DriftResource(psi_threshold=threshold, retrain_cooldown_hours=cooldown),
            "lake": LakeResource(root=lake.uri),
        },
    )
    return drift_retraining_sensor(context), context.cursor


def test_feature_drift_measures_every_champion_feature_with_a_warning_check(
    lake, ml_lake, instance
):
    """PSI against the champion's train dates, as metadata; the check warns, never blocks."""
    as_of = ml_lake.dates.dates[-1]
    champion = registry.read_champion(lake).version
    record = registry.read_record(lake, champion)

    calm = measure(lake, ml_lake, instance, threshold=HUGE)
    assert calm.success
    meta = materialized(calm)["feature_drift"].metadata
    expected = measure_drift(lake, as_of)
    assert expected.max_psi > 0
    assert meta["max_psi"].value == pytest.approx(expected.max_psi, abs=1e-4)
    assert meta["worst_feature"].value == expected.worst_feature
    assert meta["champion_version"].value == champion
    assert record.training["train_dates"] in meta["reference"].value
    train_rows = expected.reference_rows
    assert meta["reference_rows"].value == train_rows < record.training["training_set_rows"]
    assert meta["live_rows"].value == expected.live_rows > 0
    assert PNG in meta["psi_by_feature"].value
    table = meta["psi_table"].value
    assert all(f"| `{feature}` |" in table for feature in record.features)
    bands = [meta[f"features_{b}"].value for b in ("stable", "moderate", "significant")]
    assert sum(bands) == len(record.features)
    (check,) = calm.get_asset_check_evaluations()
    assert check.check_name == DRIFT_CHECK and check.passed
    assert check.partition == as_of.isoformat()

    drifted = measure(lake, ml_lake, instance, threshold=TINY)
    assert drifted.success  # a drift warning never fails the run
    (check,) = drifted.get_asset_check_evaluations()
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["threshold"].value == TINY
    assert expected.worst_feature in check.metadata["features_above_threshold"].value


def test_feature_drift_sees_a_shifted_feature_table(lake, ml_lake, instance):
    """Customers logging in ten times as often is significant drift in the login features."""
    as_of = ml_lake.dates.dates[-1]
    before = measure_drift(lake, as_of).psi
    table = read_features(lake, as_of)
    spec = read_feature_spec(lake, as_of)
    write_features(lake, as_of, table.with_columns(pl.col("login_count_28d") * 10 + 5), spec)
    after = measure(lake, ml_lake, instance, threshold=0.25)
    psi = measure_drift(lake, as_of).psi
    login = psi.filter(pl.col("feature") == "login_count_28d").row(0, named=True)
    was = before.filter(pl.col("feature") == "login_count_28d")["psi"][0]
    assert was < 0.25 < login["psi"] and login["band"] == "significant"
    check = after.get_asset_check_evaluations()[0]
    assert not check.passed
    assert "login_count_28d" in check.metadata["features_above_threshold"].value


def test_drift_sensor_skips_requests_and_moves_its_cursor(lake, ml_lake, instance):
    nothing, cursor = tick(instance, lake, TINY)
    assert isinstance(nothing, dg.SkipReason) and "no new feature_drift" in nothing.skip_message
    assert cursor is None

    assert measure(lake, ml_lake, instance, threshold=TINY).success
    calm, calm_cursor = tick(instance, lake, HUGE)
    assert isinstance(calm, dg.SkipReason) and "within the threshold" in calm.skip_message
    assert DriftCursor.parse(calm_cursor).storage_id > 0
    assert DriftCursor.parse(calm_cursor).as_of == ml_lake.dates.dates[-1].isoformat()

    request, cursor = tick(instance, lake, TINY)  # same materialization, judged afresh
    assert isinstance(request, dg.RunRequest)
    champion = registry.read_champion(lake).version
    assert request.tags[tags.TRIGGER] == "drift_retraining_sensor"
    assert request.tags[tags.DRIFTED_CHAMPION] == champion
    assert float(request.tags[tags.MAX_PSI]) > 0
    assert drift_retraining_sensor.job_name == TRAINING_JOB
    assert json.loads(cursor) == json.loads(calm_cursor)

    again, same = tick(instance, lake, TINY, cursor)
    assert isinstance(again, dg.SkipReason) and "no new feature_drift" in again.skip_message
    assert same == cursor

    # an older as-of date (a backfill) after the latest one never triggers training
    assert measure(lake, ml_lake, instance, TINY, as_of=ml_lake.dates.dates[-2]).success
    backfill, moved = tick(instance, lake, TINY, cursor)
    assert isinstance(backfill, dg.SkipReason) and "backfill" in backfill.skip_message
    assert DriftCursor.parse(moved).storage_id > DriftCursor.parse(cursor).storage_id


def test_drift_sensor_waits_for_training_runs_cooldowns_and_the_current_champion(
    lake, ml_lake, instance
):
    assert measure(lake, ml_lake, instance, threshold=TINY).success
    job = definitions_for(lake, ml_lake.dates.dates[0]).resolve_job_def(TRAINING_JOB)

    running = instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED)
    busy, cursor = tick(instance, lake, TINY)
    assert isinstance(busy, dg.SkipReason) and "in progress" in busy.skip_message
    assert cursor is None  # judged again once the run ends

    instance.report_run_canceled(running)
    cooling, cursor = tick(instance, lake, TINY, cooldown=6)
    assert isinstance(cooling, dg.SkipReason) and "cooldown" in cooling.skip_message
    assert running.run_id[:8] in cooling.skip_message

    assert measure(lake, ml_lake, instance, threshold=TINY).success
    # a newer champion than the one the drift was measured against: stale, no request
    current = registry.read_champion(lake).version
    model = registry.load_champion(lake)
    newer = registry.new_version(token="newer")
    registry.save_model(
        lake,
        newer,
        model.estimator,
        features=model.features,
        metrics=model.record.metrics,
        gate={"passed": True, "reasons": ["test"]},
        training=model.record.training,
        card="# newer\n",
    )
    registry.promote(lake, newer, reason="test: a champion newer than the drift measurement")
    stale, _ = tick(instance, lake, TINY, cursor)
    assert isinstance(stale, dg.SkipReason) and "stale" in stale.skip_message
    assert current in stale.skip_message and newer in stale.skip_message


def test_drift_resource_reads_its_settings_from_the_environment():
    assert DriftResource.from_env({}).psi_threshold == 0.25
    assert DriftResource.from_env({}).retrain_cooldown_hours == 6
    configured = DriftResource.from_env({THRESHOLD_ENV: " 0.1 ", COOLDOWN_ENV: "0"})
    assert (configured.psi_threshold, configured.retrain_cooldown_hours) == (0.1, 0.0)
    for bad in ("high", "0", "-1", "nan"):
        with pytest.raises(ValueError, match=THRESHOLD_ENV):
            DriftResource.from_env({THRESHOLD_ENV: bad})
    with pytest.raises(ValueError, match=COOLDOWN_ENV):
        DriftResource.from_env({COOLDOWN_ENV: "-2"})

"""Feature wiring, real: partitions, materializations, blocking checks, labels."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import dagster as dg
import polars as pl
import pytest

import churn_platform.defs.features.assets as feature_assets
from churn_platform.defs.automation import FOLLOW_LABEL, RUN_TAGS, WITH_ASSET_LABEL
from churn_platform.defs.features.checks import (
    NULLS_CHECK,
    RANGES_CHECK,
    ROW_COUNT_CHECK,
    SCHEMA_CHECK,
)
from churn_platform.defs.features.definitions import (
    FALLBACK_HISTORY_DAYS,
    FEATURES_JOB,
    START_DATE_ENV,
    features_definitions,
    features_start_date,
)
from churn_platform.defs.resources.beam import BeamRunnerResource
from churn_platform.defs.resources.churn import ChurnDefinitionResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.features.churn import ChurnDefinition
from churn_platform.features.materialize import (
    active_customers,
    check_row_count,
    check_schema,
    materialize_features,
    read_feature_spec,
    read_features,
    write_features,
)
from churn_platform.lake import tables
from churn_platform.lake.store import Lake
from churn_platform.ml.labels import read_labels
from churn_platform.testing.lakes import (
    HAND_BUILT_AS_OF,
    append_messages,
    hand_built_lake,
    message,
    simulated_lake,
    started,
)

CHECKS = {SCHEMA_CHECK, NULLS_CHECK, RANGES_CHECK, ROW_COUNT_CHECK}
SIM_AS_OF = "2024-03-10"
SIM_END = datetime(2024, 5, 1, tzinfo=UTC)


def simulated(root, days: int = 100) -> Lake:
    """A lake of 60 simulated customers over `days` days before SIM_END."""
    lake = Lake(root)
    simulated_lake(lake, customers=60, days=days, seed=11, end=SIM_END)
    return lake


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def run_features(
    lake: Lake,
    instance,
    partition: str,
    engine: str = "polars",
    horizon=30,
    churn: ChurnDefinition | None = None,
    tags: dict[str, str] | None = None,
    customers: str = "auto",
):
    """Run the features job (features, its checks, labels) for one partition."""
    churn = churn or ChurnDefinition("cancellation", horizon)
    definitions = dg.Definitions.merge(
        features_definitions(environ={START_DATE_ENV: "2024-01-01"}),
        dg.Definitions(
            resources={
                "lake": LakeResource(root=lake.uri),
                "beam": BeamRunnerResource(),
                "churn": ChurnDefinitionResource.from_definition(churn),
            }
        ),
    )
    return definitions.resolve_job_def(FEATURES_JOB).execute_in_process(
        partition_key=partition,
        instance=instance,
        run_config={
            "ops": {"customer_features": {"config": {"engine": engine, "customers": customers}}}
        },
        raise_on_error=False,
        tags=tags,
    )


def materialized(result) -> dict[str, dg.AssetMaterialization]:
    return {
        e.asset_key.to_user_string(): e.materialization
        for e in result.get_asset_materialization_events()
    }


def checks(result) -> dict[str, bool]:
    return {c.check_name: c.passed for c in result.get_asset_check_evaluations()}


def test_definitions_load_with_feature_assets_checks_job_and_partitions(monkeypatch):
    monkeypatch.setenv(START_DATE_ENV, "2024-02-03")
    monkeypatch.setenv("CHURN_LAKE", "memory://lake")
    from churn_platform.definitions import defs

    definitions = defs()
    graph = definitions.get_repository_def().asset_graph
    features = graph.get(dg.AssetKey("customer_features"))
    labels = graph.get(dg.AssetKey("churn_labels"))
    assert features.group_name == labels.group_name == "features"
    assert dg.AssetKey("raw_customer_events") in features.parent_keys
    assert {"customer_features", "raw_customer_events"} == {
        k.to_user_string() for k in labels.parent_keys
    }
    check_keys = {k.name for k in graph.asset_check_keys if k.asset_key == features.key}
    assert check_keys == CHECKS
    partitions = definitions.resolve_assets_def("customer_features").partitions_def
    today = datetime.now(UTC).date()
    assert partitions.get_first_partition_key() == "2024-02-03"
    # today is the latest as-of date: every event so far, refreshed as events arrive
    assert partitions.get_last_partition_key() == today.isoformat()
    assert features.automation_condition is not None
    assert features.automation_condition.get_label() == FOLLOW_LABEL
    assert labels.automation_condition is None  # labelled by training, never automated
    for key in graph.asset_check_keys:
        if key.asset_key == features.key:  # checks join the automated run of their asset
            assert graph.get(key).automation_condition.get_label() == WITH_ASSET_LABEL, key
    assert definitions.resolve_assets_def("churn_labels").partitions_def == partitions
    assert definitions.resolve_job_def(FEATURES_JOB)
    assert isinstance(definitions.resources["beam"], BeamRunnerResource)


def test_start_date_comes_from_the_lake_else_a_year_back(tmp_path):
    lake = simulated(tmp_path / "lake", days=30)
    today = date(2026, 1, 10)
    assert features_start_date({"CHURN_LAKE": lake.uri}, today) == date(2024, 4, 1)
    assert features_start_date(
        {"CHURN_LAKE": lake.uri, START_DATE_ENV: " 2024-04-20 "}, today
    ) == date(2024, 4, 20)
    fallback = today - timedelta(days=FALLBACK_HISTORY_DAYS)
    assert features_start_date({"CHURN_LAKE": str(tmp_path / "empty")}, today) == fallback
    assert features_start_date({"CHURN_LAKE": "memory://lake"}, today) == fallback
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        features_start_date({START_DATE_ENV: "01/02/2024"}, today)


ENGINES = [
    "polars",
    "beam",
]


@pytest.mark.parametrize("engine", ENGINES)
def test_features_and_labels_materialize_with_metadata_and_passing_checks(
    tmp_path, instance, engine
):
    lake = simulated(tmp_path / "lake")
    result = run_features(lake, instance, SIM_AS_OF, engine=engine)
    assert result.success
    assert checks(result) == dict.fromkeys(CHECKS, True)
    done = materialized(result)
    assert set(done) == {"customer_features", "churn_labels"}
    meta = done["customer_features"].metadata
    table = read_features(lake, date.fromisoformat(SIM_AS_OF))
    assert 0 < meta["rows"].value == table.height <= meta["customers"].value  # seen ≥ active
    assert meta["feature_count"].value == table.width - 2  # without customer_id, as_of
    assert "login" in meta["activity_types"].value
    assert "| feature | null rate |" in meta["null_rates"].value
    assert meta["events_per_second"].value > 0 and meta["seconds"].value > 0
    assert meta["lake"].value == tables.table_uri(lake, tables.FEATURES)
    assert meta["table_version"].value == tables.version(lake, tables.FEATURES)
    assert done["customer_features"].partition == SIM_AS_OF
    assert meta["engine"].value == engine

    labels = read_labels(lake, date.fromisoformat(SIM_AS_OF))
    assert labels["customer_id"].to_list() == table["customer_id"].to_list()
    label_meta = done["churn_labels"].metadata
    assert label_meta["rows"].value == table.height
    assert label_meta["churned"].value == labels["churned"].sum()
    assert label_meta["table_version"].value == tables.version(lake, tables.LABELS)


def corrupting(engine_result_table):
    """A stand-in engine: the real polars engine, then the table is damaged in place."""

    def materialize(lake, as_of, **kwargs):
        result = materialize_features(lake, as_of, engine="polars")
        spec = read_feature_spec(lake, as_of)
        write_features(lake, as_of, engine_result_table(read_features(lake, as_of)), spec)
        return result

    return materialize


def test_a_broken_feature_table_fails_blocking_checks_and_stops_labels(
    tmp_path, instance, monkeypatch
):
    lake = simulated(tmp_path / "lake")

    def damage(table: pl.DataFrame) -> pl.DataFrame:
        first = pl.int_range(pl.len()) == 0
        return table.with_columns(
            pl.when(first).then(-1).otherwise(pl.col("login_count_7d")).alias("login_count_7d"),
            pl.when(first).then(None).otherwise(pl.col("plan")).alias("plan"),
        )

    monkeypatch.setattr(feature_assets, "materialize_features", corrupting(damage))
    result = run_features(lake, instance, SIM_AS_OF)

    assert not result.success
    assert checks(result) == {
        SCHEMA_CHECK: True,
        NULLS_CHECK: False,
        RANGES_CHECK: False,
        ROW_COUNT_CHECK: True,
    }
    evaluations = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert "plan" in evaluations[NULLS_CHECK].metadata["columns_with_forbidden_nulls"].value
    assert "login_count_7d >= 0" in evaluations[RANGES_CHECK].metadata["violations"].value
    assert set(materialized(result)) == {"customer_features"}  # churn_labels never ran
    assert not tables.data_files(lake, tables.LABELS, {"as_of": SIM_AS_OF})


def test_row_count_and_schema_checks_catch_a_dropped_customer_and_column(tmp_path):
    lake = hand_built_lake(Lake(tmp_path))
    materialize_features(lake, HAND_BUILT_AS_OF, engine="polars")
    table, spec = read_features(lake, HAND_BUILT_AS_OF), read_feature_spec(lake, HAND_BUILT_AS_OF)
    active = active_customers(lake, HAND_BUILT_AS_OF)
    assert active.to_list() == ["c_activity", "c_churn", "c_late", "c_quiet", "c_stay"]
    assert check_row_count(table, active).passed

    passed, details = check_row_count(table.filter(pl.col("customer_id") != "c_quiet"), active)
    assert not passed and details["missing_examples"] == ["c_quiet"]
    passed, details = check_row_count(pl.concat([table, table.head(1)]), active)
    assert not passed and details["duplicate_customer_ids"] == 1

    assert check_schema(table, spec).passed
    passed, details = check_schema(table.drop("mrr"), spec)
    assert not passed and details["missing"] == ["mrr"]
    passed, details = check_schema(table.with_columns(pl.col("tenure_days").cast(pl.Float64)), spec)
    assert not passed and "tenure_days" in details["wrong_type"]


def test_labels_on_the_hand_built_case_and_a_horizon_not_yet_passed(tmp_path, instance):
    lake = hand_built_lake(Lake(tmp_path))
    result = run_features(lake, instance, HAND_BUILT_AS_OF.isoformat())
    assert result.success and checks(result) == dict.fromkeys(CHECKS, True)
    labels = read_labels(lake, HAND_BUILT_AS_OF)
    assert dict(zip(labels["customer_id"], labels["churned"], strict=True)) == {
        "c_activity": False,
        "c_churn": True,  # cancelled at d+1
        "c_late": False,  # cancelled at d+31
        "c_quiet": False,
        "c_stay": False,
    }  # c_gone cancelled on d: not active at d, so no label at all

    late = "2024-03-15"  # its horizon ends 2024-04-14; the lake is complete through 04-09
    refused = run_features(lake, instance, late)
    assert refused.success  # not a failure: the partition just stays unmaterialized
    assert set(materialized(refused)) == {"customer_features"}
    (observation,) = [
        e.event_specific_data.asset_observation
        for e in refused.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert observation.partition == late
    assert observation.metadata["labelable_from"].value == "2024-04-15"
    assert "labelable once the lake holds events dated 2024-04-15" in (
        observation.metadata["reason"].value
    )

    day = datetime(2024, 4, 15, 8, tzinfo=UTC)
    append_messages(lake, [message(started("c_new", day))], now=day)
    assert "churn_labels" in materialized(run_features(lake, instance, late))


def test_the_beam_engine_writes_the_same_table_as_polars(tmp_path, instance):
    from churn_platform.features import pipeline

    lake = simulated(tmp_path / "lake")
    result = run_features(lake, instance, SIM_AS_OF, engine="beam")
    assert result.success and checks(result) == dict.fromkeys(CHECKS, True)
    as_of = date.fromisoformat(SIM_AS_OF)
    beam_table = read_features(lake, as_of)
    meta = materialized(result)["customer_features"].metadata
    assert meta["engine"].value == "beam" and meta["files"].value == pipeline.DEFAULT_SHARDS
    assert "churn_labels" in materialized(result)

    # one table, so either engine's commit replaces the other's partition
    polars = materialize_features(lake, as_of, engine="polars")
    committed = tables.data_files(lake, tables.FEATURES, {"as_of": as_of})
    assert [tables.file_path(tables.FEATURES, f) for f in committed] == polars.output_files
    assert beam_table.equals(read_features(lake, as_of))
    assert beam_table.equals(read_features(lake, as_of, version=meta["table_version"].value))
    assert polars.customers == meta["customers"].value


def test_automated_runs_recompute_only_the_touched_customers(tmp_path, instance):
    lake = simulated(tmp_path / "lake")
    as_of = date.fromisoformat(SIM_AS_OF)
    assert run_features(lake, instance, SIM_AS_OF, engine="beam").success
    customer = read_features(lake, as_of)["customer_id"][0]
    at = datetime.combine(as_of, datetime.min.time(), UTC) + timedelta(hours=23)
    row = {**started(customer, at), "event_type": "login", "event_id": "late-login"}
    append_messages(lake, [message(row)], now=SIM_END)
    automated = RUN_TAGS  # the automation sensor's runs follow new events

    result = run_features(lake, instance, SIM_AS_OF, engine="beam", tags=automated)

    assert result.success and checks(result) == dict.fromkeys(CHECKS, True)
    meta = materialized(result)["customer_features"].metadata
    assert meta["engine"].value == "refresh" and meta["customers_recomputed"].value == 1
    refreshed = read_features(lake, as_of)
    everyone = run_features(lake, instance, SIM_AS_OF, tags=automated, customers="all")
    meta = materialized(everyone)["customer_features"].metadata
    assert (
        meta["engine"].value == "polars"
        and meta["customers_recomputed"].value == meta["rows"].value
    )
    assert refreshed.equals(read_features(lake, as_of))


def test_beam_resource_builds_runner_settings():
    settings = BeamRunnerResource(direct_num_workers=2, extra_args=["--flag=1"]).settings()
    assert (settings.runner, settings.direct_num_workers) == ("DirectRunner", 2)
    assert settings.direct_running_mode == "in_memory"
    assert list(settings.extra_args) == ["--flag=1"]

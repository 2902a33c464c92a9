"""Automation, real: the code location's sensors and schedule, one run per tick, and the
issue's end to end: new events in the topic reach today's scores with no human.
"""

from __future__ import annotations

import uuid
import warnings
from datetime import UTC, datetime, timedelta

import dagster as dg
import polars as pl
import pytest
from threadpoolctl import threadpool_limits

import churn_platform.defs.features.assets as feature_assets
from churn_platform.definitions import resources_from_env
from churn_platform.defs import tags
from churn_platform.defs.automation import (
    AFTER_CHECKS_LABEL,
    AUTOMATION_SENSOR,
    FOLLOW_LABEL,
    RUN_TAGS,
)
from churn_platform.defs.features.checks import (
    NULLS_CHECK,
    RANGES_CHECK,
    ROW_COUNT_CHECK,
    SCHEMA_CHECK,
)
from churn_platform.defs.features.definitions import (
    START_DATE_ENV,
    features_definitions,
    features_partitions,
)
from churn_platform.defs.ingestion.definitions import ingestion_definitions
from churn_platform.defs.ingestion.sensors import (
    FOLLOW_JOB,
    SENSOR,
    customer_events_sensor,
    extract_in_progress,
    follow_partition,
)
from churn_platform.defs.ml.definitions import TRAINING_JOB, ml_definitions
from churn_platform.defs.ml.schedules import (
    DEFAULT_TRAINING_CRON,
    TRAINING_CRON_ENV,
    TRAINING_SCHEDULE,
    build_training_schedule,
)
from churn_platform.defs.monitoring.assets import DRIFT_CHECK
from churn_platform.defs.monitoring.definitions import monitoring_definitions
from churn_platform.defs.resources.drift import COOLDOWN_ENV, THRESHOLD_ENV
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.defs.runs import EVERY_DAEMON_LOOP_S
from churn_platform.events.simulator import SimulatorConfig, produce_simulation
from churn_platform.features.materialize import (
    read_feature_spec,
    read_features,
    write_features,
)
from churn_platform.kafka.admin import ensure_topic
from churn_platform.kafka.producer import EventProducer
from churn_platform.lake.store import Lake
from churn_platform.ml import registry
from churn_platform.ml.score import read_scores
from churn_platform.testing.lakes import event, hand_built_lake, message
from churn_platform_tests.defs.training_flow import QUIET, failure_text, materialized

FEATURES = dg.AssetKey("customer_features")
DRIFT = dg.AssetKey("feature_drift")
AUTOMATED = {"customer_features", "churn_scores", "feature_drift"}
FEATURE_CHECKS = {SCHEMA_CHECK, NULLS_CHECK, RANGES_CHECK, ROW_COUNT_CHECK}


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def load_code_location(monkeypatch, **env: str) -> dg.Definitions:
    for name in (TRAINING_CRON_ENV, THRESHOLD_ENV, COOLDOWN_ENV, START_DATE_ENV):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    from churn_platform.definitions import defs

    return defs()


def test_the_code_location_runs_automation_drift_and_training_on_its_own(monkeypatch, tmp_path):
    definitions = load_code_location(
        monkeypatch, CHURN_LAKE=str(tmp_path / "lake"), **{START_DATE_ENV: "2026-01-01"}
    )
    automation = definitions.resolve_sensor_def(AUTOMATION_SENSOR)
    assert isinstance(automation, dg.AutomationConditionSensorDefinition)
    assert automation.minimum_interval_seconds == EVERY_DAEMON_LOOP_S  # every daemon loop
    for name in (AUTOMATION_SENSOR, "drift_retraining_sensor", "customer_events_sensor"):
        status = definitions.resolve_sensor_def(name).default_status
        assert status == dg.DefaultSensorStatus.RUNNING, name
    schedule = definitions.resolve_schedule_def(TRAINING_SCHEDULE)
    assert schedule.cron_schedule == DEFAULT_TRAINING_CRON == "0 3 * * *"
    assert schedule.execution_timezone == "UTC" and schedule.job_name == TRAINING_JOB
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING

    graph = definitions.get_repository_def().asset_graph
    drift = graph.get(DRIFT)
    assert drift.group_name == "monitoring"
    assert {k.to_user_string() for k in drift.parent_keys} == {
        "customer_features",
        "churn_champion",
    }
    (check_key,) = [k for k in graph.asset_check_keys if k.asset_key == DRIFT]
    assert check_key.name == DRIFT_CHECK and not graph.get(check_key).blocking
    assert definitions.resolve_assets_def(DRIFT).partitions_def == (
        definitions.resolve_assets_def(FEATURES).partitions_def
    )
    labels = {
        key.to_user_string(): graph.get(key).automation_condition
        for key in graph.get_all_asset_keys()
    }
    automated = {k for k, condition in labels.items() if condition is not None}
    assert automated == AUTOMATED  # labels, training and the extract are started otherwise
    assert labels["customer_features"].get_label() == FOLLOW_LABEL
    assert labels["churn_scores"].get_label() == labels["feature_drift"].get_label()
    assert labels["churn_scores"].get_label() == AFTER_CHECKS_LABEL
    assert definitions.resources["drift"].psi_threshold == 0.25

    configured = load_code_location(
        monkeypatch,
        CHURN_LAKE=str(tmp_path / "lake"),
        **{TRAINING_CRON_ENV: "30 */6 * * *", THRESHOLD_ENV: "0.1", START_DATE_ENV: "2026-01-01"},
    )
    assert configured.resolve_schedule_def(TRAINING_SCHEDULE).cron_schedule == "30 */6 * * *"
    assert configured.resources["drift"].psi_threshold == 0.1
    with pytest.raises(ValueError, match=TRAINING_CRON_ENV):
        load_code_location(monkeypatch, **{TRAINING_CRON_ENV: "every day at three"})


def test_training_schedule_requests_training_unless_a_run_is_in_progress(monkeypatch, instance):
    definitions = load_code_location(
        monkeypatch, CHURN_LAKE="memory://lake", **{START_DATE_ENV: "2026-01-01"}
    )
    schedule = definitions.resolve_schedule_def(TRAINING_SCHEDULE)
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2026, 11, 27, 3, tzinfo=UTC)
    )
    request = schedule.evaluate_tick(context).run_requests[0]
    assert request.tags[tags.TRIGGER] == TRAINING_SCHEDULE
    assert schedule.job_name == TRAINING_JOB

    job = definitions.resolve_job_def(TRAINING_JOB)
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED)
    skipped = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
    assert not skipped.run_requests and "already queued or running" in skipped.skip_message
    hourly = build_training_schedule(TRAINING_JOB, {TRAINING_CRON_ENV: "0 * * * *"})
    assert hourly.cron_schedule == "0 * * * *"


class UserCodeAutomation:
    """The code location with the automation sensor evaluated in user code, so a test can
    tick it and see the RunRequests the daemon would launch (same evaluation, same grouping
    into runs; the daemon only runs it in another process)."""

    def __init__(self, instance, lake_root: str = "memory://lake") -> None:
        partitions = features_partitions({START_DATE_ENV: "2024-01-01"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # use_user_code_server is a beta parameter
            sensor = dg.AutomationConditionSensorDefinition(
                "automation_in_user_code", target=dg.AssetSelection.all(), use_user_code_server=True
            )
        resources = resources_from_env({})
        resources["lake"] = LakeResource(root=lake_root)
        self.definitions = dg.Definitions.merge(
            ingestion_definitions(),
            features_definitions(partitions=partitions),
            ml_definitions(partitions=partitions),
            monitoring_definitions(partitions=partitions),
            dg.Definitions(sensors=[sensor], resources=resources),
        )
        self.sensor = self.definitions.resolve_sensor_def(sensor.name)
        self.repository = self.definitions.get_repository_def()
        self.instance = instance
        self.cursor = None

    def tick(self) -> list[dg.RunRequest]:
        context = dg.build_sensor_context(
            instance=self.instance, repository_def=self.repository, cursor=self.cursor
        )
        result = self.sensor(context)
        self.cursor = result.cursor
        return result.run_requests

    def execute(self, request: dg.RunRequest, run_config: dict) -> dg.ExecuteInProcessResult:
        job = self.definitions.resolve_implicit_global_asset_job_def()
        return job.execute_in_process(
            asset_selection=list(request.asset_selection),
            partition_key=request.partition_key,
            instance=self.instance,
            run_config={**QUIET, **run_config},
            raise_on_error=False,
        )


def selected(requests: list[dg.RunRequest]) -> set[str]:
    return {k.to_user_string() for r in requests for k in r.asset_selection}


def test_one_tick_requests_todays_features_checks_scores_and_drift_in_one_run(instance):
    automation = UserCodeAutomation(instance)
    assert not automation.tick()  # nothing extracted, no champion: nothing to do
    instance.report_runless_asset_event(dg.AssetMaterialization("raw_customer_events"))
    instance.report_runless_asset_event(dg.AssetMaterialization("churn_champion"))

    (request,) = automation.tick()  # one run, not one per asset
    assert request.partition_key == datetime.now(UTC).date().isoformat()
    assert selected([request]) == AUTOMATED
    checks = {(k.asset_key.to_user_string(), k.name) for k in request.asset_check_keys}
    assert checks == {("customer_features", c) for c in FEATURE_CHECKS} | {
        ("feature_drift", DRIFT_CHECK)
    }
    assert not automation.tick()


def test_todays_features_do_not_wait_for_an_extract_in_progress(instance):
    """With live traffic an extract is queued or running most of the time; eager() waited
    for a tick between two extracts (event → score up to 140 s with the daemon)."""
    automation = UserCodeAutomation(instance)
    assert not automation.tick()
    instance.report_runless_asset_event(dg.AssetMaterialization("raw_customer_events"))
    instance.report_runless_asset_event(dg.AssetMaterialization("churn_champion"))
    extract_job = automation.definitions.resolve_job_def("raw_customer_events_job")
    run = instance.create_run_for_job(extract_job, status=dg.DagsterRunStatus.STARTED)
    running = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]))
    assert [r.dagster_run.run_id for r in running] == [run.run_id]

    (request,) = automation.tick()
    assert selected([request]) == AUTOMATED


@pytest.mark.parametrize("damaged", [False, True])
def test_scores_and_drift_wait_for_the_blocking_checks_of_features_from_an_earlier_run(
    instance, tmp_path, monkeypatch, damaged
):
    """Today's features ran alone (no champion yet); the champion arrives later. Scores and
    drift follow only if that run's blocking feature checks passed."""
    lake = hand_built_lake(Lake(tmp_path / "lake"))
    if damaged:  # the real engine, then a null where none is allowed
        real = feature_assets.materialize_features

        def materialize(store, as_of, **kwargs):
            result = real(store, as_of, engine="polars")
            table = read_features(store, as_of).with_columns(pl.lit(None, pl.String).alias("plan"))
            write_features(store, as_of, table, read_feature_spec(store, as_of))
            return result

        monkeypatch.setattr(feature_assets, "materialize_features", materialize)
    automation = UserCodeAutomation(instance, lake.uri)
    assert not automation.tick()
    instance.report_runless_asset_event(dg.AssetMaterialization("raw_customer_events"))
    (features_only,) = automation.tick()
    assert selected([features_only]) == {"customer_features"}  # nothing to score with yet
    polars = {"ops": {"customer_features": {"config": {"engine": "polars"}}}}
    ran = automation.execute(features_only, polars)
    checks = {c.check_name: c.passed for c in ran.get_asset_check_evaluations()}
    assert checks == {c: not (damaged and c == NULLS_CHECK) for c in FEATURE_CHECKS}

    instance.report_runless_asset_event(dg.AssetMaterialization("churn_champion"))
    after_champion = automation.tick()
    assert selected(after_champion) == (set() if damaged else {"churn_scores", "feature_drift"})


def test_features_that_land_while_an_older_run_still_scores_are_scored_too(instance, tmp_path):
    """A second extract's features land while the previous run is still scoring; that run's
    scores finish later. Dagster's eager() counts them as handling the newer features,
    which were then never scored (seen with the daemon); follow_updates() scores them."""
    lake = hand_built_lake(Lake(tmp_path / "lake"))
    automation = UserCodeAutomation(instance, lake.uri)
    today = datetime.now(UTC).date().isoformat()
    assert not automation.tick()
    instance.report_runless_asset_event(dg.AssetMaterialization("raw_customer_events"))
    instance.report_runless_asset_event(dg.AssetMaterialization("churn_champion"))
    (first,) = automation.tick()  # the older run: features, scores, drift
    assert selected([first]) == AUTOMATED
    assert not automation.tick()  # ticks go by while it runs

    # newer features (and their passing checks) from a run without the scores ...
    features_only = dg.RunRequest(asset_selection=[FEATURES], partition_key=today)
    polars = {"ops": {"customer_features": {"config": {"engine": "polars"}}}}
    assert automation.execute(features_only, polars).success
    # ... and then the older run's scores and drift finish
    for key in ("churn_scores", "feature_drift"):
        instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=today))

    assert selected(automation.tick()) == {"churn_scores", "feature_drift"}
    assert not automation.tick()  # handled by that request: no loop


# --- the end to end --------------------------------------------------------------

SIM_CUSTOMERS = 1500
SIM_DAYS = 140
NEW_LOGINS = 3


def run_requested(definitions, instance, requested: dict, run_config: dict):
    """Execute what one automation tick requested, in one run, as the daemon would launch it."""
    partitions = set().union(*requested.values())
    assert len(partitions) == 1, requested
    return definitions.resolve_implicit_global_asset_job_def().execute_in_process(
        asset_selection=list(requested),
        partition_key=partitions.pop(),
        instance=instance,
        tags=RUN_TAGS,
        run_config=run_config,
        raise_on_error=False,
    )


def automation_tick(definitions, instance, cursor=None):
    result = dg.evaluate_automation_conditions(defs=definitions, instance=instance, cursor=cursor)
    requested = {
        key: result.get_requested_partitions(key)
        for key in definitions.get_repository_def().asset_graph.get_all_asset_keys()
        if result.get_requested_partitions(key)
    }
    return requested, result.cursor


def extract_tick(definitions, instance, kafka: KafkaResource, cursor=None):
    """customer_events_sensor once; the run it requests, executed like the daemon would."""
    resources = {"kafka": kafka, "lake": definitions.resources["lake"]}
    context = dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources)
    request = customer_events_sensor(context)
    assert isinstance(request, dg.RunRequest), request
    result = definitions.resolve_job_def(customer_events_sensor.job_name).execute_in_process(
        instance=instance, tags=request.tags, run_config=QUIET
    )
    assert result.success
    return context.cursor


# evaluate_automation_conditions itself passes a beta parameter to AssetSelection.all
@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")
def test_new_events_reach_todays_scores_without_a_human(
    monkeypatch, tmp_path, instance, kafka_settings, topic
):
    """Topic → sensor → extract → automation → today's features, checks, scores and drift."""
    now = datetime.now(UTC)
    today = now.date()
    lake = Lake(str(tmp_path / "lake"))
    scores_topic = f"scores-{uuid.uuid4().hex[:12]}"
    ensure_topic(kafka_settings, scores_topic, partitions=1)
    history = SimulatorConfig(customers=SIM_CUSTOMERS, days=SIM_DAYS, seed=23, end=now)
    produce_simulation(kafka_settings, topic, history, partitions=3)
    definitions = load_code_location(
        monkeypatch,
        CHURN_LAKE=lake.uri,
        KAFKA_BOOTSTRAP_SERVERS=kafka_settings.bootstrap_servers,
        CHURN_EVENTS_TOPIC=topic,
        **{START_DATE_ENV: (today - timedelta(days=SIM_DAYS + 1)).isoformat()},
    )
    kafka = KafkaResource(bootstrap_servers=kafka_settings.bootstrap_servers, events_topic=topic)
    # the automated runs as the daemon launches them, except that scores go to this test's
    # own topic, not to the session broker's churn-scores that other tests may read
    scores_config = {**QUIET, "ops": {"churn_scores": {"config": {"topic": scores_topic}}}}

    # the daemon's first tick: no extract, no champion, nothing to do
    requested, cursor = automation_tick(definitions, instance)
    assert requested == {}

    # the history lands and a champion is trained (what the schedule would do)
    events_cursor = extract_tick(definitions, instance, kafka)
    with threadpool_limits(1):
        trained = definitions.resolve_job_def(TRAINING_JOB).execute_in_process(
            instance=instance,
            run_config={
                **QUIET,
                "ops": {
                    "training_set": {"config": {"engine": "polars"}},
                    # the test is about automation, not model quality on 1,500 customers
                    # (simulated up to now, so the data differ with the time of day and
                    # the boosting did not always beat the baseline)
                    "churn_model": {"config": {"min_roc_auc": 0.6, "must_beat_baseline": False}},
                },
            },
            raise_on_error=False,
        )
    assert trained.success, failure_text(trained)
    champion = registry.read_champion(lake).version

    # the next tick: the extract and the new champion bring today's partitions
    requested, cursor = automation_tick(definitions, instance, cursor)
    assert {k.to_user_string() for k in requested} == AUTOMATED
    assert all(p == {today.isoformat()} for p in requested.values())
    assert run_requested(definitions, instance, requested, scores_config).success
    before = read_features(lake, today)
    quiet, cursor = automation_tick(definitions, instance, cursor)
    assert quiet == {}  # nothing new: nothing requested

    # new events for a few customers, now
    started = datetime.now(UTC)
    chosen = before.sort(["login_count_7d", "customer_id"]).head(5)["customer_id"].to_list()
    with EventProducer(kafka_settings) as producer:
        for customer in chosen:
            for i in range(NEW_LOGINS):
                value = message(event(f"{customer}-live-{i}", customer, "login", started))
                producer.send(topic, value, customer)
    events_cursor = extract_tick(definitions, instance, kafka, events_cursor)

    requested, cursor = automation_tick(definitions, instance, cursor)
    assert {k.to_user_string() for k in requested} == AUTOMATED
    assert all(p == {today.isoformat()} for p in requested.values())
    timer = datetime.now(UTC)
    result = run_requested(definitions, instance, requested, scores_config)
    seconds = (datetime.now(UTC) - timer).total_seconds()
    assert result.success, failure_text(result)
    print(f"automated features + checks + scores + drift run: {seconds:.1f} s")
    done = materialized(result)
    assert set(done) == AUTOMATED
    assert all(m.partition == today.isoformat() for m in done.values())
    # the automation follows new events: only the customers they touch are recomputed
    assert done["customer_features"].metadata["engine"].value == "refresh"
    assert done["customer_features"].metadata["customers_recomputed"].value == len(chosen)
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {**dict.fromkeys(FEATURE_CHECKS, True), DRIFT_CHECK: checks[DRIFT_CHECK]}

    after = read_features(lake, today)
    logins = dict(zip(before["customer_id"], before["login_count_7d"], strict=True))
    rows = after.filter(pl.col("customer_id").is_in(chosen))
    assert rows.height == len(chosen)
    for row in rows.iter_rows(named=True):
        assert row["login_count_7d"] == logins[row["customer_id"]] + NEW_LOGINS, row
    scores = read_scores(lake, today)
    assert set(chosen) <= set(scores["customer_id"].to_list())
    assert scores.height == after.height
    stamps = scores["scored_at"].unique().to_list()
    assert len(stamps) == 1 and stamps[0] > started  # rescored after the new events
    assert scores["model_version"].unique().to_list() == [champion]
    assert done["churn_scores"].metadata["produced_to_kafka"].value == scores.height
    assert done["feature_drift"].metadata["champion_version"].value == champion

    nothing, cursor = automation_tick(definitions, instance, cursor)
    assert nothing == {}

    # today is scored: the code location's sensor now chains today's followers with the
    # extract, one run, and the automation has nothing left to request after it
    others = before.sort(["login_count_7d", "customer_id"]).slice(5, 2)["customer_id"].to_list()
    with EventProducer(kafka_settings) as producer:
        for customer in others:
            value = message(event(f"{customer}-chained", customer, "login", datetime.now(UTC)))
            producer.send(topic, value, customer)
    sensor = definitions.resolve_sensor_def(SENSOR)
    context = dg.build_sensor_context(
        instance=instance,
        cursor=events_cursor,
        resources={"kafka": kafka, "lake": definitions.resources["lake"]},
        repository_def=definitions.get_repository_def(),
    )
    request = sensor(context)
    assert isinstance(request, dg.RunRequest), request
    assert (request.job_name, request.partition_key) == (FOLLOW_JOB, today.isoformat())
    chained = definitions.resolve_job_def(FOLLOW_JOB).execute_in_process(
        instance=instance,
        partition_key=request.partition_key,
        asset_selection=request.asset_selection,
        tags=request.tags,
        run_config=scores_config,
        raise_on_error=False,
    )
    assert chained.success, failure_text(chained)
    done = materialized(chained)
    assert set(done) == {*AUTOMATED, "raw_customer_events"}
    assert done["customer_features"].metadata["customers_recomputed"].value == len(others)
    rows = read_features(lake, today).filter(pl.col("customer_id").is_in(others))
    assert rows.height == len(others)
    assert read_scores(lake, today)["scored_at"].unique().to_list()[0] > stamps[0]
    nothing, _ = automation_tick(definitions, instance, cursor)
    assert nothing == {}


def test_the_extract_chains_todays_followers_only_once_today_is_scored_and_none_runs(
    monkeypatch, instance
):
    definitions = load_code_location(
        monkeypatch, CHURN_LAKE="memory://lake", **{START_DATE_ENV: "2026-01-01"}
    )
    partitions = features_partitions({START_DATE_ENV: "2026-01-01"})
    today = partitions.get_last_partition_key()
    assert follow_partition(instance, partitions) is None  # today not scored yet

    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="churn_scores", partition=today)
    )
    assert follow_partition(instance, partitions) == today

    job = definitions.resolve_implicit_global_asset_job_def()
    run = instance.create_run_for_job(
        job, status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": today}
    )
    assert follow_partition(instance, partitions) is None  # a run of today in progress
    instance.report_run_failed(run)
    assert follow_partition(instance, partitions) == today
    # the chained job is an extract (its tag, which dagster.yaml limits to one run at a
    # time, is on every run of it): the sensor never requests a second one beside it
    follow_job = definitions.resolve_job_def(FOLLOW_JOB)
    assert follow_job.tags[tags.EXTRACT_CONCURRENCY] == "true"
    assert not extract_in_progress(instance)
    instance.create_run_for_job(
        follow_job, status=dg.DagsterRunStatus.STARTED, tags=follow_job.tags
    )
    assert extract_in_progress(instance)

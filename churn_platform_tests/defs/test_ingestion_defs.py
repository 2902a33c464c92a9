"""Dagster wiring, real: definitions load, the asset materializes, the sensor ticks."""

from __future__ import annotations

import json
import time

import dagster as dg
import pytest

from churn_platform.defs.ingestion.assets import REJECTED_RATE_CHECK, raw_customer_events
from churn_platform.defs.ingestion.sensors import customer_events_sensor
from churn_platform.defs.resources.kafka import KafkaResource
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.defs.tags import LAG, LAG_TOTAL, TRIGGER_REASON
from churn_platform.kafka.admin import high_watermarks
from churn_platform.lake.raw import read_raw_events
from churn_platform.lake.store import Lake
from churn_platform.testing.topics import produce_round


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def resources(settings, topic, lake_root):
    return {
        "kafka": KafkaResource(bootstrap_servers=settings.bootstrap_servers, events_topic=topic),
        "lake": LakeResource(root=str(lake_root)),
    }


def test_definitions_load_with_every_asset_sensor_and_job(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker.example:9092")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret-never-shown")
    monkeypatch.setenv("CHURN_LAKE", "memory://lake")
    from churn_platform.definitions import defs

    definitions = defs()
    repo = definitions.get_repository_def()
    assert dg.AssetKey("raw_customer_events") in {a for a in repo.asset_graph.get_all_asset_keys()}
    assert definitions.resolve_sensor_def("customer_events_sensor")
    assert definitions.resolve_job_def("raw_customer_events_job")
    kafka = definitions.resources["kafka"]
    assert isinstance(kafka.sasl_password, dg.EnvVar)  # resolved at run time, not stored
    assert "s3cret" not in repr(kafka)
    # every job, the automation's implicit asset job included, runs its steps in the
    # run's process: a process per step cost 40-65 s per automated run
    jobs = [*repo.get_all_jobs(), definitions.resolve_implicit_global_asset_job_def()]
    assert {job.executor_def.name for job in jobs} == {"in_process"}


def run_log(instance, run_id: str) -> list[str]:
    """The run's log lines (context.log), as the UI lists them."""
    return [entry.user_message for entry in instance.all_logs(run_id)]


def test_asset_materializes_with_metadata_and_check(kafka_settings, topic, tmp_path, instance):
    valid, bad = produce_round(kafka_settings, topic, seed=300, bad_fraction=0.005)
    result = dg.materialize(
        [raw_customer_events],
        instance=instance,
        resources=resources(kafka_settings, topic, tmp_path),
    )
    assert result.success
    metadata = result.asset_materializations_for_node("raw_customer_events")[0].metadata
    assert metadata["rows"].value == len(valid)
    assert metadata["rejected"].value == sum(bad.values())
    assert "| partition | start | end | messages | high watermark | lag |" in (
        metadata["offsets"].value
    )
    assert "embedded broker" in metadata["offsets"].value  # why the lag may under-count
    # everything was read: nothing beyond the ledger
    assert metadata["lag"].value == 0
    assert metadata["lag_by_partition"].value == {"0": 0, "1": 0, "2": 0}
    summary = [line for line in run_log(instance, result.run_id) if line.startswith("extracted")]
    assert len(summary) == 1 and "lag after the run p0=0, p1=0, p2=0" in summary[0], summary
    check = result.get_asset_check_evaluations()[0]
    assert check.check_name == REJECTED_RATE_CHECK
    assert check.passed
    assert sorted(read_raw_events(Lake(tmp_path), [topic])["event_id"].to_list()) == sorted(valid)


def test_too_many_rejects_fail_the_blocking_check(kafka_settings, topic, tmp_path, instance):
    produce_round(kafka_settings, topic, seed=301, bad_fraction=0.2)
    result = dg.materialize(
        [raw_customer_events],
        instance=instance,
        resources=resources(kafka_settings, topic, tmp_path),
        raise_on_error=False,
    )
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed
    assert evaluation.metadata["rejected_rate"].value > 0.01


def test_the_extract_logs_its_progress_in_the_run(kafka_settings, topic, tmp_path, instance):
    for seed in (302, 303):
        produce_round(kafka_settings, topic, seed=seed, bad_fraction=0.0)
    result = dg.materialize(
        [raw_customer_events],
        instance=instance,
        resources=resources(kafka_settings, topic, tmp_path),
        # a line per chunk here; every 5 s by default
        run_config={"ops": {"raw_customer_events": {"config": {"progress_seconds": 0}}}},
    )
    assert result.success
    messages = (
        result.asset_materializations_for_node("raw_customer_events")[0].metadata["messages"].value
    )
    progress = [line for line in run_log(instance, result.run_id) if line.startswith("extract ")]
    assert progress, run_log(instance, result.run_id)
    assert f"extract {topic}: {messages:,} messages" in progress[-1]
    assert "rows/s" in progress[-1] and "p0 " in progress[-1]


def tick(instance, settings_or_address, topic, lake_root, cursor=None):
    address = (
        settings_or_address
        if isinstance(settings_or_address, str)
        else settings_or_address.bootstrap_servers
    )
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "kafka": KafkaResource(bootstrap_servers=address, events_topic=topic),
            "lake": LakeResource(root=str(lake_root)),
        },
    )
    return customer_events_sensor(context), context.cursor


def extract(instance, settings, topic, lake_root, tags=None):
    """The extract the sensor requested, run as the daemon would."""
    result = dg.materialize(
        [raw_customer_events],
        instance=instance,
        resources=resources(settings, topic, lake_root),
        tags=tags or {},
    )
    assert result.success
    return result


def test_sensor_first_tick_nothing_new_new_data_and_broker_down(
    kafka_settings, topic, instance, tmp_path, monkeypatch
):
    lake = tmp_path / "lake"
    produce_round(kafka_settings, topic, seed=310, bad_fraction=0.0)
    first, cursor = tick(instance, kafka_settings, topic, lake)
    assert isinstance(first, dg.RunRequest)
    assert first.tags[TRIGGER_REASON] == "new-data"
    assert cursor and all(v >= 0 for v in json.loads(cursor).values())

    extract(instance, kafka_settings, topic, lake, first.tags)
    again, same_cursor = tick(instance, kafka_settings, topic, lake, cursor)
    assert isinstance(again, dg.SkipReason)
    assert "no new data" in again.skip_message
    assert same_cursor == cursor

    produce_round(kafka_settings, topic, seed=311, bad_fraction=0.0)
    produce_round(kafka_settings, topic, seed=312, bad_fraction=0.0)  # move the lagging watermark
    moved, new_cursor = tick(instance, kafka_settings, topic, lake, cursor)
    assert isinstance(moved, dg.RunRequest)
    assert new_cursor != cursor

    from churn_platform.kafka.broker import free_port

    address = f"127.0.0.1:{free_port()}"
    # nothing listens there: the watermark request gives up after 2 s, not its default 5 s
    monkeypatch.setattr(high_watermarks, "__defaults__", (2.0,))
    down, down_cursor = tick(instance, address, topic, lake, new_cursor)
    assert isinstance(down, dg.SkipReason)
    assert address in down.skip_message and "unreachable" in down.skip_message
    assert down_cursor == new_cursor


def test_sensor_says_how_far_the_extract_is_behind(kafka_settings, topic, tmp_path, instance):
    from churn_platform.ingestion.extract import format_lag
    from churn_platform.kafka.admin import high_watermarks

    lake = tmp_path / "lake"
    # several flushed rounds: the embedded broker's watermark is the last batch's base offset
    for seed in (330, 331, 332):
        produce_round(kafka_settings, topic, seed=seed, bad_fraction=0.0)
    request, cursor = tick(instance, kafka_settings, topic, lake)
    assert isinstance(request, dg.RunRequest)
    marks = high_watermarks(kafka_settings, topic)
    # nothing extracted yet: everything the broker reports is behind
    assert request.tags[LAG] == format_lag(marks)
    assert int(request.tags[LAG_TOTAL]) == sum(marks.values()) > 0

    # the extract's ledger holds all of it: caught up
    extract(instance, kafka_settings, topic, lake, request.tags)
    skipped, _ = tick(instance, kafka_settings, topic, lake, cursor)
    assert isinstance(skipped, dg.SkipReason)
    assert "no new data" in skipped.skip_message
    assert skipped.skip_message.endswith("lag behind the extract p0=0, p1=0, p2=0")


def test_sensor_retries_a_backlog_a_failed_extract_left_without_new_data(
    kafka_settings, topic, tmp_path, instance, monkeypatch
):
    """An extract killed or failed after the sensor moved its cursor: no new data will come
    to bring another, yet the lake trails the topic. The sensor brings one, not every tick."""
    from churn_platform.definitions import defs
    from churn_platform.defs.ingestion import sensors
    from churn_platform.defs.ingestion.assets import raw_customer_events_job

    lake = tmp_path / "lake"
    for seed in (340, 341):
        produce_round(kafka_settings, topic, seed=seed, bad_fraction=0.0)
    request, cursor = tick(instance, kafka_settings, topic, lake)
    assert isinstance(request, dg.RunRequest)
    # the requested run dies: a worker killed with SIGKILL, reported failed by its code server
    job = defs().resolve_job_def(raw_customer_events_job.name)
    killed = instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED)
    instance.report_run_failed(killed)
    ended = instance.get_run_record_by_id(killed.run_id).end_time

    monkeypatch.setattr(sensors, "wall_clock", lambda: ended + 5)
    waiting, same = tick(instance, kafka_settings, topic, lake, cursor)
    assert isinstance(waiting, dg.SkipReason) and same == cursor
    assert f"the last extract (run {killed.run_id[:8]}, FAILURE) left it" in waiting.skip_message
    assert "retrying in 25 s" in waiting.skip_message
    assert "lag behind the extract p0=" in waiting.skip_message

    monkeypatch.setattr(sensors, "wall_clock", lambda: ended + sensors.RETRY_AFTER_S)
    retry, _ = tick(instance, kafka_settings, topic, lake, cursor)
    assert isinstance(retry, dg.RunRequest)
    assert retry.tags[TRIGGER_REASON] == "backlog"
    assert int(retry.tags[LAG_TOTAL]) > 0

    # an extract that read something and still left a backlog (its cap): the next at once
    # (the extract job itself, as the daemon runs it: its run ends after its materialization)
    capped = (
        dg.Definitions(
            assets=[raw_customer_events],
            jobs=[raw_customer_events_job],
            resources=resources(kafka_settings, topic, lake),
        )
        .resolve_job_def(raw_customer_events_job.name)
        .execute_in_process(
            instance=instance,
            run_config={
                "ops": {"raw_customer_events": {"config": {"max_messages_per_partition": 5}}}
            },
            tags=retry.tags,
        )
    )
    assert capped.success
    monkeypatch.setattr(sensors, "wall_clock", time.time)
    after_cap, _ = tick(instance, kafka_settings, topic, lake, cursor)
    assert isinstance(after_cap, dg.RunRequest), after_cap
    assert after_cap.tags[TRIGGER_REASON] == "backlog"

    # caught up: nothing more, however long it waits
    extract(instance, kafka_settings, topic, lake, after_cap.tags)
    monkeypatch.setattr(sensors, "wall_clock", lambda: time.time() + 3600)
    done, _ = tick(instance, kafka_settings, topic, lake, cursor)
    assert isinstance(done, dg.SkipReason) and "no new data" in done.skip_message


def test_sensor_waits_for_missing_topic_and_running_extract(
    kafka_settings, topic, instance, tmp_path
):
    lake = tmp_path / "lake"
    missing, _ = tick(instance, kafka_settings, f"{topic}-not-yet", lake)
    assert isinstance(missing, dg.SkipReason) and "does not exist" in missing.skip_message

    produce_round(kafka_settings, topic, seed=320, bad_fraction=0.0)
    from churn_platform.definitions import defs
    from churn_platform.defs.ingestion.assets import raw_customer_events_job

    job = defs().resolve_job_def(raw_customer_events_job.name)
    instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED)
    busy, cursor = tick(instance, kafka_settings, topic, lake)
    assert isinstance(busy, dg.SkipReason) and "already" in busy.skip_message
    assert "lag behind the extract p0=" in busy.skip_message
    assert cursor is None


def test_resource_round_trips_security_settings():
    from churn_platform.kafka.config import KafkaSettings

    settings = KafkaSettings.from_env(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "b:9092",
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": "PLAIN",
            "KAFKA_SASL_USERNAME": "u",
            "KAFKA_SASL_PASSWORD": "pw-123",
        }
    )
    again = KafkaResource.from_settings(settings, "events").settings()
    assert again.client_config()["sasl.password"] == "pw-123"
    assert again.security == settings.security


def test_the_flush_bounds_come_from_the_run_config(kafka_settings, topic, tmp_path, instance):
    """A smaller flush writes more, smaller files of the same rows; unset keeps the defaults."""
    # ~24k messages: more than one 20k-message chunk, so a small bound flushes twice
    valid, _ = produce_round(kafka_settings, topic, seed=304, customers=1000, bad_fraction=0.0)
    files = {}
    for name, config in (("default", {}), ("small", {"flush_rows": 40})):
        root = tmp_path / name
        result = dg.materialize(
            [raw_customer_events],
            instance=instance,
            resources=resources(kafka_settings, topic, root),
            run_config={"ops": {"raw_customer_events": {"config": config}}},
        )
        assert result.success
        events = read_raw_events(Lake(root), [topic])
        assert sorted(events["event_id"].to_list()) == sorted(valid)
        files[name] = len(list(root.rglob("*.parquet")))
    assert files["small"] > files["default"] > 0

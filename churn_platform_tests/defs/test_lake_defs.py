"""Dagster wiring of lake maintenance: the job compacts on a real instance; the schedule."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pyarrow as pa
import pytest

from churn_platform.defs.lake.jobs import MAINTENANCE_POOL, lake_maintenance_job
from churn_platform.defs.lake.schedules import lake_maintenance_schedule
from churn_platform.defs.resources.lake import LakeResource
from churn_platform.events.contract import EVENTS_TOPIC
from churn_platform.lake import tables
from churn_platform.lake.store import Lake
from churn_platform.testing.lakes import ExtractLike, event_ids, orphan
from churn_platform_tests.defs.runs import record_run


@pytest.fixture
def instance():
    with dg.instance_for_test() as test_instance:
        yield test_instance


def test_the_job_compacts_and_vacuums_every_table_on_a_real_instance(tmp_path, instance):
    lake = Lake(tmp_path / "lake")
    extract = ExtractLike(lake)
    for _ in range(15):
        extract.round(days=2)
    tables.write(lake, tables.TRAINING_SET, pa.table({"x": [1, 2]}))
    left = orphan(lake, age_hours=3)
    files_before = len(tables.data_files(lake, tables.RAW_EVENTS))

    result = lake_maintenance_job.execute_in_process(
        instance=instance,
        resources={"lake": LakeResource(root=str(tmp_path / "lake"))},
        run_config={"ops": {"maintain_lake_tables": {"config": {"retention_hours": 2}}}},
    )

    assert result.success
    assert files_before == 60  # 15 extracts × 2 Kafka partitions × 2 event dates
    assert len(tables.data_files(lake, tables.RAW_EVENTS)) == 2  # one per event date
    assert event_ids(lake) == extract.expected_ids()
    assert tables.committed_offsets(lake, tables.RAW_EVENTS, EVENTS_TOPIC) == extract.next
    assert not lake.exists(left)
    [output] = [e for e in result.all_node_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = output.event_specific_data.metadata
    assert metadata["files_before"].value == 60 + 1
    assert metadata["files_after"].value == 2 + 1
    assert metadata["removed_files"].value == 1
    assert metadata["retention_hours"].value == 2
    assert "| raw/customer_events | 60 | 2 |" in metadata["tables"].value
    per_table = result.output_for_node("maintain_lake_tables")
    assert {t["table"] for t in per_table} == {s.name for s in tables.TABLES}


def test_a_bad_retention_setting_fails_the_run_with_one_line(tmp_path, instance, monkeypatch):
    monkeypatch.setenv("CHURN_LAKE_RETENTION_HOURS", "0")
    result = lake_maintenance_job.execute_in_process(
        instance=instance,
        resources={"lake": LakeResource(root=str(tmp_path / "lake"))},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    description = failure.event_specific_data.error.message
    assert "CHURN_LAKE_RETENTION_HOURS='0'" in description and "168" in description


def test_a_retention_below_the_longest_run_fails_the_vacuum_run(tmp_path, instance):
    run_id = record_run(instance, hours=3)
    result = lake_maintenance_job.execute_in_process(
        instance=instance,
        resources={"lake": LakeResource(root=str(tmp_path / "lake"))},
        run_config={"ops": {"maintain_lake_tables": {"config": {"retention_hours": 2}}}},
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "shorter than the longest run (3.0 h)" in message and run_id in message
    # compaction alone (the hourly runs) deletes nothing: no retention to check
    compaction_only = lake_maintenance_job.execute_in_process(
        instance=instance,
        resources={"lake": LakeResource(root=str(tmp_path / "lake"))},
        run_config={"ops": {"maintain_lake_tables": {"config": {"vacuum": False}}}},
    )
    assert compaction_only.success


def test_the_op_takes_its_own_pool_never_the_extracts():
    [node] = lake_maintenance_job.graph.node_defs
    assert node.pool == MAINTENANCE_POOL != "kafka_extract"


def test_the_schedule_is_on_compacts_hourly_and_vacuums_once_a_day(instance):
    assert lake_maintenance_schedule.default_status == dg.DefaultScheduleStatus.RUNNING

    def vacuums_at(hour: int) -> bool:
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2026, 3, 1, hour, 17, tzinfo=UTC)
        )
        [request] = lake_maintenance_schedule.evaluate_tick(context).run_requests
        return request.run_config["ops"]["maintain_lake_tables"]["config"]["vacuum"]

    assert [h for h in range(24) if vacuums_at(h)] == [4]


def test_the_code_location_holds_the_job_and_the_schedule(monkeypatch):
    monkeypatch.setenv("CHURN_LAKE", "memory://lake")
    from churn_platform.definitions import defs

    definitions = defs()
    assert definitions.resolve_job_def("lake_maintenance_job").executor_def.name == "in_process"
    assert definitions.resolve_schedule_def("lake_maintenance_schedule")

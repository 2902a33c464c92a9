"""Dagster on PostgreSQL, real: deploy/dagster.postgres.yaml in a temporary DAGSTER_HOME,
its DAGSTER_PG_* variables pointing at a new database of the session's throw-away cluster.

The code location's sensors, automation and runs on this instance, as separate processes,
are in test_deployment.py; here the instance itself and the extract's pool on it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from churn_platform.definitions import defs
from churn_platform.defs.ingestion.assets import EXTRACT_POOL, raw_customer_events_job
from churn_platform.defs.tags import EXTRACT_CONCURRENCY
from churn_platform.deploy import POSTGRES_DAGSTER_YAML
from churn_platform.instance import PROJECT_DAGSTER_YAML
from churn_platform.lake.store import Lake
from churn_platform.testing.deployment import (
    hold_extract_pool,
    offsets_in_lake,
    release_extract_pool,
    waiting_for_extract_pool,
)
from churn_platform.testing.topics import produce_round
from churn_platform_tests.defs.test_ingestion_defs import tick

PROJECT = Path(__file__).resolve().parents[2]
EXTRACT = dg.AssetKey("raw_customer_events")


@pytest.fixture
def pg_home(tmp_path, postgres, postgres_database, monkeypatch):
    for name, value in postgres.environment(postgres_database).items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(POSTGRES_DAGSTER_YAML, home / "dagster.yaml")
    return home


def test_the_postgres_yaml_is_the_projects_instance_on_postgresql(
    pg_home, postgres, postgres_database
):
    shipped = yaml.safe_load(POSTGRES_DAGSTER_YAML.read_text())
    project = yaml.safe_load(PROJECT_DAGSTER_YAML.read_text())
    assert {k: v for k, v in shipped.items() if k != "storage"} == project  # kept in step
    db = shipped["storage"]["postgres"]["postgres_db"]
    assert {k: v for k, v in db.items() if isinstance(v, dict)} == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USER"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"},
    }

    with dg.DagsterInstance.from_config(str(pg_home)) as instance:
        storages = (instance.run_storage, instance.event_log_storage, instance.schedule_storage)
        assert [type(s).__name__ for s in storages] == [
            "PostgresRunStorage",
            "PostgresEventLogStorage",
            "PostgresScheduleStorage",
        ]
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        settings = instance.get_concurrency_config()
        assert settings.pool_config.default_pool_limit == 1
        limits = {x["key"]: x["limit"] for x in settings.run_queue_config.tag_concurrency_limits}
        assert limits[EXTRACT_CONCURRENCY] == 1
        assert instance.run_monitoring_enabled
        job = defs().resolve_job_def(raw_customer_events_job.name)
        run = instance.create_run_for_job(job, status=dg.DagsterRunStatus.NOT_STARTED)

    # Dagster made its tables in the test's database, and the run is in them
    connection = postgres.connect(postgres_database)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT run_id FROM runs")
            assert cursor.fetchall() == [(run.run_id,)]
    finally:
        connection.close()


def step_window(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    """When the extract step started and ended in that run (from the event log)."""
    times = {
        record.event_log_entry.dagster_event_type: record.event_log_entry.timestamp
        for record in instance.get_records_for_run(run_id).records
        if record.event_log_entry.is_dagster_event
        and record.event_log_entry.step_key == "raw_customer_events"
    }
    return times[dg.DagsterEventType.STEP_START], times[dg.DagsterEventType.STEP_SUCCESS]


def start_extract(how: str, env: dict[str, str], tags: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "churn_platform_tests.deploy.extract_run",
            how,
            json.dumps(tags or {}),
        ],
        cwd=PROJECT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_extract_runs_on_postgresql_never_overlap(
    pg_home, postgres, postgres_database, kafka_settings, topic, tmp_path
):
    """The sensor's extract and the same asset materialized from the UI (the implicit asset
    job: not the extract job, so no tag limit), each in a process of its own: only the pool,
    whose slots live in PostgreSQL, stands between them. A slot is held first, as a longer
    extract would hold it, so that both runs are sure to wait for it."""
    produce_round(kafka_settings, topic, seed=61, customers=300, days=20, bad_fraction=0)
    lake = Lake(str(tmp_path / "lake"))
    env = {
        **os.environ,
        **postgres.environment(postgres_database),
        "DAGSTER_HOME": str(pg_home),
        "CHURN_LAKE": lake.uri,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_settings.bootstrap_servers,
        "CHURN_EVENTS_TOPIC": topic,
    }
    with dg.DagsterInstance.from_config(str(pg_home)) as instance:
        request, _ = tick(instance, kafka_settings, topic, lake.uri)
        assert isinstance(request, dg.RunRequest)
        hold_extract_pool(instance)

        processes = {
            "sensor": start_extract("job", env, dict(request.tags)),
            "ui": start_extract("asset", env),
        }
        try:
            deadline = time.monotonic() + 120
            while not (waiting := waiting_for_extract_pool(instance, 2)):
                exited = {n: p.returncode for n, p in processes.items() if p.poll() is not None}
                assert not exited and time.monotonic() < deadline, (
                    f"the two runs never both waited for the pool (exited: {exited})"
                )
                time.sleep(0.2)
            release_extract_pool(instance)
            outputs = {n: p.communicate(timeout=120) for n, p in processes.items()}
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.kill()
        results = {n: json.loads(out.strip().splitlines()[-1]) for n, (out, _) in outputs.items()}

        assert {n: r["success"] for n, r in results.items()} == {"sensor": True, "ui": True}
        assert waiting == {r["run_id"] for r in results.values()}
        first, second = sorted(step_window(instance, r["run_id"]) for r in results.values())
        assert first[1] <= second[0], (first, second)  # one after the other, never together
        pool = instance.event_log_storage.get_concurrency_info(EXTRACT_POOL)
        assert pool.claimed_slots == []
        read = [
            record.asset_materialization.metadata["messages"].value
            for record in instance.fetch_materializations(EXTRACT, limit=10).records
        ]

    # and the lake holds each message once: the second extract found nothing left to read
    assert sorted(read) == [0, len(offsets_in_lake(lake, topic))], read
    assert max(offsets_in_lake(lake, topic).values()) == 1

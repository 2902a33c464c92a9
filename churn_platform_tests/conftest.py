"""Shared fixtures: a real embedded Kafka broker per test session, fresh topics per test."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from churn_platform.kafka.admin import ensure_topic
from churn_platform.kafka.broker import EmbeddedBroker
from churn_platform.kafka.config import KafkaSettings
from churn_platform.testing.postgres import (
    INSTALL_HINT,
    PostgresCluster,
    postgres_bin_dir,
    throwaway_cluster,
)

# an S3-compatible server on loopback (moto), for tests of the lake on an object store
pytest_plugins = ["churn_platform_tests.lake.s3"]


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> EmbeddedBroker:
    """One Tansu broker on a free loopback port for the whole test session."""
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as running:
        yield running


@pytest.fixture
def kafka_settings(broker: EmbeddedBroker) -> KafkaSettings:
    return broker.settings


@pytest.fixture
def topic(kafka_settings: KafkaSettings) -> str:
    """A new, empty 3-partition topic for this test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    ensure_topic(kafka_settings, name, partitions=3)
    return name


# the simulated lake with features and labels that the ML tests share (built once), and a
# model trained on it (once per session: read-only)
from churn_platform_tests.ml.ml_lake import ml_lake, trained_model  # noqa: E402,F401


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One throw-away PostgreSQL cluster for the test session (skipped when not installed)."""
    if postgres_bin_dir() is None:
        pytest.skip(f"PostgreSQL is not installed: {INSTALL_HINT}")
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_database(postgres: PostgresCluster) -> str:
    """A new, empty database in the session's cluster, for one test."""
    return postgres.create_database()

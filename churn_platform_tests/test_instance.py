"""The project's dagster.yaml is a valid instance config with the limits we rely on."""

from __future__ import annotations

import dagster as dg

from churn_platform.defs import tags
from churn_platform.instance import prepare_dagster_home


def test_dagster_yaml_loads_as_an_instance_with_run_and_pool_limits(tmp_path):
    home = prepare_dagster_home(tmp_path / "home")
    assert (home / "dagster.yaml").exists()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_coordinator.dequeue_interval_seconds == 1
        settings = instance.get_concurrency_config()
        assert settings.pool_config.default_pool_limit == 1
        limits = {
            limit["key"]: limit["limit"]
            for limit in settings.run_queue_config.tag_concurrency_limits
        }
        assert limits[tags.EXTRACT_CONCURRENCY] == 1
        assert instance.get_settings("telemetry")["enabled"] is False

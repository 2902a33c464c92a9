"""Lakes the feature tests of many dates share (one of each per test module)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from churn_platform.lake.store import Lake
from churn_platform.testing.lakes import simulated_lake, write_events
from churn_platform.testing.public_data import cdnow_events

SIMULATED_END = datetime(2026, 11, 21, tzinfo=UTC)


@pytest.fixture(scope="module")
def sim_lake(tmp_path_factory) -> Lake:
    """400 simulated days up to SIMULATED_END: dates late in it have files before their
    365-day window (read for lifecycle rows only)."""
    lake = Lake(tmp_path_factory.mktemp("sim") / "lake")
    simulated_lake(
        lake, customers=80, days=400, end=SIMULATED_END, partitions=4, partition_by="event_id"
    )
    return lake


@pytest.fixture(scope="module")
def cdnow_lake(tmp_path_factory) -> Lake:
    """CDNOW_master.txt (real purchases, 1997-98) written to a lake as the replay maps it."""
    lake = Lake(tmp_path_factory.mktemp("cdnow") / "lake")
    write_events(lake, cdnow_events(), partitions=2)
    return lake

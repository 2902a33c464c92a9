"""lake.tables' refusals: stores delta-rs cannot reach, and tables whose log was lost."""

from __future__ import annotations

import shutil

import pytest

from churn_platform.events.contract import EVENTS_TOPIC
from churn_platform.lake import raw, tables
from churn_platform.lake.store import Lake, LakeError
from churn_platform.testing.lakes import FIRST_DAY, raw_rows


def test_a_memory_lake_is_refused_naming_the_setting():
    lake = Lake("memory://refused-lake")
    with pytest.raises(LakeError, match="CHURN_LAKE=memory://refused-lake cannot hold"):
        raw.read_raw_events(lake)
    with pytest.raises(LakeError, match="set it to a directory or an object-store URI"):
        raw.append_rows(lake, EVENTS_TOPIC, raw_rows(0, 0, 3, FIRST_DAY))


def test_data_files_without_a_log_are_refused_for_reads_and_writes(tmp_path):
    lake = Lake(tmp_path / "lake")
    raw.append_rows(lake, EVENTS_TOPIC, raw_rows(0, 0, 5, FIRST_DAY))
    shutil.rmtree(lake.path(tables.RAW_EVENTS.log_dir))
    for attempt in (
        lambda: raw.read_raw_events(lake),
        lambda: raw.extracted_offsets(lake, EVENTS_TOPIC),
        lambda: raw.append_rows(lake, EVENTS_TOPIC, raw_rows(0, 5, 2, FIRST_DAY)),
    ):
        with pytest.raises(LakeError, match="but no transaction log") as refused:
            attempt()
        assert "restore _delta_log from a backup" in str(refused.value)
    assert len(lake.list_files(tables.RAW_EVENTS.name, ".parquet")) == 1  # nothing added

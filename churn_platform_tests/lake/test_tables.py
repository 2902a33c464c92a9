"""lake.tables' refusals: stores delta-rs cannot reach, and tables whose log was lost."""

from __future__ import annotations

import shutil
import threading

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


def test_tables_reused_inside_the_block_see_every_commit_and_keep_their_versions(tmp_path):
    """Inside `reusing_opened_tables` a table is opened once: later reads see commits made
    since (here, another writer's and the block's own), a given version stays that version,
    and outside the block every call opens the table afresh."""
    lake = Lake(tmp_path / "lake")
    raw.append_rows(lake, EVENTS_TOPIC, raw_rows(0, 0, 5, FIRST_DAY))
    with tables.reusing_opened_tables():
        first = tables.open_table(lake, tables.RAW_EVENTS)
        assert tables.open_table(lake, tables.RAW_EVENTS) is first
        at_start = tables.open_table(lake, tables.RAW_EVENTS, first.version())
        seen = len(raw.raw_files(lake))
        raw.append_rows(lake, EVENTS_TOPIC, raw_rows(0, 5, 3, FIRST_DAY))  # the block's own
        # another writer: a thread of its own, which does not share the block's tables
        other = threading.Thread(
            target=raw.append_rows, args=(lake, EVENTS_TOPIC, raw_rows(1, 0, 4, FIRST_DAY))
        )
        other.start()
        other.join()
        newest = tables.open_table(lake, tables.RAW_EVENTS)
        assert newest is first and newest.version() == at_start.version() + 2
        assert len(raw.raw_files(lake)) == seen + 2
        assert tables.open_table(lake, tables.RAW_EVENTS, at_start.version()) is at_start
        assert at_start.version() == newest.version() - 2
        assert raw.read_raw_events(lake).height == 12
        with tables.reusing_opened_tables():  # nested: the same tables
            assert tables.open_table(lake, tables.RAW_EVENTS) is first
    assert tables.open_table(lake, tables.RAW_EVENTS) is not first
    assert raw.read_raw_events(lake).height == 12

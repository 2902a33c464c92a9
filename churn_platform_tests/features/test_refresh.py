"""A refresh recomputes only the customers new raw files touch, and leaves exactly the table
a full run over the same files leaves (polars and Beam), on the simulator and on CDNOW."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from churn_platform.features.churn import ChurnDefinition
from churn_platform.features.materialize import (
    materialize_features,
    read_feature_manifest,
    read_features,
    refresh_features,
)
from churn_platform.lake import maintenance, tables
from churn_platform.lake.store import Lake, LakeError
from churn_platform.testing.lakes import (
    cancelled,
    event,
    events_frame,
    simulated_lake,
    started,
    write_events,
)
from churn_platform.testing.public_data import cdnow_events

END = datetime(2026, 11, 21, tzinfo=UTC)
TODAY = END.date()
INACTIVITY = ChurnDefinition("inactivity", 90)


@pytest.fixture(scope="module")
def base_lake(tmp_path_factory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("refresh") / "lake")
    simulated_lake(lake, customers=120, days=200, end=END, partitions=3)
    return lake


@pytest.fixture
def lake(base_lake, tmp_path) -> Lake:
    copy = tmp_path / "lake"
    shutil.copytree(base_lake.path(""), copy)
    return Lake(copy)


def _customers(lake: Lake, as_of: date) -> list[str]:
    return read_features(lake, as_of, ["customer_id"])["customer_id"].to_list()


def _later_events(lake: Lake, as_of: date) -> pl.DataFrame:
    """What a few more extracts of the day bring: activity of some customers, a cancellation,
    a new customer, an event delivered again, and a late lifecycle event dated weeks back."""
    active = _customers(lake, as_of)
    at = datetime.combine(as_of, datetime.min.time(), UTC) + timedelta(hours=20)
    raw = pl.from_arrow(
        tables.read_arrow(lake, tables.RAW_EVENTS, ["event_id", "customer_id", "event_type"])
    )
    again = raw.filter(pl.col("customer_id") == active[3]).row(0, named=True)
    kinds = sorted(set(raw["event_type"].unique()) - {"subscription_started"})
    activity = next(k for k in kinds if k not in ("subscription_cancelled", "plan_changed"))
    rows = [
        event(f"later-{i}", active[i], activity, at + timedelta(minutes=i)) for i in range(0, 3)
    ]
    rows += [
        cancelled(active[5], at + timedelta(minutes=9)),
        started("newcomer-1", at + timedelta(minutes=10)),
        event("later-new", "newcomer-1", activity, at + timedelta(minutes=11)),
        event(again["event_id"], again["customer_id"], again["event_type"], at),
        started(active[7], at - timedelta(days=30)),
    ]
    return events_frame(rows)


@pytest.mark.parametrize("churn", [ChurnDefinition(), INACTIVITY], ids=["cancellation", "inactive"])
def test_refresh_equals_a_full_run(lake, churn):
    materialize_features(lake, TODAY, engine="polars", churn=churn)
    write_events(lake, _later_events(lake, TODAY), partitions=3)

    refreshed = refresh_features(lake, TODAY, churn)

    assert refreshed is not None and refreshed.engine == "refresh"
    assert 5 <= refreshed.refreshed < refreshed.rows / 4  # the touched few, not everyone
    table = read_features(lake, TODAY, version=refreshed.version)
    manifest = read_feature_manifest(lake, TODAY, refreshed.version)
    full = materialize_features(lake, TODAY, engine="polars", churn=churn)
    assert_frame_equal(table, read_features(lake, TODAY, version=full.version), check_exact=True)
    assert manifest == read_feature_manifest(lake, TODAY, full.version)  # inputs included
    assert "newcomer-1" in table["customer_id"]
    if churn == ChurnDefinition():
        assert _customers(lake, TODAY).count(table["customer_id"][5]) == 1
    beam = materialize_features(lake, TODAY, engine="beam", shards=2, churn=churn)
    assert_frame_equal(table, read_features(lake, TODAY, version=beam.version), check_exact=True)


def test_refresh_after_a_beam_run_and_twice_in_a_row(lake):
    materialize_features(lake, TODAY, engine="beam", shards=2)
    later = _later_events(lake, TODAY)
    write_events(lake, later.head(3), partitions=3)
    first = refresh_features(lake, TODAY)
    write_events(lake, later.tail(-3), partitions=3)
    second = refresh_features(lake, TODAY)

    assert first is not None and second is not None and second.version > first.version
    table = read_features(lake, TODAY, version=second.version)
    full = materialize_features(lake, TODAY, engine="polars")
    assert_frame_equal(table, read_features(lake, TODAY, version=full.version), check_exact=True)


def test_nothing_new_leaves_the_partition_as_it_is(lake):
    done = materialize_features(lake, TODAY, engine="polars")

    again = refresh_features(lake, TODAY)

    assert again is not None and again.refreshed == 0
    assert again.version == done.version == tables.version(lake, tables.FEATURES)
    assert again.rows == done.rows


def test_when_a_refresh_cannot_equal_a_full_run_it_declines(lake):
    assert refresh_features(lake, TODAY) is None  # no partition yet
    materialize_features(lake, TODAY, engine="polars")
    at = datetime.combine(TODAY, datetime.min.time(), UTC) + timedelta(hours=21)
    customer = _customers(lake, TODAY)[0]

    assert refresh_features(lake, TODAY, INACTIVITY) is None  # another churn definition
    # an activity type the table has no columns for
    write_events(lake, events_frame([event("odd-1", customer, "webinar_attended", at)]))
    assert refresh_features(lake, TODAY) is None


def test_a_raw_table_rewritten_under_the_partition_is_declined(lake):
    materialize_features(lake, TODAY, engine="polars")
    compacted = maintenance.compact(lake, tables.RAW_EVENTS, min_small_files=1)
    assert compacted.files_after < compacted.files_before  # files the partition read are gone

    assert refresh_features(lake, TODAY) is None


def test_cdnow_purchases_refresh_equals_a_full_run(tmp_path):
    """Real purchases no one here wrote: a month of them arrives after the table was made."""
    frame = cdnow_events()
    as_of = date(1998, 6, 30)
    cut = datetime(1998, 6, 1, tzinfo=UTC)
    lake = Lake(tmp_path / "lake")
    churn = ChurnDefinition("inactivity", 90)
    write_events(lake, frame.filter(pl.col("ts") < cut), partitions=2)
    materialize_features(lake, as_of, engine="polars", churn=churn)
    write_events(lake, frame.filter(pl.col("ts") >= cut), partitions=2)

    refreshed = refresh_features(lake, as_of, churn)

    assert refreshed is not None and 0 < refreshed.refreshed < refreshed.rows
    table = read_features(lake, as_of, version=refreshed.version)
    full = materialize_features(lake, as_of, engine="polars", churn=churn)
    assert_frame_equal(table, read_features(lake, as_of, version=full.version), check_exact=True)


def test_a_damaged_raw_file_is_named_not_read_as_empty(lake):
    materialize_features(lake, TODAY, engine="polars")
    write_events(lake, _later_events(lake, TODAY), partitions=3)
    damaged = read_feature_manifest(lake, TODAY)["inputs"]["window"][-1]
    Path(lake.path(damaged)).write_bytes(b"PAR1 not parquet")  # one the partition already read

    with pytest.raises(LakeError, match=re.escape(damaged)):
        refresh_features(lake, TODAY)

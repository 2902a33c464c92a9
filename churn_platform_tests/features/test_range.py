"""Many as-of dates in one pass: each date's table is exactly its one-date table (Beam, polars)."""

from __future__ import annotations

import json
import pickle
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from polars.testing import assert_frame_equal, assert_series_equal

from churn_platform.features.churn import ChurnDefinition
from churn_platform.features.inputs import FILE_COLUMN, feature_inputs, range_inputs, read_range
from churn_platform.features.materialize import (
    NULLS_CHECK,
    RANGES_CHECK,
    ROW_COUNT_CHECK,
    SCHEMA_CHECK,
    active_customers,
    active_customers_range,
    check_feature_tables,
    materialize_features,
    materialize_features_range,
    read_feature_manifest,
    read_features,
    write_features,
)
from churn_platform.features.reference import reference_features, reference_features_range
from churn_platform.lake import tables
from churn_platform.lake.store import Lake, LakeError
from churn_platform.testing.lakes import (
    event,
    events_frame,
    replayed_catalogue,
    write_events,
)

END = datetime(2026, 11, 21, tzinfo=UTC)
# the last day, one with history files (lifecycle rows only) and one without, a week apart
SIM_DATES = [date(2026, 11, 20), date(2026, 11, 13), date(2026, 10, 12), date(2025, 12, 1)]
INACTIVITY = ChurnDefinition("inactivity", 90)


def one_date_tables(lake: Lake, dates, engine: str, churn=None) -> dict:
    """Each date materialized on its own: (table, footers, counts) at the version it made."""
    kwargs = {"churn": churn} if churn else {}
    found = {}
    for as_of in dates:
        result = materialize_features(lake, as_of, engine=engine, shards=3, **kwargs)
        found[as_of] = (
            read_features(lake, as_of, version=result.version),
            read_feature_manifest(lake, as_of, result.version),
            (result.rows, result.customers, result.events_read, result.spec),
            len(result.output_files),
            _commit_counts(lake, result.version),
        )
    return found


def _commit_counts(lake: Lake, version: int) -> dict:
    """The counts a date's commit recorded (its Delta commit info), without timings."""
    log = lake.path(f"{tables.FEATURES.name}/_delta_log/{version:020d}.json")
    for line in Path(log).read_text().splitlines():
        body = json.loads(line)
        if "commitInfo" in body:
            info = body["commitInfo"]
            return {k: v for k, v in info.items() if k in ("rows", "customers", "events_read")}
    return {}


def assert_range_equals_one_date(lake: Lake, dates, engine: str, churn=None) -> None:
    expected = one_date_tables(lake, dates, engine, churn)
    kwargs = {"churn": churn} if churn else {}
    results = materialize_features_range(lake, dates, engine=engine, shards=3, **kwargs)
    assert [r.as_of for r in results] == sorted(dates)
    for result in results:
        table, manifest, counts, files, committed = expected[result.as_of]
        assert_frame_equal(
            read_features(lake, result.as_of, version=result.version), table, check_exact=True
        )
        assert read_feature_manifest(lake, result.as_of, result.version) == manifest
        assert (result.rows, result.customers, result.events_read, result.spec) == counts
        assert len(result.output_files) == files
        assert _commit_counts(lake, result.version) == committed
    # the reference over many dates is the reference of each date alone, and Beam's table
    # (the polars engine names its columns before dropping repeated ids: a type seen only
    # in a repeat's later copy is a column there, test_pipeline's contract breach)
    for as_of, table in reference_features_range(lake, dates, **kwargs).items():
        assert_frame_equal(table, reference_features(lake, as_of, **kwargs), check_exact=True)
        if engine == "beam":
            assert_frame_equal(table, expected[as_of][0], check_exact=True)


@pytest.mark.parametrize("engine", ["beam", "polars"])
def test_many_dates_in_one_pass_equal_each_date_alone_on_simulated_events(sim_lake, engine):
    inputs = range_inputs(sim_lake, SIM_DATES)
    assert inputs.dates == tuple(sorted(SIM_DATES))
    # a file that is history for the latest date is read whole for an earlier one
    history = set(feature_inputs(sim_lake, SIM_DATES[0]).history_files)
    assert history & set(feature_inputs(sim_lake, SIM_DATES[-1]).window_files)
    assert_range_equals_one_date(sim_lake, SIM_DATES, engine)


def test_range_inputs_pickle_each_path_once(sim_lake):
    """Beam pickles the DoFns holding a RangeInputs several times a run: every date names
    the paths of `files` itself, so a path is written once however many dates read it."""
    inputs = range_inputs(sim_lake, SIM_DATES)
    assert inputs.per_date == tuple(feature_inputs(sim_lake, d) for d in sorted(SIM_DATES))
    named = sum(len(i.window_files) + len(i.history_files) for i in inputs.per_date)
    assert named > 1.5 * len(inputs.files)  # dates share files
    assert len(pickle.dumps(inputs)) < 1.2 * len(pickle.dumps(inputs.files)) + 20 * named
    assert pickle.loads(pickle.dumps(inputs)) == inputs


def test_many_dates_in_one_pass_equal_each_date_alone_on_cdnow_purchases(cdnow_lake):
    dates = [date(1997, 3, 31), date(1997, 9, 30), date(1998, 3, 31), date(1998, 6, 30)]
    assert_range_equals_one_date(cdnow_lake, dates, "beam", INACTIVITY)
    tables_by_date = reference_features_range(cdnow_lake, dates, INACTIVITY)
    assert all(t.height > 1000 for t in tables_by_date.values())


def test_repeated_event_ids_keep_each_dates_first_copy(tmp_path):
    """A repeated event_id whose copies differ (a contract breach): each date keeps the copy
    its own read order puts first, as a one-date run does."""
    lake = Lake(tmp_path / "lake")
    write_events(lake, replayed_catalogue(end=END), partitions=3, partition_by="event_id")
    write_events(
        lake,
        events_frame(
            [
                event("rp-dup-1", "acct-0001", "page_view", END - timedelta(days=30), 5.0),
                event("rp-dup-1", "acct-0001", "rare_kind", END - timedelta(days=2), 9.0),
            ]
        ),
        partitions=3,
        partition_by="event_id",
    )
    dates = [date(2026, 11, 20), date(2026, 11, 1)]
    for engine in ("beam", "polars"):
        assert_range_equals_one_date(lake, dates, engine)


def test_checks_of_many_dates_judge_each_date_as_its_own_check_does(sim_lake, tmp_path):
    lake = Lake(tmp_path / "lake")
    shutil.copytree(sim_lake.uri, lake.uri)
    dates = SIM_DATES[:3]
    results = materialize_features_range(lake, dates, engine="polars")
    versions = {r.as_of: r.version for r in results}
    for outcomes in check_feature_tables(lake, versions).values():
        assert list(outcomes) == [SCHEMA_CHECK, NULLS_CHECK, RANGES_CHECK, ROW_COUNT_CHECK]
        assert all(o.passed for o in outcomes.values()), outcomes
    inputs = [feature_inputs(lake, d) for d in dates]
    for as_of, active in active_customers_range(lake, inputs).items():
        assert_series_equal(active, active_customers(lake, as_of, feature_inputs(lake, as_of)))
        assert active.len() == read_features(lake, as_of).height > 20
    # a table missing a customer fails the row count of its date only
    as_of = dates[0]
    table = read_features(lake, as_of)
    spec = results[0].spec
    broken = write_features(lake, as_of, table.slice(1), spec, inputs=feature_inputs(lake, as_of))
    outcomes = check_feature_tables(lake, {as_of: broken, dates[1]: None})
    assert not outcomes[as_of][ROW_COUNT_CHECK].passed
    assert outcomes[as_of][ROW_COUNT_CHECK].details["missing"] == 1
    assert outcomes[dates[1]][ROW_COUNT_CHECK].passed


def test_active_customers_read_in_one_scan_equal_the_file_by_file_read(
    sim_lake, tmp_path, monkeypatch
):
    """`tables.read_frames` reads a date's raw files in one scan; with files before the
    window (lifecycle rows only) and without, the answer is the file-by-file one."""
    scanned = {d: active_customers(sim_lake, d, feature_inputs(sim_lake, d)) for d in SIM_DATES}
    monkeypatch.setattr(tables, "read_frames", lambda *args, **kwargs: None)
    for as_of, active in scanned.items():
        assert active.len() > 10
        assert_series_equal(
            active, active_customers(sim_lake, as_of, feature_inputs(sim_lake, as_of))
        )
    monkeypatch.undo()
    # a damaged file: the scan gives up, the file-by-file read names it
    lake = Lake(tmp_path / "lake")
    shutil.copytree(sim_lake.uri, lake.uri)
    inputs = feature_inputs(lake, SIM_DATES[0])
    damaged = inputs.window_files[len(inputs.window_files) // 2]
    Path(lake.path(damaged)).write_bytes(b"PAR1 not a parquet file PAR1")
    assert tables.read_frames(lake, tables.RAW_EVENTS, [damaged], ["event_id"]) is None
    with pytest.raises(LakeError, match="could not read") as caught:
        active_customers(lake, SIM_DATES[0], inputs)
    assert lake.url(damaged) in str(caught.value)


def test_the_range_read_in_one_scan_equals_the_file_by_file_read(sim_lake, tmp_path, monkeypatch):
    """`read_tagged` (what the range's engines and checks read through) scans every file
    once and tags rows by the files' own row counts; with history files (lifecycle rows
    only) and window files, its rows, tags and counts are the file-by-file read's."""
    inputs = range_inputs(sim_lake, SIM_DATES[:2])  # the two latest: files before both windows
    assert any(inputs.lifecycle_only) and not all(inputs.lifecycle_only)
    scanned, scanned_heights = read_range(sim_lake, inputs)
    active = active_customers_range(sim_lake, inputs.per_date)
    monkeypatch.setattr(tables, "read_frames_counted", lambda *args, **kwargs: None)
    one_by_one, heights = read_range(sim_lake, inputs)
    assert_frame_equal(scanned, one_by_one)
    assert scanned_heights == heights
    rows = dict(scanned.group_by(FILE_COLUMN).len().iter_rows())
    # every row of a window file is tagged with that file's index
    window = [i for i, only in enumerate(inputs.lifecycle_only) if not only]
    assert [rows.get(i, 0) for i in window] == [heights[i] for i in window]
    assert sum(heights) > scanned.height  # history files' activity rows were left out
    for as_of, customers in active_customers_range(sim_lake, inputs.per_date).items():
        assert_series_equal(active[as_of], customers)
    monkeypatch.undo()
    # a damaged file: the scan gives up, the file-by-file read names it
    lake = Lake(tmp_path / "lake")
    shutil.copytree(sim_lake.uri, lake.uri)
    damaged = inputs.files[len(inputs.files) // 2]
    Path(lake.path(damaged)).write_bytes(b"PAR1 not a parquet file PAR1")
    assert tables.read_frames_counted(lake, tables.RAW_EVENTS, [damaged], ["event_id"]) is None
    with pytest.raises(LakeError, match="could not read") as caught:
        read_range(lake, inputs)
    assert lake.url(damaged) in str(caught.value)

"""The Beam feature pipeline against the polars reference, and its runner options."""

from __future__ import annotations

import json
import pickle
from datetime import UTC, date, datetime, timedelta

import apache_beam as beam
import polars as pl
import pytest
from apache_beam.options.pipeline_options import (
    DirectOptions,
    FlinkRunnerOptions,
    GoogleCloudOptions,
    StandardOptions,
)
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to
from polars.testing import assert_frame_equal

from churn_platform.features.definitions import FeatureSpec, as_of_end, compute_features
from churn_platform.features.inputs import feature_inputs
from churn_platform.features.materialize import read_feature_manifest, read_features
from churn_platform.features.options import BeamRunnerSettings, BeamRunnerSettingsError
from churn_platform.features.pipeline import (
    ComputeShardFeatures,
    FrameBatch,
    ReadEventShards,
    WriteAhead,
    batch_frames,
    frame_batches,
    run,
    run_feature_pipeline,
)
from churn_platform.features.reference import reference_features
from churn_platform.lake import tables
from churn_platform.lake.pending import PENDING_DIR
from churn_platform.lake.store import Lake
from churn_platform.testing.lakes import (
    event,
    events_frame,
    replayed_catalogue,
    simulated_lake,
    write_events,
)

END = datetime(2026, 11, 21, tzinfo=UTC)
AS_OF = date(2026, 11, 20)  # the last simulated day
EARLIER = date(2026, 10, 12)  # mid-window: later files exist and must not be read


def beam_table(lake: Lake, result) -> pl.DataFrame:
    """The feature table a run committed (at the version it made), in the reference's order."""
    assert result.version is not None
    return read_features(lake, result.as_of, version=result.version)


def local_runner() -> BeamRunnerSettings:
    return BeamRunnerSettings()


@pytest.fixture(scope="module")
def sim_lake(tmp_path_factory) -> Lake:
    """400 days of a simulated business; each customer's events scattered over 4 partitions.

    With a 365-day window, the first 35 days are history files (lifecycle rows only).
    """
    lake = Lake(tmp_path_factory.mktemp("sim") / "lake")
    simulated_lake(lake, customers=120, days=400, end=END, partitions=4, partition_by="event_id")
    return lake


@pytest.fixture
def catalogue_lake(tmp_path) -> Lake:
    lake = Lake(tmp_path / "lake")
    write_events(lake, replayed_catalogue(end=END), partitions=3, partition_by="event_id")
    return lake


# --- one definition, two engines ----------------------------------------------------


@pytest.mark.parametrize("as_of", [AS_OF, EARLIER])
def test_beam_equals_the_polars_reference_on_simulated_events(sim_lake, as_of):
    result = run_feature_pipeline(sim_lake.uri, as_of, local_runner(), shards=3, read_tasks=5)
    expected = reference_features(sim_lake, as_of)
    assert_frame_equal(beam_table(sim_lake, result), expected)
    assert result.rows == expected.height > 50
    assert result.spec.columns() == expected.columns[2:]
    assert len(result.output_files) == 3
    inputs = feature_inputs(sim_lake, as_of)
    if as_of == AS_OF:
        assert inputs.history_files  # lifecycle-only reads are exercised
    assert result.counters["files_read"] == len(inputs.history_files) + len(inputs.window_files)
    assert result.events_read == result.counters["events_read"] > 0


def test_beam_equals_the_reference_on_a_replayed_catalogue(catalogue_lake):
    lake = catalogue_lake
    # a repeated event_id whose later copy differs (a contract breach): the
    # reference keeps the first, so "rare_kind" must not become a column
    write_events(
        lake,
        events_frame(
            [
                event("rp-dup-1", "acct-0001", "page_view", END - timedelta(days=3), 5.0),
                event("rp-dup-1", "acct-0001", "rare_kind", END - timedelta(days=2), 9.0),
            ]
        ),
        partitions=3,
        partition_by="event_id",
    )
    files = feature_inputs(lake, AS_OF).window_files
    # a task per file, so the two copies travel in different batches
    result = run_feature_pipeline(lake.uri, AS_OF, local_runner(), shards=4, read_tasks=len(files))
    expected = reference_features(lake, AS_OF)
    assert_frame_equal(beam_table(lake, result), expected)
    assert result.spec == FeatureSpec(
        ("api_call", "export", "page_view"), ("api_call", "page_view")
    )
    assert "rare_kind_count_7d" not in expected.columns
    assert result.counters["duplicate_events_dropped"] > 1
    # the shard holding the later copy computed rare_kind's columns; the writer dropped them
    # (counted on the bundle's thread while the write ran beside it)
    assert result.counters["columns_only_in_duplicates"] > 0
    # customers without lifecycle events are in (when active), some with are cancelled
    plans = set(expected["plan"])
    assert "unknown" in plans and plans - {"unknown"}


def test_a_date_before_any_event_writes_an_empty_table_with_the_schema(sim_lake):
    before = date(2025, 1, 1)
    result = run_feature_pipeline(sim_lake.uri, before, local_runner(), shards=2, read_tasks=2)
    assert (result.rows, result.events_read, result.spec) == (0, 0, FeatureSpec((), ()))
    assert len(result.output_files) == 2
    assert_frame_equal(beam_table(sim_lake, result), reference_features(sim_lake, before))


# --- no lookahead -----------------------------------------------------------------


def test_events_after_the_as_of_date_change_no_feature(catalogue_lake):
    lake = catalogue_lake
    d = date(2026, 11, 10)
    before_beam = run_feature_pipeline(lake.uri, d, local_runner(), shards=2, read_tasks=2)
    before = reference_features(lake, d)
    assert_frame_equal(beam_table(lake, before_beam), before)
    active = before.filter(pl.col("plan") != "unknown")["customer_id"][0]
    quiet = before.filter(pl.col("plan") == "unknown")["customer_id"][0]
    after = as_of_end(d)  # the first instant after d
    planted = events_frame(
        [
            event(
                "late-1", active, "subscription_cancelled", after, None, '{"reason":"voluntary"}'
            ),
            event(
                "late-2",
                "acct-new",
                "subscription_started",
                after + timedelta(days=1),
                None,
                '{"plan":"team","mrr":199}',
            ),  # fmt: skip
            event("late-3", quiet, "page_view", after, 60.0),
            event("late-4", quiet, "brand_new_type", after + timedelta(hours=5), 1.0),
            event(
                "late-5",
                active,
                "subscription_changed",
                after + timedelta(days=2),
                None,
                '{"plan":"basic","mrr":1}',
            ),  # fmt: skip
        ]
    )
    write_events(lake, planted, partitions=3)
    # and a misdated file: rows after d filed under d, which a reader must still not see
    misdated = events_frame(
        [
            event("late-6", quiet, "api_call", after + timedelta(hours=1), 0.5),
            event("late-7", active, "subscription_cancelled", after + timedelta(hours=2)),
        ]
    )
    write_events(lake, misdated, partitions=3, event_date=d)

    after_beam = run_feature_pipeline(lake.uri, d, local_runner(), shards=2, read_tasks=2)
    assert_frame_equal(reference_features(lake, d), before)
    assert_frame_equal(beam_table(lake, after_beam), before)
    assert after_beam.spec == before_beam.spec
    assert after_beam.counters["events_after_as_of_skipped"] == 2
    # the planted events are real: the next day sees them
    next_day = reference_features(lake, d + timedelta(days=1))
    assert active not in next_day["customer_id"].to_list()
    assert "acct-new" not in before["customer_id"].to_list()
    assert "brand_new_type_count_7d" in next_day.columns


# --- runner portability ------------------------------------------------------------


def test_multi_processing_workers_give_the_same_table(sim_lake):
    """Two worker processes: everything shipped to them (DoFns, batches, specs) pickles."""
    settings = BeamRunnerSettings(direct_num_workers=2, direct_running_mode="multi_processing")
    result = run_feature_pipeline(sim_lake.uri, AS_OF, settings, shards=4, read_tasks=4)
    assert_frame_equal(beam_table(sim_lake, result), reference_features(sim_lake, AS_OF))


def test_a_file_uri_lake_goes_through_the_same_code_path(tmp_path):
    lake = Lake(f"file://{tmp_path}/lake")
    write_events(lake, replayed_catalogue(end=END, customers=15, days=40), partitions=2)
    result = run_feature_pipeline(lake.uri, AS_OF, local_runner(), shards=2, read_tasks=2)
    assert all(lake.exists(p) for p in result.output_files)
    assert_frame_equal(beam_table(lake, result), reference_features(lake, AS_OF))


def test_a_rerun_replaces_the_output_never_duplicates(catalogue_lake):
    lake = catalogue_lake
    first = run_feature_pipeline(lake.uri, AS_OF, local_runner(), shards=4, read_tasks=2)
    again = run_feature_pipeline(lake.uri, AS_OF, local_runner(), shards=4, read_tasks=2)
    assert again.version > first.version
    assert not set(again.output_files) & set(first.output_files)  # new files, one commit
    fewer = run_feature_pipeline(lake.uri, AS_OF, local_runner(), shards=2, read_tasks=2)
    committed = tables.data_files(lake, tables.FEATURES, {"as_of": AS_OF})
    assert [tables.file_path(tables.FEATURES, f) for f in committed] == sorted(fewer.output_files)
    assert len(committed) == 2
    whole = read_features(lake, AS_OF)
    assert_frame_equal(whole, reference_features(lake, AS_OF))
    assert FeatureSpec.from_dict(read_feature_manifest(lake, AS_OF)) == fewer.spec
    assert fewer.rows == whole.height
    # the earlier runs stay readable by version: time travel
    assert_frame_equal(read_features(lake, AS_OF, version=first.version), whole)
    # nothing is left pending once a run committed
    assert not lake.list_files(f"{tables.FEATURES.name}/{PENDING_DIR}")


def test_command_line_entry_point(sim_lake, capsys):
    result = run(["--lake", sim_lake.uri, "--as_of", "2026-11-20", "--shards", "2"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"] == result.rows
    assert len(result.output_files) == 2


# --- transforms -----------------------------------------------------------------


def test_read_event_shards_puts_each_customer_in_exactly_one_shard(sim_lake):
    inputs = feature_inputs(sim_lake, AS_OF)
    with BeamTestPipeline(options=local_runner().to_pipeline_options()) as p:
        read = p | ReadEventShards(sim_lake.uri, AS_OF, inputs, shards=3, tasks=4)
        owners = (
            read.events
            | "CustomerShard"
            >> beam.FlatMap(lambda kv: [(c, kv[0]) for c in kv[1].frame["customer_id"].unique()])
            | "DistinctPairs" >> beam.Distinct()
            | "ShardsPerCustomer" >> beam.combiners.Count.PerKey()
            | "Counts" >> beam.Values()
            | "DistinctCounts" >> beam.Distinct()
        )
        assert_that(owners, equal_to([1]), label="OneShardPerCustomer")
        total = read.events_read | "Total" >> beam.CombineGlobally(sum)
        expected = sum(pl.read_parquet(sim_lake.path(f)).height for f in inputs.window_files)
        expected += sum(pl.read_parquet(sim_lake.path(f)).height for f in inputs.history_files)
        assert_that(total, equal_to([expected]), label="EveryRowRead")


def test_compute_shard_features_matches_compute_features_per_shard():
    events = replayed_catalogue(end=END, customers=12, days=30)
    spec = FeatureSpec(("api_call", "export", "page_view"), ("api_call", "page_view"))
    by_customer = events.partition_by("customer_id", maintain_order=True)
    shard0, shard1 = pl.concat(by_customer[::2]), pl.concat(by_customer[1::2])
    # the same event_id twice with different content: which copy is first matters
    customer = shard0["customer_id"][0]
    first = events_frame([event("x-1", customer, "page_view", END - timedelta(days=2), 3.0)])
    second = events_frame([event("x-1", customer, "export", END - timedelta(days=1))])
    shard0 = pl.concat([first, shard0, second])
    expected = [
        (0, compute_features(shard0, AS_OF, spec).rows()),
        (1, compute_features(shard1, AS_OF, spec).rows()),
        (2, []),  # a shard without events still yields its (empty) table
    ]
    with BeamTestPipeline(options=local_runner().to_pipeline_options()) as p:
        batches = p | "Batches" >> beam.Create(
            [
                (0, FrameBatch(1, shard0.slice(100))),
                (0, FrameBatch(0, shard0.slice(0, 100))),  # out of order: task order restores it
                (1, FrameBatch(0, shard1)),
            ]
        )
        spec_pc = p | "Spec" >> beam.Create([spec])
        computed = batches | ComputeShardFeatures(AS_OF, 3, spec_pc)
        rows = computed.features | beam.MapTuple(lambda shard, table: (shard, table.frame.rows()))
        assert_that(rows, equal_to(expected))


def test_batches_compressed_side_by_side_are_the_batches_made_one_by_one():
    """frame_batches / batch_frames (the codec on every core): the same bytes as FrameBatch
    makes alone, in order, and the same frames back, whether or not a batch was decoded."""
    events = replayed_catalogue(end=END, customers=12, days=30)
    frames = [events.slice(i * 50, 50 + i) for i in range(7)] + [events.clear()]
    made = frame_batches(3, frames)
    alone = [FrameBatch(3, frame) for frame in frames]
    assert [b.index for b in made] == [3] * len(frames)
    assert [b.__reduce__() for b in made] == [b.__reduce__() for b in alone]
    shipped = [pickle.loads(pickle.dumps(b)) for b in made]  # as Beam ships them: bytes only
    for back, frame in zip(batch_frames(shipped), frames, strict=True):
        assert_frame_equal(back, frame)
    assert [len(frame_batches(0, frames[:1])), len(frame_batches(0, []))] == [1, 0]


def test_write_ahead_keeps_writes_in_flight_hands_results_back_in_order_and_fails_loudly():
    """WriteAhead (the feature files' writes beside the bundle): at most `ahead` in flight
    before `submit` waits for the oldest, results in submission order, a failed write
    raised where its result is taken."""
    import threading

    release = threading.Event()
    started: list[int] = []

    def write(n: int) -> int:
        started.append(n)
        release.wait(10)
        return n * 10

    writes = WriteAhead(ahead=2)
    assert list(writes.submit(lambda: write(0))) == []
    assert list(writes.submit(lambda: write(1))) == []  # two in flight: nothing waited for
    release.set()
    assert list(writes.submit(lambda: write(2))) == [0]  # a third: the oldest taken first
    assert list(writes.drain()) == [10, 20]
    assert sorted(started) == [0, 1, 2]

    def broken() -> int:
        raise OSError("disk full")

    failing = WriteAhead(ahead=1)
    assert list(failing.submit(broken)) == []
    with pytest.raises(OSError, match="disk full"):
        list(failing.submit(lambda: 1))


# --- runner options ----------------------------------------------------------------


def test_default_runner_is_the_local_direct_runner_never_prism():
    settings = BeamRunnerSettings()
    assert settings.runner == "DirectRunner"
    options = settings.to_pipeline_options()
    assert options.view_as(StandardOptions).runner == "FnApiRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 1
    assert options.view_as(DirectOptions).direct_running_mode == "in_memory"
    assert isinstance(beam.Pipeline(options=options).runner, FnApiRunner)


@pytest.mark.parametrize("runner", ["PrismRunner", "prism", "FancyRunner", "directrunner"])
def test_prism_and_unknown_runners_are_refused_naming_the_setting(runner):
    with pytest.raises(BeamRunnerSettingsError, match="runner"):
        BeamRunnerSettings(runner=runner)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("direct_running_mode", "multi_process"),
        ("direct_num_workers", -1),
        ("extra_args", ["--runner=PrismRunner"]),
        ("extra_args", "--parallelism=4"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(field, value):
    with pytest.raises(BeamRunnerSettingsError, match=field.split("_")[0]):
        BeamRunnerSettings(**{field: value})


def test_cluster_runner_options_pass_through():
    flink = BeamRunnerSettings(
        runner="FlinkRunner", extra_args=["--flink_master=host:8081", "--parallelism=4"]
    ).to_pipeline_options()
    assert flink.view_as(StandardOptions).runner == "FlinkRunner"
    assert flink.view_as(FlinkRunnerOptions).flink_master == "host:8081"
    assert flink.view_as(FlinkRunnerOptions).parallelism == 4
    dataflow = BeamRunnerSettings(
        runner="DataflowRunner",
        extra_args=["--project=p1", "--region=europe-west1", "--temp_location=gs://b/tmp"],
    ).to_pipeline_options()
    cloud = dataflow.view_as(GoogleCloudOptions)
    assert (cloud.project, cloud.region, cloud.temp_location) == (
        "p1",
        "europe-west1",
        "gs://b/tmp",
    )
    assert dataflow.view_as(StandardOptions).runner == "DataflowRunner"


def test_settings_from_the_command_line():
    settings = BeamRunnerSettings.from_argv(
        ["--lake", "x", "--direct_num_workers", "2", "--direct_running_mode=multi_processing"]
    )
    assert (settings.runner, settings.direct_num_workers) == ("DirectRunner", 2)
    assert settings.direct_running_mode == "multi_processing"
    assert settings.extra_args == ("--lake", "x")
    with pytest.raises(BeamRunnerSettingsError, match="runner"):
        BeamRunnerSettings.from_argv(["--runner", "PrismRunner"])

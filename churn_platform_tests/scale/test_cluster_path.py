"""Off one machine: the package workers install, cluster runner options, a lake at a URI.

Nothing here needs a cluster. It proves the parts a cluster run depends on:
the package Beam ships to workers (`--setup_file ./setup.py`, and the wheel a
container image installs) holds the platform and nothing of this machine;
the runner settings become the options Flink, Spark and Dataflow read, and a
lake the workers could not reach is refused before anything is submitted;
and the whole chain (extract → Beam features → labels → training set →
model → scores) gives the same tables on a lake given as a file:// URI as on
a plain directory, through the same code. (The derived tables are Delta
tables, which delta-rs reads from local paths and object stores but not from
fsspec's in-process memory:// store, so this chain no longer runs there.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from apache_beam.options.pipeline_options import (
    FlinkRunnerOptions,
    GoogleCloudOptions,
    PipelineOptions,
    PortableOptions,
    SetupOptions,
    SparkRunnerOptions,
    StandardOptions,
    WorkerOptions,
)
from polars.testing import assert_frame_equal

from churn_platform.defs.resources.beam import BeamRunnerResource
from churn_platform.features.options import BeamRunnerSettings, BeamRunnerSettingsError
from churn_platform.features.pipeline import FeaturePipelineOptions
from churn_platform.lake.store import Lake

REPO = Path(__file__).resolve().parents[2]
SETUP_PY = REPO / "setup.py"
# what a build needs: the metadata, the shim, the readme pyproject names, the package
PACKAGING_SOURCES = ("pyproject.toml", "setup.py", "README.md", "churn_platform")
MUST_SHIP = ("churn_platform/features/pipeline.py", "churn_platform/definitions.py")
# an absolute path of this machine: not preceded by a word, ':', '/', '.' or '-'
# (so gs://bucket/tmp or ./tmp/x are not taken for one)
LOCAL_PATH = re.compile(rb"(?<![\w:/.-])/(?:tmp|work|root|home)/")


def packaging_copy(target: Path) -> Path:
    """The files a build reads, copied: a build writes build/ and *.egg-info beside them."""
    target.mkdir()
    for name in PACKAGING_SOURCES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / name)
    return target


def local_paths_in(name: str, data: bytes, roots: list[Path]) -> list[str]:
    found = [str(root) for root in roots if str(root).encode() in data]
    found += [m.group().decode() for m in LOCAL_PATH.finditer(data)]
    return [f"{name}: {hit}" for hit in found]


# --- the package workers install ------------------------------------------------------------


def test_setup_file_and_wheel_ship_the_platform_and_nothing_of_this_machine(tmp_path):
    from apache_beam.runners.portability.stager import Stager

    src = packaging_copy(tmp_path / "src")
    roots = [REPO, src, tmp_path]

    # `--setup_file`: what Beam's stager runs at submission (`python -m build --sdist`
    # when `build` is installed, else `python setup.py sdist`), staged as workflow.tar.gz
    staging = tmp_path / "staging"
    staging.mkdir()
    options = PipelineOptions([f"--setup_file={src / 'setup.py'}"])
    resources = Stager.create_job_resources(
        options, str(staging), log_submission_env_dependencies=False
    )
    assert [r.role_payload.endswith(b"workflow.tar.gz") for r in resources] == [True]
    (sdist,) = staging.glob("churn-platform-*.tar.gz")
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1]: m for m in archive.getmembers() if m.isfile()}
        assert set(MUST_SHIP) <= set(members)
        assert "setup.py" in members and "pyproject.toml" in members
        assert not [n for n in members if n.startswith("churn_platform_tests")]
        leaks = [
            leak
            for name, member in members.items()
            for leak in local_paths_in(name, archive.extractfile(member).read(), roots)
        ]
    assert leaks == []

    # the wheel a worker image installs. The build backend pyproject names
    # (setuptools>=69 and wheel) is not in the venv (setuptools 65, no wheel), so pip
    # builds in an isolated environment from the configured package indexes.
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            "--wheel-dir",
            str(wheels),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("churn_platform-*-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert set(MUST_SHIP) <= set(names)
        assert not [n for n in names if n.startswith("churn_platform_tests")]
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "churn-platform = churn_platform.cli:main" in archive.read(entry_points).decode()
        leaks = [leak for n in names for leak in local_paths_in(n, archive.read(n), roots)]
    assert leaks == []
    # the same modules in both: what a setup_file worker and an image worker run
    assert sorted(n for n in names if n.startswith("churn_platform/")) == sorted(
        n for n in members if n.startswith("churn_platform/")
    )


# --- cluster runner options (built, never run) ------------------------------------------------

S3_LAKE = "--lake=s3://churn-bucket/lake"


def test_flink_options_with_the_setup_file():
    settings = BeamRunnerSettings(
        runner="FlinkRunner",
        setup_file=str(SETUP_PY),
        extra_args=["--flink_master=flink-jobmanager:8081", "--parallelism=4"],
    )
    options = settings.to_pipeline_options(S3_LAKE, "--as_of=2026-11-20")
    assert options.view_as(StandardOptions).runner == "FlinkRunner"
    assert options.view_as(SetupOptions).setup_file == str(SETUP_PY)
    assert options.view_as(FlinkRunnerOptions).flink_master == "flink-jobmanager:8081"
    assert options.view_as(FlinkRunnerOptions).parallelism == 4
    own = options.view_as(FeaturePipelineOptions)
    assert (own.lake, own.as_of) == ("s3://churn-bucket/lake", "2026-11-20")


def test_spark_and_dataflow_options_with_a_container_image(tmp_path):
    wheel = tmp_path / "churn_platform-0.1.0-py3-none-any.whl"
    wheel.write_bytes(b"PK")
    spark = BeamRunnerSettings(
        runner="SparkRunner",
        sdk_container_image="registry.example.com/churn-platform-beam:0.1.0",
        extra_packages=[str(wheel)],
        extra_args=["--spark_master_url=spark://spark-master:7077", "--environment_type=DOCKER"],
    ).to_pipeline_options(S3_LAKE)
    assert spark.view_as(StandardOptions).runner == "SparkRunner"
    assert spark.view_as(SparkRunnerOptions).spark_master_url == "spark://spark-master:7077"
    assert spark.view_as(PortableOptions).environment_type == "DOCKER"
    assert (
        spark.view_as(WorkerOptions).sdk_container_image
        == "registry.example.com/churn-platform-beam:0.1.0"
    )
    assert spark.view_as(SetupOptions).extra_packages == [str(wheel)]

    dataflow = BeamRunnerSettings(
        runner="DataflowRunner",
        sdk_container_image="europe-docker.pkg.dev/my-project/beam/churn:0.1.0",
        extra_args=["--project=my-project", "--region=europe-west1", "--temp_location=gs://b/tmp"],
    ).to_pipeline_options("--lake=gs://churn-bucket/lake")
    cloud = dataflow.view_as(GoogleCloudOptions)
    assert dataflow.view_as(StandardOptions).runner == "DataflowRunner"
    assert (cloud.project, cloud.region, cloud.temp_location) == (
        "my-project",
        "europe-west1",
        "gs://b/tmp",
    )
    assert dataflow.view_as(WorkerOptions).sdk_container_image.endswith("churn:0.1.0")
    assert dataflow.view_as(SetupOptions).setup_file is None


@pytest.mark.parametrize("lake", ["var/lake", "/data/lake", "file:///data/lake", "memory://lake"])
@pytest.mark.parametrize("runner", ["FlinkRunner", "SparkRunner", "DataflowRunner"])
def test_a_cluster_runner_refuses_a_lake_its_workers_cannot_reach(runner, lake):
    settings = BeamRunnerSettings(runner=runner, setup_file=str(SETUP_PY))
    with pytest.raises(BeamRunnerSettingsError, match=r"CHURN_LAKE.*object-store URI.*s3://"):
        settings.to_pipeline_options(f"--lake={lake}")
    with pytest.raises(BeamRunnerSettingsError, match="--lake"):
        BeamRunnerSettings.from_argv([f"--runner={runner}", "--as_of=2026-11-20"])


def test_local_lakes_stay_fine_where_the_workers_are_this_process():
    BeamRunnerSettings().to_pipeline_options("--lake=var/lake")
    BeamRunnerSettings().to_pipeline_options("--lake=memory://lake")
    loopback = BeamRunnerSettings(
        runner="PortableRunner",
        extra_args=["--job_endpoint=localhost:8099", "--environment_type=LOOPBACK"],
    )
    options = loopback.to_pipeline_options("--lake=var/lake")
    assert options.view_as(PortableOptions).environment_type == "LOOPBACK"


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"runner": "FlinkRuner"}, "runner='FlinkRuner'"),
        ({"runner": "FlinkRunner", "setup_file": "no/such/setup.py"}, "setup_file"),
        ({"runner": "FlinkRunner", "setup_file": str(REPO / "README.md")}, "setup_file"),
        ({"setup_file": str(SETUP_PY)}, "cluster runners only"),
        ({"runner": "SparkRunner", "sdk_container_image": "has space:1"}, "sdk_container_image"),
        ({"runner": "SparkRunner", "extra_packages": ["nowhere.whl"]}, "extra_packages"),
        ({"runner": "SparkRunner", "extra_packages": "one.whl"}, "extra_packages"),
        ({"runner": "SparkRunner", "extra_args": ["--setup_file=setup.py"]}, "`setup_file`"),
        ({"runner": "SparkRunner", "extra_args": ["--extra_package=a.whl"]}, "`extra_packages`"),
    ],
)
def test_bad_cluster_settings_are_refused_naming_the_setting(kwargs, named):
    with pytest.raises(BeamRunnerSettingsError, match=re.escape(named)):
        BeamRunnerSettings(**kwargs)


def test_the_dagster_resource_carries_the_cluster_settings_from_the_environment(monkeypatch):
    env = {
        "CHURN_BEAM_RUNNER": "FlinkRunner",
        "CHURN_BEAM_SETUP_FILE": str(SETUP_PY),
        "CHURN_BEAM_SDK_CONTAINER_IMAGE": "registry.example.com/churn:0.1.0",
        "CHURN_BEAM_EXTRA_ARGS": "--flink_master=jm:8081 --parallelism=8",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # the same call the code location makes when it loads
    from churn_platform.definitions import resources_from_env

    resource = resources_from_env()["beam"].process_config_and_initialize()
    settings = resource.settings()
    assert (settings.runner, settings.setup_file) == ("FlinkRunner", str(SETUP_PY))
    assert settings.sdk_container_image == "registry.example.com/churn:0.1.0"
    options = settings.to_pipeline_options(S3_LAKE)
    assert options.view_as(FlinkRunnerOptions).parallelism == 8
    with pytest.raises(BeamRunnerSettingsError, match="CHURN_LAKE"):
        settings.to_pipeline_options("--lake=var/lake")

    assert resources_from_env({})["beam"].settings() == BeamRunnerSettings()
    with pytest.raises(BeamRunnerSettingsError, match="CHURN_BEAM_RUNNER"):
        BeamRunnerResource(runner="FancyRunner").settings()
    with pytest.raises(ValueError, match="CHURN_BEAM_EXTRA_ARGS"):
        BeamRunnerResource.from_env({"CHURN_BEAM_EXTRA_ARGS": "--flag='unclosed"})


# --- the whole chain on a URI lake --------------------------------------------------------------

CHAIN_END = datetime(2026, 10, 1, 12, tzinfo=UTC)
SCORED_AT = datetime(2026, 10, 2, tzinfo=UTC)


def run_chain(lake: Lake, settings, topic: str) -> dict:
    """Extract → Beam features and labels at 3 as-of dates → training set → model → scores."""
    from churn_platform.features.materialize import read_features
    from churn_platform.ingestion.extract import ExtractConfig, extract_topic
    from churn_platform.ml import registry
    from churn_platform.ml.labels import read_labels
    from churn_platform.ml.score import read_scores, score_table, write_scores
    from churn_platform.ml.train import TrainConfig, train_models
    from churn_platform.ml.training_set import (
        build_training_set,
        ensure_inputs,
        read_training_set,
        training_dates,
        write_training_set,
    )

    extracted = extract_topic(settings, lake, ExtractConfig(topic=topic))
    # 30 days apart: holdout, calibration and train dates, none purged by the 30-day horizon
    dates = training_dates(lake, cadence_days=30, count=3).dates
    assert len(dates) == 3
    computed = ensure_inputs(lake, dates, engine="beam", runner=BeamRunnerSettings())
    assert len(computed) == 6  # features and labels of each date, all made here
    write_training_set(lake, build_training_set(lake, dates))
    training = read_training_set(lake)
    trained = train_models(
        training.table,
        training.features,
        TrainConfig(holdout_dates=1, calibration_dates=1, importance_repeats=1),
    )
    version = "20261002T000000Z-chain"
    registry.save_model(
        lake,
        version,
        trained.candidate,
        features=trained.features,
        metrics=trained.metrics,
        gate={"passed": True, "reasons": []},
        training={"data_range": f"{dates[0]}..{dates[-1]}"},
        card="chain test",
        now=SCORED_AT,
    )
    registry.promote(lake, version, reason="chain test", now=SCORED_AT)
    champion = registry.load_champion(lake)
    latest = dates[-1]
    write_scores(
        lake,
        score_table(champion, read_features(lake, latest), latest, scored_at=SCORED_AT),
        latest,
    )
    return {
        "extracted_rows": extracted.rows,
        "features": {d: read_features(lake, d) for d in dates},
        "labels": {d: read_labels(lake, d).sort("customer_id") for d in dates},
        "training_set": training.table,
        "metrics": trained.metrics,
        "scores": read_scores(lake, latest),
    }


def test_the_whole_chain_on_an_s3_lake_equals_the_local_directory_run(
    kafka_settings, topic, tmp_path, s3_lake_root
):
    """Extract, Beam features, labels, training set, registry and scores on S3 (moto's
    server on loopback: fsspec's s3fs for files, delta-rs' object store for the tables)."""
    from churn_platform.events.simulator import SimulatorConfig, produce_simulation
    from churn_platform.features.materialize import feature_files

    produced = produce_simulation(
        kafka_settings,
        topic,
        SimulatorConfig(customers=400, days=130, seed=23, end=CHAIN_END),
        partitions=3,
    )
    uri_lake = Lake(s3_lake_root)
    local_lake = Lake(tmp_path / "lake")
    on_uri = run_chain(uri_lake, kafka_settings, topic)
    on_disk = run_chain(local_lake, kafka_settings, topic)
    latest = max(on_uri["features"])
    assert feature_files(uri_lake, latest) and uri_lake.exists("models/churn/champion.json")
    assert not uri_lake.is_local and uri_lake.uri.startswith("s3://")
    assert on_uri["extracted_rows"] == on_disk["extracted_rows"] == produced.events_valid_produced
    for as_of, table in on_uri["features"].items():
        assert table.height > 100
        assert_frame_equal(table, on_disk["features"][as_of])
        assert_frame_equal(on_uri["labels"][as_of], on_disk["labels"][as_of])
    assert_frame_equal(on_uri["training_set"], on_disk["training_set"])
    assert on_uri["metrics"] == on_disk["metrics"]
    assert on_uri["scores"].height == on_uri["features"][latest].height
    assert_frame_equal(on_uri["scores"], on_disk["scores"])

"""Which Beam runner the feature pipeline uses: settings → `PipelineOptions`.

Pure (no Dagster): the Dagster resource and the command line both build a
`BeamRunnerSettings` and call `to_pipeline_options()`.

Locally the pipeline runs on the Python DirectRunner's batch engine, the
FnApiRunner, which is named explicitly: in Beam 2.77 the runner *called*
"DirectRunner" first tries the Prism runner, which downloads a Go binary at
run time (which fails offline) and only then falls back. So
`runner="DirectRunner"` here means FnApiRunner, and Prism is refused.
`direct_running_mode`: `in_memory` runs in this process; `multi_processing`
starts `direct_num_workers` worker processes (everything shipped to them
pickles); `multi_threading` runs workers as threads. On 2 cores none was
faster than `in_memory` (benchmarks/results/features.json).

A cluster runner gets its own options through `extra_args`, passed to Beam
unchanged, for example::

    BeamRunnerSettings(
        runner="FlinkRunner",
        extra_args=["--flink_master=flink-jobmanager:8081", "--parallelism=4",
                    "--environment_type=DOCKER",
                    "--sdk_container_image=registry.example.com/churn-platform-beam:0.1.0"],
    )
    BeamRunnerSettings(
        runner="SparkRunner",
        extra_args=["--spark_master_url=spark://spark-master:7077",
                    "--environment_type=DOCKER",
                    "--sdk_container_image=registry.example.com/churn-platform-beam:0.1.0"],
    )
    BeamRunnerSettings(
        runner="DataflowRunner",
        extra_args=["--project=my-project", "--region=europe-west1",
                    "--temp_location=gs://my-bucket/tmp",
                    "--sdk_container_image=europe-docker.pkg.dev/my-project/beam/churn:0.1.0"],
    )

Workers there need this package installed (a container image or
`--setup_file`), and the lake root must be a URI they can reach (s3://, gs://).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, field

from apache_beam.options.pipeline_options import PipelineOptions

DIRECT_RUNNER = "DirectRunner"
# What "DirectRunner" runs here: the batch engine, without the Prism detour.
LOCAL_ENGINE = "FnApiRunner"
CLUSTER_RUNNERS = ("FlinkRunner", "SparkRunner", "DataflowRunner", "PortableRunner")
KNOWN_RUNNERS = (DIRECT_RUNNER, *CLUSTER_RUNNERS)
RUNNING_MODES = ("in_memory", "multi_threading", "multi_processing")
# Options this class owns; in extra_args they would silently override a setting.
_OWNED_FLAGS = ("--runner", "--direct_num_workers", "--direct_running_mode")


class BeamRunnerSettingsError(ValueError):
    """A runner setting is invalid; the message names the setting and what to use."""


@dataclass(frozen=True)
class BeamRunnerSettings:
    """The Beam runner and its options.

    `runner`: DirectRunner (local, the default), FlinkRunner, SparkRunner,
    DataflowRunner or PortableRunner. `direct_num_workers` and
    `direct_running_mode` apply to DirectRunner only. `extra_args` are Beam
    command-line options passed through as they are (cluster address,
    parallelism, project, region, temp location, container image, ...).
    """

    runner: str = DIRECT_RUNNER
    direct_num_workers: int = 1
    direct_running_mode: str = "in_memory"
    extra_args: tuple[str, ...] | list[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.runner.lower() in ("prismrunner", "prism"):
            raise BeamRunnerSettingsError(
                "runner=PrismRunner is not supported: Prism downloads its binary at run time, "
                "which fails on an offline machine; use runner=DirectRunner locally "
                f"or one of {', '.join(CLUSTER_RUNNERS)} on a cluster"
            )
        if self.runner not in KNOWN_RUNNERS:
            raise BeamRunnerSettingsError(
                f"runner={self.runner!r} is not a known runner; use one of "
                f"{', '.join(KNOWN_RUNNERS)} (names are case-sensitive)"
            )
        if (
            isinstance(self.direct_num_workers, bool)
            or not isinstance(self.direct_num_workers, int)
            or self.direct_num_workers < 0
        ):
            raise BeamRunnerSettingsError(
                f"direct_num_workers must be an integer >= 0 (0 = one per core), "
                f"got {self.direct_num_workers!r}"
            )
        if self.direct_running_mode not in RUNNING_MODES:
            raise BeamRunnerSettingsError(
                f"direct_running_mode={self.direct_running_mode!r} is not one of "
                f"{', '.join(RUNNING_MODES)}"
            )
        if isinstance(self.extra_args, str):
            raise BeamRunnerSettingsError(
                "extra_args must be a list of options such as ['--parallelism=4'], not one string"
            )
        for arg in self.extra_args:
            name = arg.split("=", 1)[0]
            if name in _OWNED_FLAGS:
                raise BeamRunnerSettingsError(
                    f"extra_args sets {name}: set the `{name[2:]}` setting instead, so the "
                    "runner is always chosen (and checked) in one place"
                )
        object.__setattr__(self, "extra_args", tuple(self.extra_args))

    @property
    def is_local(self) -> bool:
        return self.runner == DIRECT_RUNNER

    def to_args(self) -> list[str]:
        """These settings as Beam command-line options (the runner always explicit)."""
        if self.is_local:
            args = [
                f"--runner={LOCAL_ENGINE}",
                f"--direct_num_workers={self.direct_num_workers}",
                f"--direct_running_mode={self.direct_running_mode}",
            ]
        else:
            args = [f"--runner={self.runner}"]
        return args + list(self.extra_args)

    def to_pipeline_options(self, *more_args: str) -> PipelineOptions:
        """`PipelineOptions` for these settings (plus `more_args`, e.g. a pipeline's own)."""
        return PipelineOptions([*self.to_args(), *more_args])

    @classmethod
    def from_argv(cls, argv: Sequence[str] | None) -> BeamRunnerSettings:
        """Settings from command-line options (`--runner` defaults to DirectRunner).

        Options other than the three this class owns go to `extra_args`, for
        Beam and the pipeline's own options to parse.
        """
        parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        parser.add_argument("--runner", default=DIRECT_RUNNER)
        parser.add_argument("--direct_num_workers", type=int, default=1)
        parser.add_argument("--direct_running_mode", default="in_memory")
        known, rest = parser.parse_known_args(list(argv or []))
        return cls(
            runner=known.runner,
            direct_num_workers=known.direct_num_workers,
            direct_running_mode=known.direct_running_mode,
            extra_args=rest,
        )

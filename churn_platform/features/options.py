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

A cluster runner needs three things this machine does not: workers that have
this package installed, a lake those workers can reach, and the runner's own
address. The settings carry the first two as fields, checked before anything
is submitted; everything else goes through `extra_args` unchanged::

    BeamRunnerSettings(
        runner="FlinkRunner",
        setup_file="./setup.py",  # or sdk_container_image: an image with the package
        extra_args=["--flink_master=flink-jobmanager:8081", "--parallelism=4"],
    )
    BeamRunnerSettings(
        runner="SparkRunner",
        sdk_container_image="registry.example.com/churn-platform-beam:0.1.0",
        extra_args=["--spark_master_url=spark://spark-master:7077"],
    )
    BeamRunnerSettings(
        runner="DataflowRunner",
        sdk_container_image="europe-docker.pkg.dev/my-project/beam/churn:0.1.0",
        extra_args=["--project=my-project", "--region=europe-west1",
                    "--temp_location=gs://my-bucket/tmp"],
    )

`setup_file` makes Beam build this package's sdist at submission and every
worker install it; `extra_packages` ships more wheels or sdists the same way;
`sdk_container_image` names a worker image that has it installed already (the
fastest start, and the only way for workers without a package index). A
cluster runner with a lake on this machine's disk (a path, `file://` or
`memory://`) is refused: its workers run elsewhere and would not see it (set
CHURN_LAKE to s3://... or gs://...), unless `--environment_type=LOOPBACK`
runs the workers in this very process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fsspec.utils import get_protocol

DIRECT_RUNNER = "DirectRunner"
# What "DirectRunner" runs here: the batch engine, without the Prism detour.
LOCAL_ENGINE = "FnApiRunner"
CLUSTER_RUNNERS = ("FlinkRunner", "SparkRunner", "DataflowRunner", "PortableRunner")
KNOWN_RUNNERS = (DIRECT_RUNNER, *CLUSTER_RUNNERS)
RUNNING_MODES = ("in_memory", "multi_threading", "multi_processing")
# Options this class owns; in extra_args they would silently override a setting.
_OWNED_FLAGS = (
    "--runner",
    "--direct_num_workers",
    "--direct_running_mode",
    "--setup_file",
    "--sdk_container_image",
    "--extra_package",
    "--extra_packages",
)
# Lake roots that only this machine (or this process) can read.
LOCAL_LAKE_PROTOCOLS = ("file", "local", "memory")
# The feature pipeline's lake option (features.pipeline).
LAKE_FLAG = "--lake"
PACKAGE_SUFFIXES = (".whl", ".tar.gz", ".zip")

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions


# What Beam logs on import when its BigQuery clients (apitools) are not installed
BEAM_IMPORT_NOTE = "apitools not found"


class _DropBeamImportNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(BEAM_IMPORT_NOTE)


@contextlib.contextmanager
def quiet_beam_import() -> Iterator[None]:
    """Import Beam inside this block: without its note about cloud clients, and
    without the root handler that note would install.

    Beam logs it with `logging.warning()` on the root logger. With no handler
    there, that call runs `logging.basicConfig()`, which leaves a handler behind
    that prints every later warning of the process, from any library.
    """
    root = logging.getLogger()
    note = _DropBeamImportNote()
    spare = None if root.handlers else logging.NullHandler()
    root.addFilter(note)
    if spare is not None:
        root.addHandler(spare)
    try:
        yield
    finally:
        root.removeFilter(note)
        if spare is not None:
            root.removeHandler(spare)


class BeamRunnerSettingsError(ValueError):
    """A runner setting is invalid; the message names the setting and what to use."""


@dataclass(frozen=True)
class BeamRunnerSettings:
    """The Beam runner and its options.

    `runner`: DirectRunner (local, the default), FlinkRunner, SparkRunner,
    DataflowRunner or PortableRunner. `direct_num_workers` and
    `direct_running_mode` apply to DirectRunner only. `setup_file`,
    `extra_packages` and `sdk_container_image` (cluster runners only) put this
    package on the workers. `extra_args` are Beam command-line options passed
    through as they are (cluster address, parallelism, project, region, temp
    location, ...).
    """

    runner: str = DIRECT_RUNNER
    direct_num_workers: int = 1
    direct_running_mode: str = "in_memory"
    extra_args: tuple[str, ...] | list[str] = field(default_factory=tuple)
    setup_file: str | None = None
    sdk_container_image: str | None = None
    extra_packages: tuple[str, ...] | list[str] = field(default_factory=tuple)

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
                setting = "extra_packages" if name.startswith("--extra_package") else name[2:]
                raise BeamRunnerSettingsError(
                    f"extra_args sets {name}: set the `{setting}` setting instead, so it is "
                    "always chosen (and checked) in one place"
                )
        object.__setattr__(self, "extra_args", tuple(self.extra_args))
        self._check_worker_packages()

    def _check_worker_packages(self) -> None:
        if isinstance(self.extra_packages, str):
            raise BeamRunnerSettingsError(
                "extra_packages must be a list of wheel or sdist paths, not one string"
            )
        object.__setattr__(self, "extra_packages", tuple(self.extra_packages))
        given = [
            name
            for name in ("setup_file", "sdk_container_image", "extra_packages")
            if getattr(self, name)
        ]
        if given and self.is_local:
            raise BeamRunnerSettingsError(
                f"{', '.join(given)} applies to cluster runners only: runner=DirectRunner runs "
                "in this process, where the package is installed already; unset it or choose "
                f"one of {', '.join(CLUSTER_RUNNERS)}"
            )
        if self.setup_file is not None:
            if os.path.basename(self.setup_file) not in ("setup.py", "pyproject.toml"):
                raise BeamRunnerSettingsError(
                    f"setup_file={self.setup_file!r} must name a setup.py (the one at the top "
                    "of this repository: setup_file='./setup.py')"
                )
            if not os.path.isfile(self.setup_file):
                raise BeamRunnerSettingsError(
                    f"setup_file={self.setup_file!r} does not exist (working directory "
                    f"{os.getcwd()}): point it at the setup.py at the top of this repository"
                )
        if self.sdk_container_image is not None and (
            not self.sdk_container_image.strip()
            or any(c.isspace() for c in self.sdk_container_image)
        ):
            raise BeamRunnerSettingsError(
                f"sdk_container_image={self.sdk_container_image!r} is not an image reference "
                "such as registry.example.com/churn-platform-beam:0.1.0"
            )
        for package in self.extra_packages:
            if not package.endswith(PACKAGE_SUFFIXES) or not os.path.isfile(package):
                raise BeamRunnerSettingsError(
                    f"extra_packages: {package!r} is not an existing wheel or sdist "
                    f"({', '.join(PACKAGE_SUFFIXES)}); build one with "
                    "`python -m pip wheel --no-deps -w dist .`"
                )

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
            if self.setup_file:
                # absolute: Beam changes into the file's directory to build it
                args.append(f"--setup_file={os.path.abspath(self.setup_file)}")
            if self.sdk_container_image:
                args.append(f"--sdk_container_image={self.sdk_container_image}")
            args += [f"--extra_package={os.path.abspath(p)}" for p in self.extra_packages]
        return args + list(self.extra_args)

    @property
    def workers_share_this_process(self) -> bool:
        """True when the pipeline's workers run here: DirectRunner, or a LOOPBACK environment."""
        return self.is_local or _flag_value(self.extra_args, "--environment_type") == "LOOPBACK"

    def check_lake(self, lake_root: str) -> None:
        """Refuse a lake the runner's workers cannot reach (a path on this machine, memory://)."""
        if self.workers_share_this_process:
            return
        protocol = get_protocol(lake_root)
        if protocol in LOCAL_LAKE_PROTOCOLS:
            where = "this process's memory" if protocol == "memory" else "this machine's disk"
            raise BeamRunnerSettingsError(
                f"runner={self.runner} runs the feature pipeline on remote workers, which "
                f"cannot read the lake {lake_root!r} ({where}): set CHURN_LAKE (or --lake) to "
                "an object-store URI the workers can reach, such as s3://bucket/lake or "
                "gs://bucket/lake (fsspec; install s3fs or gcsfs)"
            )

    def to_pipeline_options(self, *more_args: str) -> PipelineOptions:
        """`PipelineOptions` for these settings (plus `more_args`, e.g. a pipeline's own).

        A `--lake` among the options (the last one, as argparse takes it) is
        checked against the runner first: see `check_lake`.
        """
        args = [*self.to_args(), *more_args]
        lake = _flag_value(args, LAKE_FLAG)
        if lake is not None:
            self.check_lake(lake)
        with quiet_beam_import():  # Beam only to run
            from apache_beam.options.pipeline_options import PipelineOptions

        return PipelineOptions(args)

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
        parser.add_argument("--setup_file", default=None)
        parser.add_argument("--sdk_container_image", default=None)
        parser.add_argument(
            "--extra_package", "--extra_packages", dest="extra_packages", action="append"
        )
        known, rest = parser.parse_known_args(list(argv or []))
        settings = cls(
            runner=known.runner,
            direct_num_workers=known.direct_num_workers,
            direct_running_mode=known.direct_running_mode,
            extra_args=rest,
            setup_file=known.setup_file,
            sdk_container_image=known.sdk_container_image,
            extra_packages=known.extra_packages or (),
        )
        if not settings.workers_share_this_process and _flag_value(rest, LAKE_FLAG) is None:
            # the pipeline's default lake is a local directory, which remote workers lack
            raise BeamRunnerSettingsError(
                f"runner={settings.runner} needs --lake: an object-store URI its workers can "
                "reach, such as s3://bucket/lake or gs://bucket/lake (the default lake is a "
                "directory on this machine; CHURN_LAKE sets it for Dagster runs)"
            )
        return settings


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    """The value of the last `flag` in `args` (`--flag=value` or `--flag value`), or None."""
    value = None
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(flag + "="):
            value = arg[len(flag) + 1 :]
    return value

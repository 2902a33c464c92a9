"""The Beam runner resource: which runner the feature pipeline uses, and its options.

Environment (read when the code location loads, never at import):

| variable | setting |
|---|---|
| `CHURN_BEAM_RUNNER` | runner: DirectRunner, FlinkRunner, SparkRunner, DataflowRunner, PortableRunner |
| `CHURN_BEAM_SETUP_FILE` | setup_file: this repository's setup.py, built and installed on every worker |
| `CHURN_BEAM_SDK_CONTAINER_IMAGE` | sdk_container_image: a worker image with the package installed |
| `CHURN_BEAM_EXTRA_ARGS` | extra_args, split like a shell line: `--flink_master=host:8081 --parallelism=4` |

A cluster runner also needs `CHURN_LAKE` to be an object-store URI its
workers can reach; a local lake is refused when the pipeline is built.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    from churn_platform.features.options import BeamRunnerSettings

# field → environment variable, for the string settings
ENV_VARS = {
    "runner": "CHURN_BEAM_RUNNER",
    "setup_file": "CHURN_BEAM_SETUP_FILE",
    "sdk_container_image": "CHURN_BEAM_SDK_CONTAINER_IMAGE",
}
EXTRA_ARGS_ENV = "CHURN_BEAM_EXTRA_ARGS"


class BeamRunnerResource(dg.ConfigurableResource):
    """Beam runner for the feature pipeline: DirectRunner here, Flink/Spark/Dataflow elsewhere."""

    runner: str = Field(default="DirectRunner", description="Beam runner name.")
    direct_num_workers: int = Field(
        default=1, description="DirectRunner workers (two were slower than one on 2 cores)."
    )
    direct_running_mode: str = Field(
        default="in_memory",
        description="DirectRunner mode: in_memory, multi_threading or multi_processing.",
    )
    extra_args: list[str] = Field(
        default_factory=list,
        description="More pipeline options, e.g. ['--flink_master=host:8081'].",
    )
    setup_file: str | None = Field(
        default=None,
        description="Cluster runners: this repository's setup.py; workers install the package.",
    )
    sdk_container_image: str | None = Field(
        default=None,
        description="Cluster runners: a worker image that has the package installed.",
    )
    extra_packages: list[str] = Field(
        default_factory=list,
        description="Cluster runners: more wheels or sdists to install on every worker.",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BeamRunnerResource:
        """A resource with every setting present in the environment (see the module docstring)."""
        environ = os.environ if environ is None else environ
        fields: dict[str, object] = {
            name: dg.EnvVar(env) for name, env in ENV_VARS.items() if environ.get(env)
        }
        if environ.get(EXTRA_ARGS_ENV):
            try:
                fields["extra_args"] = shlex.split(environ[EXTRA_ARGS_ENV])
            except ValueError as exc:
                raise ValueError(
                    f"{EXTRA_ARGS_ENV} is not a valid option line ({exc}): write it as a "
                    "shell would, e.g. '--flink_master=host:8081 --parallelism=4'"
                ) from exc
        return cls(**fields)

    def settings(self) -> BeamRunnerSettings:
        # imported here: Beam is heavy, and only feature runs need it
        from churn_platform.features.options import BeamRunnerSettings, BeamRunnerSettingsError

        try:
            return BeamRunnerSettings(
                runner=self.runner,
                direct_num_workers=self.direct_num_workers,
                direct_running_mode=self.direct_running_mode,
                extra_args=list(self.extra_args),
                setup_file=self.setup_file,
                sdk_container_image=self.sdk_container_image,
                extra_packages=list(self.extra_packages),
            )
        except BeamRunnerSettingsError as exc:
            where = ", ".join([*ENV_VARS.values(), EXTRA_ARGS_ENV])
            raise BeamRunnerSettingsError(
                f"resource 'beam': {exc} (set in its run config or through {where})"
            ) from exc

"""The Beam runner resource: which runner the feature pipeline uses, and its options."""

from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    from churn_platform.features.options import BeamRunnerSettings


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

    def settings(self) -> "BeamRunnerSettings":
        # imported here: Beam is heavy, and only feature runs need it
        from churn_platform.features.options import BeamRunnerSettings

        return BeamRunnerSettings(
            runner=self.runner,
            direct_num_workers=self.direct_num_workers,
            direct_running_mode=self.direct_running_mode,
            extra_args=list(self.extra_args),
        )

"""The lake resource: the root every asset reads and writes (a path or an fsspec URI)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from churn_platform.lake.store import DEFAULT_LAKE_ROOT, Lake


class LakeResource(dg.ConfigurableResource):
    """The lake root (`CHURN_LAKE`): a local directory or an fsspec URI such as s3://bucket/lake."""

    root: str = DEFAULT_LAKE_ROOT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LakeResource:
        environ = os.environ if environ is None else environ
        if environ.get("CHURN_LAKE"):
            return cls(root=dg.EnvVar("CHURN_LAKE"))
        return cls()

    def lake(self) -> Lake:
        return Lake(self.root)

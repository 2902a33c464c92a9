"""The drift resource: when feature drift counts as too much, and how often it may retrain.

`CHURN_DRIFT_PSI_THRESHOLD` (default 0.25) and `CHURN_DRIFT_RETRAIN_COOLDOWN_HOURS`
(default 6) are read when definitions load; a value that is not a number in
range fails the load with a message naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg
from pydantic import Field

from churn_platform.defs.resources.env import env_number
from churn_platform.ml.drift import DEFAULT_BINS, DEFAULT_PSI_THRESHOLD

THRESHOLD_ENV = "CHURN_DRIFT_PSI_THRESHOLD"
COOLDOWN_ENV = "CHURN_DRIFT_RETRAIN_COOLDOWN_HOURS"
DEFAULT_COOLDOWN_HOURS = 6.0


class DriftResource(dg.ConfigurableResource):
    """Drift settings shared by `feature_drift`, its check and `drift_retraining_sensor`."""

    psi_threshold: float = Field(
        default=DEFAULT_PSI_THRESHOLD,
        gt=0,
        description="Largest PSI of any feature that still counts as no drift; above it the "
        "drift_below_threshold check fails and drift_retraining_sensor requests training.",
    )
    retrain_cooldown_hours: float = Field(
        default=DEFAULT_COOLDOWN_HOURS,
        ge=0,
        description="No drift-triggered training within this many hours of the last "
        "training_job run, whoever started it: a feature that keeps drifting (tenure grows "
        "with time) would otherwise retrain after every new champion.",
    )
    bins: int = Field(
        default=DEFAULT_BINS, ge=2, le=100, description="Quantile bins per numeric feature."
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DriftResource:
        """Settings from the environment when set (read when definitions load)."""
        environ = os.environ if environ is None else environ
        fields: dict[str, float] = {}
        for name, env, zero_ok, example in (
            ("psi_threshold", THRESHOLD_ENV, False, "0.1 (moderate) or 0.25 (the default)"),
            ("retrain_cooldown_hours", COOLDOWN_ENV, True, "6 (the default), 24 or 0 (none)"),
        ):
            value = env_number(
                environ,
                env,
                (lambda v: v >= 0) if zero_ok else (lambda v: v > 0),
                "a number >= 0" if zero_ok else "a positive number",
                example,
            )
            if value is not None:
                fields[name] = value
        return cls(**fields)

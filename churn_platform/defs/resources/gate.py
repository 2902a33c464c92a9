"""The gate resource: the promotion gate's settings that an operator sets for every run.

`CHURN_MIN_ROC_AUC` (an absolute floor; unset: none, the gate judges against
what the holdout allows) and `CHURN_GATE_CONFIDENCE` (default 0.95) are read
when definitions load; `churn_model`'s run config can still set a floor for
one run. A bad value fails the load naming the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg
from pydantic import Field

from churn_platform.defs.resources.env import env_number
from churn_platform.ml.gate import CONFIDENCE_ENV, DEFAULT_CONFIDENCE, MIN_ROC_AUC_ENV


class GateResource(dg.ConfigurableResource):
    """Promotion-gate settings shared by every training run (see `churn_platform.ml.gate`)."""

    min_roc_auc: float | None = Field(
        default=None,
        description="An absolute holdout ROC AUC floor; None: no floor (the default).",
    )
    confidence: float = Field(
        default=DEFAULT_CONFIDENCE,
        ge=0.5,
        lt=1.0,
        description="One-sided confidence of the bounds the gate compares.",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GateResource:
        environ = os.environ if environ is None else environ
        fields: dict[str, float] = {}
        for name, env, low, high, example in (
            ("min_roc_auc", MIN_ROC_AUC_ENV, 0.5, 1.0, "0.7"),
            ("confidence", CONFIDENCE_ENV, 0.5, 0.999, "0.95 (the default) or 0.9"),
        ):
            value = env_number(
                environ,
                env,
                lambda v, low=low, high=high: low <= v <= high,
                f"a number in [{low}, {high}]",
                example,
            )
            if value is not None:
                fields[name] = value
        return cls(**fields)

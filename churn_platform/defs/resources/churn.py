"""The churn resource: what churn means for this business (`features.churn`).

`CHURN_DEFINITION` (cancellation | inactivity), `CHURN_HORIZON_DAYS` (default
30 for cancellation, 90 for inactivity) and `CHURN_QUALIFYING_EVENTS`
(inactivity: the event types that count as activity) are read when
definitions load; a bad value fails the load naming the variable. The feature,
label and training assets all take it, so one definition decides who is
active and who churned.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg
from pydantic import Field

from churn_platform.features.churn import (
    DEFAULT_CANCELLATION_HORIZON_DAYS,
    MAX_HORIZON_DAYS,
    ChurnDefinition,
    definition_from_env,
)


class ChurnDefinitionResource(dg.ConfigurableResource):
    """Churn as the business defines it: an explicit cancellation, or inactivity for N days."""

    definition: str = Field(
        default="cancellation",
        description="'cancellation' (a subscription_cancelled within the horizon) or "
        "'inactivity' (no qualifying activity within the horizon).",
    )
    horizon_days: int = Field(
        default=DEFAULT_CANCELLATION_HORIZON_DAYS,
        ge=1,
        le=MAX_HORIZON_DAYS,
        description="Days after the as-of date in which churn is judged (inactivity: N).",
    )
    qualifying_event_types: list[str] = Field(
        default_factory=list,
        description="Inactivity only: event types that count as activity (empty: all).",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ChurnDefinitionResource:
        churn = definition_from_env(os.environ if environ is None else environ)
        return cls.from_definition(churn)

    @classmethod
    def from_definition(cls, churn: ChurnDefinition) -> ChurnDefinitionResource:
        return cls(
            definition=churn.kind,
            horizon_days=churn.horizon_days,
            qualifying_event_types=list(churn.qualifying_types),
        )

    def churn(self) -> ChurnDefinition:
        return ChurnDefinition(
            self.definition,  # type: ignore[arg-type]
            self.horizon_days,
            tuple(self.qualifying_event_types),
        )

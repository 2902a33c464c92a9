"""What churn means for this business: the one definition labels, features and scoring share.

Two definitions, chosen by the business (environment `CHURN_DEFINITION`):

- **cancellation** (default): a customer is active at the end of as-of date d
  while its latest lifecycle event is a start or a change (customers with no
  lifecycle events at all: while they had activity in the last
  `RECENT_ACTIVITY_DAYS`); it churned if a `subscription_cancelled` falls in
  (d, d + horizon]. For subscription businesses.
- **inactivity**: a customer is active at d if it had qualifying activity in
  the `horizon_days` (N) up to d, and churned if it has none in (d, d + N].
  For businesses without subscriptions (retail, apps, marketplaces). Which
  event types qualify is a setting (`CHURN_QUALIFYING_EVENTS`; default every
  activity type: anything but the lifecycle types).

Both are point in time: the active set of d reads nothing after the end of d,
the label of d nothing outside (d, d + horizon]. The definition is recorded
with every feature table, label table, training set and model, so a table
computed under one definition is never mixed with another's.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from churn_platform.events.contract import EVENT_TYPE_RE, LIFECYCLE_EVENT_TYPES

ChurnKind = Literal["cancellation", "inactivity"]
KINDS: tuple[ChurnKind, ...] = ("cancellation", "inactivity")
DEFAULT_CANCELLATION_HORIZON_DAYS = 30
DEFAULT_INACTIVITY_DAYS = 90
MAX_HORIZON_DAYS = 365
# customers without lifecycle events count as active under the cancellation
# definition while they did something in this many days up to d
RECENT_ACTIVITY_DAYS = 90

DEFINITION_ENV = "CHURN_DEFINITION"
HORIZON_ENV = "CHURN_HORIZON_DAYS"
QUALIFYING_ENV = "CHURN_QUALIFYING_EVENTS"


class ChurnDefinitionError(ValueError):
    """A churn-definition setting is invalid; the message names the setting and the fix."""


@dataclass(frozen=True)
class ChurnDefinition:
    """Who is active at an as-of date, and who churned in the horizon after it."""

    kind: ChurnKind = "cancellation"
    horizon_days: int = DEFAULT_CANCELLATION_HORIZON_DAYS
    # inactivity only: event types that count as activity (empty: every activity type)
    qualifying_types: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ChurnDefinitionError(
                f"churn definition {self.kind!r} is unknown: use 'cancellation' or 'inactivity'"
            )
        if isinstance(self.horizon_days, bool) or not isinstance(self.horizon_days, int):
            raise ChurnDefinitionError(
                f"horizon_days must be a whole number of days, not {self.horizon_days!r}"
            )
        if not 1 <= self.horizon_days <= MAX_HORIZON_DAYS:
            raise ChurnDefinitionError(
                f"horizon_days must be between 1 and {MAX_HORIZON_DAYS} (got {self.horizon_days})"
            )
        if self.qualifying_types and self.kind != "inactivity":
            raise ChurnDefinitionError(
                "qualifying event types apply to the inactivity definition only "
                f"({QUALIFYING_ENV} needs {DEFINITION_ENV}=inactivity)"
            )
        for name in self.qualifying_types:
            if not EVENT_TYPE_RE.match(name):
                raise ChurnDefinitionError(
                    f"qualifying event type {name!r} is not an event type (lowercase letters, "
                    "digits and '_', starting with a letter)"
                )
            if name in LIFECYCLE_EVENT_TYPES:
                raise ChurnDefinitionError(
                    f"qualifying event type {name!r} is a lifecycle event, not activity: "
                    "name the activity that shows a customer is still there"
                )
        if len(set(self.qualifying_types)) != len(self.qualifying_types):
            raise ChurnDefinitionError(f"qualifying event types repeat: {self.qualifying_types}")

    @property
    def is_inactivity(self) -> bool:
        return self.kind == "inactivity"

    def describe(self) -> str:
        """One line for people: the model card, the UI, the CLI."""
        if self.kind == "cancellation":
            return (
                f"cancellation: a subscription_cancelled within {self.horizon_days} days after "
                "the as-of date (customers active at its end)"
            )
        activity = " or ".join(self.qualifying_types) if self.qualifying_types else "activity"
        return (
            f"inactivity: no {activity} within {self.horizon_days} days after the as-of date "
            f"(customers with {activity} in the {self.horizon_days} days up to it)"
        )

    def key(self) -> str:
        """A short stable text that tells two definitions apart (stored beside labels)."""
        text = f"{self.kind}:{self.horizon_days}"
        return text + (":" + ",".join(self.qualifying_types) if self.qualifying_types else "")

    def same_population(self, other: ChurnDefinition) -> bool:
        """Whether both choose the same active customers at a date (a feature table's rows).

        The cancellation horizon only decides labels; an inactivity definition's N
        and qualifying types decide who is active too.
        """
        if self.kind != other.kind:
            return False
        return self.kind == "cancellation" or self == other

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "horizon_days": self.horizon_days,
            "qualifying_types": list(self.qualifying_types),
        }

    @classmethod
    def from_dict(cls, body: Mapping | None) -> ChurnDefinition:
        """The definition a table or model recorded (none recorded: the default)."""
        if not body:
            return CANCELLATION
        return cls(
            kind=body["kind"],
            horizon_days=int(body["horizon_days"]),
            qualifying_types=tuple(body.get("qualifying_types") or ()),
        )


CANCELLATION = ChurnDefinition()


def definition_from_env(environ: Mapping[str, str] | None = None) -> ChurnDefinition:
    """The definition the environment sets; errors name the variable and the fix."""
    environ = os.environ if environ is None else environ
    kind = (environ.get(DEFINITION_ENV) or "cancellation").strip().lower()
    if kind not in KINDS:
        raise ChurnDefinitionError(
            f"{DEFINITION_ENV}={environ.get(DEFINITION_ENV)!r} is not a churn definition: set it "
            "to 'cancellation' (an explicit subscription_cancelled) or 'inactivity' (no "
            "qualifying activity for N days), or unset it"
        )
    default = (
        DEFAULT_CANCELLATION_HORIZON_DAYS if kind == "cancellation" else DEFAULT_INACTIVITY_DAYS
    )
    raw = (environ.get(HORIZON_ENV) or "").strip()
    try:
        horizon = int(raw) if raw else default
    except ValueError:
        raise ChurnDefinitionError(
            f"{HORIZON_ENV}={raw!r} is not a whole number of days: set it to 1..{MAX_HORIZON_DAYS} "
            f"or unset it (default {default} for {kind})"
        ) from None
    qualifying = tuple(
        t.strip() for t in re.split(r"[,\s]+", environ.get(QUALIFYING_ENV) or "") if t.strip()
    )
    try:
        return ChurnDefinition(kind, horizon, qualifying)  # type: ignore[arg-type]
    except ChurnDefinitionError as exc:
        setting = QUALIFYING_ENV if "qualifying" in str(exc) else HORIZON_ENV
        raise ChurnDefinitionError(f"{setting}: {exc}") from None

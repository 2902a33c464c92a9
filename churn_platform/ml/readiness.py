"""Can this lake support a churn model? What the events hold, judged before any long step.

A team's own data may lack what the definition of churn needs: activity-only
events under the cancellation definition never churn; subscription events
without activity give features nothing to describe; an inactivity definition
may name event types the data never holds. `profile` reads the committed raw
events' types and customers (two columns), and `problems` says, with the
numbers, what cannot work and which setting changes it. The `train` path and
the `training_set` asset both ask before computing features for many dates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from churn_platform.events.contract import LIFECYCLE_EVENT_TYPES, SUBSCRIPTION_CANCELLED
from churn_platform.features.churn import ChurnDefinition
from churn_platform.features.inputs import read_files
from churn_platform.lake.raw import event_date_of, raw_files, raw_path
from churn_platform.lake.store import Lake


@dataclass(frozen=True)
class DataProfile:
    """Counts of the lake's committed events: per type, customers, the dates they span."""

    events: int
    customers: int
    by_type: dict[str, int] = field(default_factory=dict)
    first_date: date | None = None
    last_date: date | None = None

    @property
    def activity_types(self) -> dict[str, int]:
        return {t: n for t, n in self.by_type.items() if t not in LIFECYCLE_EVENT_TYPES}

    @property
    def lifecycle(self) -> dict[str, int]:
        return {t: n for t, n in self.by_type.items() if t in LIFECYCLE_EVENT_TYPES}

    def describe(self) -> str:
        types = ", ".join(
            f"{t} {n:,}" for t, n in sorted(self.by_type.items(), key=lambda x: -x[1])
        )
        span = f"{self.first_date}..{self.last_date}" if self.first_date else "no dates"
        return f"{self.events:,} events of {self.customers:,} customers, {span} ({types})"


def profile(lake: Lake) -> DataProfile:
    """Counts over the committed raw events (reads event_type and customer_id only)."""
    paths = [raw_path(f) for f in raw_files(lake)]
    days = [d for p in paths if (d := event_date_of(p)) is not None]
    if not paths:
        return DataProfile(events=0, customers=0)
    # one scan where the lake allows it; else file by file, which names a damaged file
    table = read_files(lake, paths, [False] * len(paths), ["customer_id", "event_type"])
    return DataProfile(
        events=table.height,
        customers=table["customer_id"].n_unique(),
        by_type=dict(table.group_by("event_type").len().sort("event_type").iter_rows()),
        first_date=min(days) if days else None,
        last_date=max(days) if days else None,
    )


def problems(data: DataProfile, churn: ChurnDefinition) -> list[str]:
    """Why a model cannot be trained on this data under `churn` (empty: nothing stops it)."""
    found = []
    if data.events == 0:
        return ["the lake holds no committed events: replay or produce events, then extract"]
    if not data.activity_types:
        lifecycle = ", ".join(f"{t} {n:,}" for t, n in data.lifecycle.items())
        found.append(
            f"no activity types at all: the {data.events:,} events are subscription events "
            f"only ({lifecycle}); features describe activity (logins, purchases, sessions, ...): "
            "replay the activity log too (replay EVENTS --subscriptions-file SUBSCRIPTIONS)"
        )
    if churn.is_inactivity:
        if churn.qualifying_types:
            present = [t for t in churn.qualifying_types if data.by_type.get(t)]
            if not present:
                types = ", ".join(sorted(data.activity_types)) or "none"
                found.append(
                    f"CHURN_QUALIFYING_EVENTS names {', '.join(churn.qualifying_types)}, which "
                    f"the events never hold (activity types: {types}): name the types that "
                    "show a customer is still there, or unset it (any activity)"
                )
    elif not data.by_type.get(SUBSCRIPTION_CANCELLED):
        subscribed = data.by_type.get("subscription_started", 0)
        held = (
            f"{subscribed:,} subscription_started and no subscription_cancelled"
            if subscribed
            else "no subscription events at all"
        )
        found.append(
            f"no churn at all under the cancellation definition: the {data.events:,} events "
            f"hold {held}, so no customer ever churns. For a business without subscriptions "
            "set CHURN_DEFINITION=inactivity (churn = no activity for CHURN_HORIZON_DAYS, "
            "default 90); with subscriptions, replay the table with end dates "
            "(replay EVENTS --subscriptions-file SUBSCRIPTIONS --end-column ...)"
        )
    return found

"""The pure feature definitions on hand-built events, value by value."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest

from churn_platform.features.definitions import (
    EVENT_SCHEMA,
    FeatureSpec,
    compute_features,
    discover_spec,
    merge_specs,
)

AS_OF = date(2026, 10, 31)
NOON = datetime(2026, 10, 31, 12, tzinfo=UTC)  # midday of the as-of date


def ev(customer, event_type, days_ago, value=None, event_id=None, **attributes):
    """An event at midday `days_ago` days before AS_OF (negative: after it)."""
    ev.n += 1
    return {
        "event_id": event_id or f"e{ev.n}",
        "customer_id": customer,
        "event_type": event_type,
        "ts": NOON - timedelta(days=days_ago),
        "value": value,
        "attributes": json.dumps(attributes) if attributes else None,
    }


ev.n = 0


def frame(rows):
    return pl.DataFrame(
        rows,
        schema=EVENT_SCHEMA,
    )


def one(features, customer):
    rows = features.filter(pl.col("customer_id") == customer).to_dicts()
    assert len(rows) == 1, f"{customer} not exactly once in {features['customer_id'].to_list()}"
    return rows[0]


@pytest.fixture
def events():
    return frame(
        [
            ev("a", "subscription_started", 200, plan="basic", mrr=10),
            ev("a", "subscription_changed", 50, plan="pro", mrr=49.5),
            ev("a", "login", 0.4),  # early on the as-of date
            ev("a", "login", 3),
            ev("a", "login", 20),
            ev("a", "login", 60),
            ev("a", "purchase", 10, value=20.0),
            ev("a", "purchase", 15, value=30.0),
            ev("a", "purchase", 40, value=100.0),  # outside 28 days
            ev("a", "login", 0.2, event_id="dup"),
            ev("a", "login", 0.2, event_id="dup"),  # a producer retry: counts once
            ev("a", "login", -0.6),  # after the as-of date: never seen
            ev("b", "subscription_started", 30, plan="basic", mrr=10),
            ev("b", "subscription_cancelled", 5),  # cancelled before d: not active
            ev("b", "login", 6),
            ev("c", "login", 2),  # no lifecycle events, active through activity
            ev("c", "login", 40),
            ev("d", "login", 120),  # no lifecycle, nothing in 90 days: not active
            ev("e", "subscription_started", -1, plan="pro", mrr=49),  # starts after d
        ]
    )


def test_values_of_one_customer(events):
    features = compute_features(events, AS_OF)
    a = one(features, "a")
    assert a["as_of"] == AS_OF
    assert (a["login_count_7d"], a["login_count_28d"], a["login_count_90d"]) == (3, 4, 5)
    assert a["login_days_since_last"] == 0
    assert a["purchase_count_28d"] == 2 and a["purchase_count_90d"] == 3
    assert a["purchase_value_sum_28d"] == 50.0 and a["purchase_value_mean_28d"] == 25.0
    assert a["purchase_days_since_last"] == 10
    assert a["events_28d"] == 6 and a["active_days_28d"] == 5
    # 6 activity events in the last 28 days, 1 (the purchase 40 days ago) in the 28 before
    assert a["trend_28d"] == pytest.approx((6 + 1) / (1 + 1))
    assert a["tenure_days"] == 200
    assert (a["plan"], a["mrr"], a["plan_changes"]) == ("pro", 49.5, 1)
    assert a["days_since_subscription_change"] == 50
    assert a["days_since_last_event"] == 0


def test_who_is_active(events):
    customers = compute_features(events, AS_OF)["customer_id"].to_list()
    assert customers == ["a", "c"]
    c = one(compute_features(events, AS_OF), "c")
    assert (c["plan"], c["mrr"], c["plan_changes"]) == ("unknown", 0.0, 0)
    assert c["tenure_days"] == 40  # first event seen
    assert c["days_since_subscription_change"] is None


def test_types_are_discovered_and_columns_stable(events):
    spec = discover_spec(events, AS_OF)
    assert spec.activity_types == ("login", "purchase")
    assert spec.valued_types == ("purchase",)
    features = compute_features(events, AS_OF)
    assert features.columns == ["customer_id", "as_of", *spec.columns()]
    wider = merge_specs([spec, FeatureSpec(("page_view",), ("page_view",))])
    assert "page_view_value_sum_28d" in compute_features(events, AS_OF, wider).columns
    assert FeatureSpec.from_dict(spec.to_dict()) == spec


def test_nothing_after_the_as_of_date_changes_anything(events):
    before = compute_features(events, AS_OF)
    later = frame(
        [
            ev("a", "login", -0.6),
            ev("a", "subscription_cancelled", -2),
            ev("c", "subscription_started", -3, plan="pro", mrr=99),
            ev("f", "subscription_started", -1, plan="pro", mrr=99),
            ev("a", "purchase", -5, value=1e6),
        ]
    )
    after = compute_features(pl.concat([events, later]), AS_OF)
    assert after.equals(before)


def test_each_customer_depends_only_on_its_own_events(events):
    whole = compute_features(events, AS_OF)
    spec = discover_spec(events, AS_OF)
    parts = [
        compute_features(events.filter(pl.col("customer_id").is_in(group)), AS_OF, spec)
        for group in (["a", "d"], ["b", "c", "e"])
    ]
    assert pl.concat(parts).sort("customer_id").equals(whole)


def test_no_events_gives_an_empty_table_with_the_schema():
    empty = frame([])
    features = compute_features(empty, AS_OF)
    assert features.height == 0
    assert features.columns[:2] == ["customer_id", "as_of"]

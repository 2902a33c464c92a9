"""Churn as the business defines it: who is active and who churned, under both definitions.

Each rule at its edges on hand-built events, then point in time on a
simulated lake under the inactivity definition: the active set and the
labels recomputed from raw events cut at the as-of instant equal what the
engines wrote, and a purchase right after d flips the label, never a feature.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from churn_platform.features.churn import (
    CANCELLATION,
    ChurnDefinition,
    ChurnDefinitionError,
    definition_from_env,
)
from churn_platform.features.definitions import EVENT_SCHEMA, as_of_end, compute_features
from churn_platform.features.materialize import (
    active_customers,
    materialize_features,
    read_feature_churn,
    read_features,
)
from churn_platform.lake.raw import read_raw_events
from churn_platform.lake.store import Lake
from churn_platform.ml.labels import compute_labels, materialize_labels, read_labels
from churn_platform.ml.training_set import build_training_set, ensure_inputs
from churn_platform.testing.lakes import event, events_frame, write_events

D = date(2025, 6, 30)
END = as_of_end(D)
MS = timedelta(milliseconds=1)


def at(offset: timedelta) -> datetime:
    return END + offset


def frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


def row(event_id, customer, event_type, ts, **attributes) -> dict:
    return {
        "event_id": event_id,
        "customer_id": customer,
        "event_type": event_type,
        "ts": ts,
        "value": None,
        "attributes": json.dumps(attributes) if attributes else None,
    }


INACTIVE_90 = ChurnDefinition("inactivity", 90)
PURCHASES_30 = ChurnDefinition("inactivity", 30, ("purchase",))


# --- the definition itself ------------------------------------------------------------


def test_settings_come_from_the_environment_and_bad_ones_name_the_variable():
    assert definition_from_env({}) == CANCELLATION
    assert definition_from_env({"CHURN_DEFINITION": "inactivity"}) == INACTIVE_90
    assert (
        definition_from_env(
            {
                "CHURN_DEFINITION": "Inactivity",
                "CHURN_HORIZON_DAYS": "30",
                "CHURN_QUALIFYING_EVENTS": "purchase",
            }
        )
        == PURCHASES_30
    )
    for environ, named in (
        ({"CHURN_DEFINITION": "dormancy"}, "CHURN_DEFINITION='dormancy'"),
        ({"CHURN_HORIZON_DAYS": "soon"}, "CHURN_HORIZON_DAYS='soon'"),
        ({"CHURN_HORIZON_DAYS": "0"}, "CHURN_HORIZON_DAYS: horizon_days must be between 1"),
        ({"CHURN_QUALIFYING_EVENTS": "purchase"}, "CHURN_QUALIFYING_EVENTS"),
        (
            {"CHURN_DEFINITION": "inactivity", "CHURN_QUALIFYING_EVENTS": "subscription_started"},
            "is a lifecycle event",
        ),
        ({"CHURN_DEFINITION": "inactivity", "CHURN_QUALIFYING_EVENTS": "Buy!"}, "'Buy!'"),
    ):
        with pytest.raises(ChurnDefinitionError, match=named.replace("(", r"\(")):
            definition_from_env(environ)
    assert "no purchase within 30 days" in PURCHASES_30.describe()
    assert PURCHASES_30.key() == "inactivity:30:purchase"
    assert ChurnDefinition.from_dict(PURCHASES_30.to_dict()) == PURCHASES_30
    assert ChurnDefinition.from_dict(None) == CANCELLATION
    # the cancellation horizon never changes who is active; inactivity's N does
    assert CANCELLATION.same_population(ChurnDefinition("cancellation", 60))
    assert not INACTIVE_90.same_population(ChurnDefinition("inactivity", 60))
    assert not INACTIVE_90.same_population(CANCELLATION)


# --- who is active at d ---------------------------------------------------------------


def population() -> pl.DataFrame:
    return frame(
        [
            # subscribed and quiet for 100 days: active under cancellation only
            row("s1", "sub_quiet", "subscription_started", at(-timedelta(days=200)), plan="pro"),
            row("s2", "sub_quiet", "login", at(-timedelta(days=100))),
            # bought exactly N days before the end of d: inside the window
            row("e1", "edge_in", "purchase", at(-timedelta(days=90))),
            # a millisecond earlier: outside
            row("e2", "edge_out", "purchase", at(-timedelta(days=90) - MS)),
            # only logins in the last 30 days: active unless only purchases qualify
            row("l1", "logins", "login", at(-timedelta(days=3))),
            # a purchase 20 days ago and a cancellation: inactivity ignores lifecycle
            row("p1", "cancelled_buyer", "purchase", at(-timedelta(days=20))),
            row("p2", "cancelled_buyer", "subscription_started", at(-timedelta(days=50))),
            row("p3", "cancelled_buyer", "subscription_cancelled", at(-timedelta(days=10))),
            # activity after d is never seen
            row("f1", "future", "purchase", at(timedelta(0))),
        ]
    )


def active(churn: ChurnDefinition) -> list[str]:
    return compute_features(population(), D, churn=churn)["customer_id"].to_list()


def test_who_is_active_under_each_definition():
    assert active(CANCELLATION) == ["edge_in", "logins", "sub_quiet"]
    assert active(INACTIVE_90) == ["cancelled_buyer", "edge_in", "logins"]
    assert active(ChurnDefinition("inactivity", 30)) == ["cancelled_buyer", "logins"]
    assert active(PURCHASES_30) == ["cancelled_buyer"]
    assert active(ChurnDefinition("inactivity", 120, ("purchase",))) == [
        "cancelled_buyer",
        "edge_in",
        "edge_out",
    ]


def test_the_check_recomputes_the_same_active_set_from_the_lake(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    write_events(lake, population(), partitions=2)
    for churn in (CANCELLATION, INACTIVE_90, PURCHASES_30):
        materialize_features(lake, D, engine="polars", churn=churn)
        assert read_feature_churn(lake, D) == churn
        table = read_features(lake, D)
        assert table["customer_id"].to_list() == active(churn)
        assert active_customers(lake, D, churn=churn).to_list() == active(churn)


# --- who churned ----------------------------------------------------------------------


def test_inactivity_labels_look_at_exactly_the_horizon_and_the_qualifying_types():
    customers = [
        "bought_at_end_of_d",
        "bought_first_instant",
        "bought_last_instant",
        "bought_day_after",
        "logged_in_only",
        "silent",
    ]
    horizon_end = as_of_end(D + timedelta(days=30))
    events = frame(
        [
            row("a", "bought_at_end_of_d", "purchase", END - MS),  # day d: the features' event
            row("b", "bought_first_instant", "purchase", END),
            row("c", "bought_last_instant", "purchase", horizon_end - MS),
            row("d", "bought_day_after", "purchase", horizon_end),
            row("e", "logged_in_only", "login", END + timedelta(days=3)),
        ]
    )
    churned = dict(
        compute_labels(customers, events, D, PURCHASES_30)
        .select("customer_id", "churned")
        .iter_rows()
    )
    assert churned == {
        "bought_at_end_of_d": True,
        "bought_first_instant": False,
        "bought_last_instant": False,
        "bought_day_after": True,
        "logged_in_only": True,  # a login does not count when only purchases qualify
        "silent": True,
    }
    any_activity = ChurnDefinition("inactivity", 30)
    labels = compute_labels(customers, events, D, any_activity)
    assert dict(labels.select("customer_id", "churned").iter_rows())["logged_in_only"] is False
    assert set(labels["churn_definition"]) == {"inactivity:30"}
    # lifecycle events are never activity
    cancelled = frame([row("x", "silent", "subscription_started", END + timedelta(days=1))])
    assert compute_labels(["silent"], cancelled, D, any_activity)["churned"].to_list() == [True]


# --- point in time on a simulated lake ------------------------------------------------


@pytest.fixture(scope="module")
def inactivity_lake(tmp_path_factory):
    """A simulated business labelled by inactivity: 60 days without a purchase."""
    from churn_platform.testing.lakes import simulated_lake

    lake = Lake(str(tmp_path_factory.mktemp("inactivity") / "lake"))
    end = datetime(2026, 3, 1, tzinfo=UTC)
    simulated_lake(lake, customers=300, days=200, end=end, seed=3)
    churn = ChurnDefinition("inactivity", 60, ("purchase",))
    dates = [date(2025, 11, 1), date(2025, 11, 15), date(2025, 12, 20)]
    ensure_inputs(lake, dates, churn, engine="polars")
    return lake, churn, dates


def test_inactivity_rows_equal_features_and_labels_recomputed_from_cut_events(inactivity_lake):
    lake, churn, dates = inactivity_lake
    raw = read_raw_events(lake)
    training = build_training_set(lake, dates, churn)
    assert training.churn == churn
    assert 0 < training.positives < training.rows
    for as_of in dates:
        before = raw.filter(pl.col("ts") < as_of_end(as_of))
        assert before.height < raw.height  # the cut removes something
        recomputed = compute_features(before, as_of, churn=churn)
        assert_frame_equal(read_features(lake, as_of), recomputed, check_column_order=False)
        horizon = raw.filter(pl.col("ts") < as_of_end(as_of + timedelta(days=churn.horizon_days)))
        labels = compute_labels(recomputed["customer_id"], horizon, as_of, churn)
        assert_frame_equal(read_labels(lake, as_of), labels)


def test_a_purchase_right_after_d_flips_the_label_and_never_a_feature(tmp_path):
    """Twins who last bought 10 days before d; one buys again at the first instant after d."""
    sets = {}
    for buys in (True, False):
        rows = [
            event("a-1", "a", "purchase", END - timedelta(days=10), value=20.0),
            event("b-1", "b", "purchase", END - timedelta(days=10), value=20.0),
            event("a-l", "a", "login", END - timedelta(days=2)),
            event("b-l", "b", "login", END - timedelta(days=2)),
            event("z-1", "z", "login", END + timedelta(days=31)),  # completes the horizon
        ]
        if buys:
            rows.append(event("a-2", "a", "purchase", END, value=5.0))
        lake = Lake(str(tmp_path / f"lake-{buys}"))
        write_events(lake, events_frame(rows), partitions=2)
        ensure_inputs(lake, [D], PURCHASES_30, engine="polars")
        sets[buys] = build_training_set(lake, [D], PURCHASES_30).table.sort("customer_id")
    with_purchase, without = sets[True], sets[False]
    assert with_purchase["customer_id"].to_list() == ["a", "b"]
    assert with_purchase["churned"].to_list() == [False, True]
    assert without["churned"].to_list() == [True, True]
    assert_frame_equal(with_purchase.drop("churned"), without.drop("churned"))
    features = with_purchase.drop("customer_id", "churned")
    assert features.row(0) == features.row(1)


def test_labels_of_another_definition_are_refused_and_recomputed(inactivity_lake, tmp_path):
    lake, churn, dates = inactivity_lake
    import shutil

    copy = Lake(str(tmp_path / "copy"))
    shutil.copytree(lake.uri, copy.uri)
    other = ChurnDefinition("inactivity", 60)  # same N, every activity type qualifies
    # the features hold other customers: computed again, then labelled again
    assert ensure_inputs(copy, dates[:1], other, engine="polars") == [
        f"customer_features {dates[0]}",
        f"churn_labels {dates[0]}",
    ]
    materialize_labels(copy, read_features(copy, dates[1])["customer_id"], dates[1], churn)
    from churn_platform.ml.training_set import TrainingSetError

    with pytest.raises(TrainingSetError, match="different churn definitions|hold the customers"):
        build_training_set(copy, dates[:2], other)

"""Churn labels: the horizon's edges, completeness of the lake, and the hand-built case."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from churn_platform.events.contract import SUBSCRIPTION_CANCELLED
from churn_platform.features.churn import CANCELLATION, ChurnDefinition
from churn_platform.features.definitions import as_of_end
from churn_platform.features.materialize import materialize_features, read_features
from churn_platform.lake import tables
from churn_platform.lake.store import Lake
from churn_platform.ml.labels import (
    LABEL_SCHEMA,
    NotYetLabelable,
    complete_through,
    compute_labels,
    ensure_labelable,
    materialize_labels,
    materialize_labels_range,
    read_cancellations,
    read_labels,
)
from churn_platform.testing.lakes import (
    HAND_BUILT_AS_OF,
    append_messages,
    cancelled,
    hand_built_lake,
    message,
    simulated_lake,
    started,
)


def tables_version(lake: Lake) -> int | None:
    table = tables.open_table(lake, tables.LABELS)
    return None if table is None else table.version()


D = date(2024, 3, 1)
MS = timedelta(milliseconds=1)


def cancellations(rows: list[tuple[str, object]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "customer_id": [c for c, _ in rows],
            "event_type": [SUBSCRIPTION_CANCELLED] * len(rows),
            "ts": [ts for _, ts in rows],
        },
        schema={"customer_id": pl.String, "event_type": pl.String, "ts": pl.Datetime("ms", "UTC")},
    )


def test_horizon_is_end_of_d_exclusive_to_end_of_d_plus_horizon_inclusive():
    horizon = 7
    start, end = as_of_end(D), as_of_end(D + timedelta(days=horizon))
    events = cancellations(
        [
            ("on_d", start - MS),  # still day d: the features see it
            ("first_instant", start),
            ("last_instant", end - MS),
            ("day_after", end),
            ("not_active", start + timedelta(hours=1)),
            ("twice", start + timedelta(days=1)),
            ("twice", start + timedelta(days=2)),
        ]
    )
    customers = ["on_d", "first_instant", "last_instant", "day_after", "twice", "stays"]
    labels = compute_labels(customers, events, D, horizon)

    assert dict(labels.schema) == LABEL_SCHEMA
    assert labels["customer_id"].to_list() == sorted(customers)
    assert dict(zip(labels["customer_id"], labels["churned"], strict=True)) == {
        "day_after": False,
        "first_instant": True,
        "last_instant": True,
        "on_d": False,
        "stays": False,
        "twice": True,
    }
    assert set(labels["as_of"]) == {D} and set(labels["horizon_days"]) == {horizon}


def test_other_event_types_never_count_and_no_customers_gives_an_empty_table():
    other = cancellations([("a", as_of_end(D))]).with_columns(
        pl.lit("subscription_changed").alias("event_type")
    )
    assert not compute_labels(["a"], other, D)["churned"].any()
    assert compute_labels([], other, D).is_empty()


def test_a_date_is_labelable_only_when_the_lake_covers_its_horizon():
    ensure_labelable(D, 30, D + timedelta(days=30))
    with pytest.raises(NotYetLabelable) as refused:
        ensure_labelable(D, 30, D + timedelta(days=29))
    message = str(refused.value)
    assert refused.value.labelable_from == date(2024, 4, 1)
    assert "2024-03-01" in message and "complete only through 2024-03-30" in message
    assert "labelable once the lake holds events dated 2024-04-01 or later" in message
    with pytest.raises(NotYetLabelable, match="holds no committed events"):
        ensure_labelable(D, 30, None)
    with pytest.raises(ValueError, match="at least 1"):
        ensure_labelable(D, 0, D + timedelta(days=100))


def test_the_lake_is_complete_through_the_day_before_its_latest_event_date(tmp_path):
    lake = hand_built_lake(Lake(tmp_path))
    assert complete_through(lake) == date(2024, 4, 9)


def test_only_cancellations_inside_the_horizon_are_read(tmp_path):
    lake = hand_built_lake(Lake(tmp_path))
    found = read_cancellations(lake, HAND_BUILT_AS_OF, 30)
    assert found["customer_id"].to_list() == ["c_churn"]
    assert read_cancellations(lake, HAND_BUILT_AS_OF, 31)["customer_id"].sort().to_list() == [
        "c_churn",
        "c_late",
    ]


def test_hand_built_case_end_to_end(tmp_path):
    lake = hand_built_lake(Lake(tmp_path))
    materialize_features(lake, HAND_BUILT_AS_OF, engine="polars")
    customers = read_features(lake, HAND_BUILT_AS_OF, columns=["customer_id"])["customer_id"]
    assert "c_gone" not in customers.to_list()  # cancelled on d: not active at d

    result = materialize_labels(lake, customers, HAND_BUILT_AS_OF, 30)
    labels = read_labels(lake, HAND_BUILT_AS_OF)
    assert dict(zip(labels["customer_id"], labels["churned"], strict=True)) == {
        "c_activity": False,
        "c_churn": True,
        "c_late": False,
        "c_quiet": False,
        "c_stay": False,
    }
    assert (result.rows, result.churned, result.complete_through) == (5, 1, date(2024, 4, 9))

    # a second run replaces the file: same rows, not twice as many
    materialize_labels(lake, customers, HAND_BUILT_AS_OF, 31)
    again = read_labels(lake, HAND_BUILT_AS_OF)
    assert again.height == 5 and set(again["horizon_days"]) == {31}
    assert again.filter(pl.col("churned"))["customer_id"].to_list() == ["c_churn", "c_late"]


def test_a_date_becomes_labelable_when_later_events_arrive(tmp_path):
    lake = hand_built_lake(Lake(tmp_path))
    late = HAND_BUILT_AS_OF + timedelta(days=14)
    with pytest.raises(NotYetLabelable) as refused:
        materialize_labels(lake, ["c_stay"], late, 30)
    assert refused.value.labelable_from == date(2024, 4, 15)

    day = as_of_end(date(2024, 4, 14))
    append_messages(
        lake, [message(started("c_new", day)), message(cancelled("c_stay", day - MS))], now=day
    )
    result = materialize_labels(lake, ["c_stay"], late, 30)
    assert result.churned == 1


@pytest.mark.parametrize(
    "churn",
    [CANCELLATION, ChurnDefinition("inactivity", 14)],
    ids=["cancellation", "inactivity"],
)
def test_many_dates_at_once_equal_one_date_at_a_time(tmp_path, churn):
    """materialize_labels_range reads every horizon's files once and writes what one run
    per date writes: the same labels, counts and refusals, a redelivered cancellation
    counted once."""
    end = datetime(2024, 6, 10, tzinfo=UTC)
    one, many = Lake(tmp_path / "one"), Lake(tmp_path / "many")
    for lake in (one, many):
        simulated_lake(lake, customers=120, days=90, seed=4, end=end)
    repeat = cancelled("c_repeat", datetime(2024, 5, 3, 10, tzinfo=UTC))
    for lake in (one, many):
        first = message(started("c_repeat", datetime(2024, 4, 1, tzinfo=UTC)))
        append_messages(lake, [first], now=end)
        for _ in range(2):  # redelivered: the same event in two files
            append_messages(lake, [message(repeat)], now=end)
    dates = [date(2024, 4, 20), date(2024, 4, 27), date(2024, 5, 1)]
    customers = {}
    for as_of in dates:
        materialize_features(one, as_of, engine="polars", churn=churn)
        customers[as_of] = read_features(one, as_of, columns=["customer_id"])["customer_id"]

    singly = [materialize_labels(one, customers[d], d, churn) for d in dates]
    together = materialize_labels_range(many, {d: customers[d] for d in reversed(dates)}, churn)

    assert [r.as_of for r in together] == dates
    for a, b in zip(singly, together, strict=True):
        assert (a.rows, a.churned, a.cancellations_read, a.complete_through) == (
            b.rows,
            b.churned,
            b.cancellations_read,
            b.complete_through,
        )
        assert_frame_equal(read_labels(one, a.as_of), read_labels(many, b.as_of))
    assert sum(r.churned for r in together) > 0
    if not churn.is_inactivity:
        labels = read_labels(many, date(2024, 5, 1))
        assert labels.filter(pl.col("customer_id") == "c_repeat")["churned"].to_list() == [True]

    too_late = complete_through(many)
    before = tables_version(many)
    with pytest.raises(NotYetLabelable):
        materialize_labels_range(many, {dates[0]: customers[dates[0]], too_late: ["c001"]}, churn)
    assert tables_version(many) == before  # refused before writing any date

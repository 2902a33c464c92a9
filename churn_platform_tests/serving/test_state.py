"""CustomerState: any customers' events, whatever tier and chunk they sit in."""

from __future__ import annotations

from datetime import UTC, date, datetime

import numpy as np
import polars as pl
import pytest

from churn_platform.features.customer import CustomerEvents
from churn_platform.features.definitions import EVENT_SCHEMA
from churn_platform.serving.state import CustomerState

T0 = int(datetime(2026, 6, 1, tzinfo=UTC).timestamp() * 1000)


def events(rng: np.random.Generator, n: int, first: int, customers: int = 200) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "event_id": [f"e{first + i}" for i in range(n)],
            "customer_id": [f"c{c}" for c in rng.integers(0, customers, n)],
            "event_type": ["login"] * n,
            "ts": [T0 + (first + i) * 60_000 for i in range(n)],
            "value": [None] * n,
            "attributes": [None] * n,
        },
        schema={**EVENT_SCHEMA, "ts": pl.Int64},
    )


@pytest.mark.parametrize(
    ("compact_rows", "batches", "largest"), [(2_000, 200, 60), (10**6, 400, 4)]
)
def test_frame_returns_exactly_the_customers_events_in_arrival_order(
    compact_rows, batches, largest
):
    """Through folds into the base and merges of the tail's chunks."""
    rng = np.random.default_rng(3)
    state = CustomerState(compact_rows=compact_rows)
    seen = [events(rng, 3_000, 0)]
    state.merge(_loaded(seen[0]))
    first = 3_000
    for i in range(batches):
        batch = events(rng, int(rng.integers(1, largest)), first)
        first += batch.height
        seen.append(batch)
        state.add_events(batch)
        if i % 50 == 49:
            everything = pl.concat(seen)
            for k in (1, 7, 60, 150, 230):  # few customers (gathered) and most (filtered)
                wanted = [f"c{c}" for c in rng.choice(230, k, replace=False)]
                got = state.frame(wanted, as_datetime=False)
                expected = everything.filter(pl.col("customer_id").is_in(wanted))
                assert got.sort("customer_id", maintain_order=True).equals(
                    expected.sort("customer_id", maintain_order=True)
                )
    assert state.events == first
    assert len(state) == 200
    frame = state.frame(["c1", "c2"])
    assert frame.schema == pl.Schema(EVENT_SCHEMA)


def test_rows_of_add_and_prune():
    state = CustomerState()
    state.add([("a", "c1", "login", T0, None, None), ("b", "c1", "session", T0 + 1, 3.0, None)])
    state.add([("c", "c2", "subscription_started", T0 - 400 * 86_400_000, None, '{"plan":"pro"}')])
    assert state.rows_of("c1") == [
        ("a", "c1", "login", T0, None, None),
        ("b", "c1", "session", T0 + 1, 3.0, None),
    ]
    assert state.frame(["nobody"]).height == 0
    # activity past the lookback goes, lifecycle events stay
    assert state.prune(date(2027, 7, 1)) == 2  # more than 365 days after T0
    assert [r[0] for r in state.rows_of("c2")] == ["c"]
    assert state.rows_of("c1") == []


def _loaded(frame: pl.DataFrame) -> CustomerState:
    state = CustomerState()
    state.add_frame(frame)
    return state


def _same_history(got: CustomerEvents, expected: CustomerEvents) -> None:
    n = expected.size
    assert got.size == n
    for name in ("_ts", "_code", "_value", "_id"):
        np.testing.assert_array_equal(getattr(got, name)[:n], getattr(expected, name)[:n])
    assert got.lifecycle == expected.lifecycle
    assert got.repeats == expected.repeats


def test_rows_added_one_by_one_and_as_frames_keep_frames_and_histories_exact():
    """The scorer's two paths into the state (`append_rows` for a few messages,
    `add_events` for many) in any order: every customer's frame and held history are
    what its events say, with lifecycle prices and a repeated id."""
    rng = np.random.default_rng(8)
    state = CustomerState(compact_rows=1_500, history_customers=150)
    seen = [events(rng, 2_000, 0)]
    retried = seen[0]["customer_id"][5]
    special = [retried]
    state.merge(_loaded(seen[0]))
    assert state.warm_histories() == 150  # the 150 customers with the latest events
    first = 2_000
    for i in range(120):
        batch = events(rng, int(rng.integers(1, 40)), first)
        if i == 30:  # a plan change, and a producer's retry of an earlier event
            batch = pl.concat([batch, seen[0].slice(5, 1)]).with_columns(
                pl.when(pl.int_range(pl.len()) == 0)
                .then(pl.lit("subscription_changed"))
                .otherwise(pl.col("event_type"))
                .alias("event_type"),
                pl.when(pl.int_range(pl.len()) == 0)
                .then(pl.lit('{"plan":"pro","mrr":49}'))
                .otherwise(pl.col("attributes"))
                .alias("attributes"),
            )
        first += batch.height
        seen.append(batch)
        if i == 30:
            special.append(batch["customer_id"][0])
        if i % 3:
            assert state.append_rows(list(batch.iter_rows())) == batch.height
        else:
            state.add_events(batch)
        if i % 20 == 19:
            everything = pl.concat(seen)
            for customer in [f"c{c}" for c in rng.choice(200, 25, replace=False)] + special:
                expected = everything.filter(pl.col("customer_id") == customer)
                assert state.frame([customer], as_datetime=False).equals(expected)
                _same_history(
                    state.history(customer), CustomerEvents.from_frame(state.frame([customer]))
                )
    assert state.history(retried).repeats
    assert state.history(special[1]).lifecycle[-1][3:] == ("subscription_changed", "pro", 49.0)
    assert state.events == first
    assert len(state._histories) <= 150

"""The scorer's per-customer features (`features.customer`) equal `compute_features`, row for row.

`compute_features` is the definition; `customer_features` evaluates it for one
customer from arrays. Every column must be the same value (floats bit for bit),
on the simulator and on real purchases no one here wrote (CDNOW, with cents),
under both churn definitions, other windows, repeated ids and events after the
as-of date.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from churn_platform.features.churn import ChurnDefinition
from churn_platform.features.customer import CustomerEvents, customer_features, customers_features
from churn_platform.features.definitions import (
    EVENT_COLUMNS,
    FeatureSpec,
    compute_features,
    discover_spec,
)
from churn_platform.lake.raw import read_raw_events
from churn_platform.lake.store import Lake
from churn_platform.testing.lakes import event, events_frame, simulated_lake
from churn_platform.testing.public_data import cdnow_master_path

END = datetime(2026, 3, 1, tzinfo=UTC)
DEFINITIONS = [
    ChurnDefinition(),
    ChurnDefinition(kind="inactivity", horizon_days=30),
    ChurnDefinition(kind="inactivity", horizon_days=90, qualifying_types=("purchase",)),
]


def _rows_equal(expected: dict | None, got: dict | None) -> list[str]:
    """The columns whose values differ (floats compared bit for bit)."""
    if expected is None or got is None:
        return [] if expected is got else ["<active>"]
    assert list(expected) == list(got)  # the table's column order
    bad = []
    for name, want in expected.items():
        have = got[name]
        if isinstance(want, float) and isinstance(have, float):
            if not (want == have or (math.isnan(want) and math.isnan(have))):
                bad.append(f"{name}: {want!r} != {have!r}")
        elif type(want) is not type(have) or want != have:
            bad.append(f"{name}: {want!r} != {have!r}")
    return bad


def _check(events: pl.DataFrame, customers, dates, spec, churn) -> int:
    """Compare both for each customer and date; returns how many rows were active."""
    by_customer = events.partition_by("customer_id", as_dict=True, maintain_order=True)
    active = 0
    for customer in customers:
        frame = by_customer[(customer,)].select(EVENT_COLUMNS)
        held = CustomerEvents.from_frame(frame)
        for as_of in dates:
            table = compute_features(frame, as_of, spec, churn)
            expected = table.to_dicts()[0] if table.height else None
            got = customer_features(held, customer, as_of, spec, churn)
            assert not _rows_equal(expected, got), (customer, as_of, _rows_equal(expected, got))
            active += expected is not None
    return active


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> pl.DataFrame:
    lake = Lake(str(tmp_path_factory.mktemp("lake")))
    simulated_lake(lake, customers=300, days=150, end=END, seed=11)
    return read_raw_events(lake).select(EVENT_COLUMNS)


@pytest.fixture(scope="module")
def cdnow() -> pl.DataFrame:
    """CDNOW's purchases as events: real amounts in cents, no lifecycle events."""
    rows = []
    with open(cdnow_master_path()) as lines:
        next(lines)
        for i, line in enumerate(lines):
            customer, day, _cds, amount = line.split()
            ts = datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC) + timedelta(minutes=i % 977)
            rows.append((f"cdnow-{i}", customer, "purchase", ts, float(amount), None))
    return pl.DataFrame(rows, schema=dict(zip(EVENT_COLUMNS, _SCHEMA, strict=True)), orient="row")


_SCHEMA = [pl.String, pl.String, pl.String, pl.Datetime("ms", "UTC"), pl.Float64, pl.String]


@pytest.mark.parametrize("churn", DEFINITIONS, ids=lambda c: c.key())
def test_simulated_customers_equal_compute_features(simulated, churn):
    rng = np.random.default_rng(5)
    latest = simulated["ts"].max().date()
    spec = discover_spec(simulated, latest)
    customers = rng.choice(simulated["customer_id"].unique().sort().to_list(), 80, replace=False)
    customers = customers.tolist()
    dates = [latest, latest - timedelta(days=3), latest - timedelta(days=40), date(2025, 10, 20)]
    active = _check(simulated, customers, dates, spec, churn)
    assert active > 40  # most rows were compared as rows, not as "inactive" on both sides


def test_other_windows_and_an_older_spec(simulated):
    """Windows 5/21/60 and 14; a spec that tracks fewer types than the data holds."""
    latest = simulated["ts"].max().date()
    customers = simulated["customer_id"].unique().sort().to_list()[:60]
    other = FeatureSpec(("login", "purchase", "session"), ("purchase", "session"), (5, 21, 60), 14)
    assert _check(simulated, customers, [latest, latest - timedelta(days=9)], other, DEFINITIONS[0])
    unseen = FeatureSpec(("login", "webinar"), ("webinar",), (7, 28, 90), 28)
    assert _check(simulated, customers[:20], [latest], unseen, DEFINITIONS[1])


@pytest.mark.parametrize("churn", DEFINITIONS[1:], ids=lambda c: c.key())
def test_cdnow_purchases_equal_compute_features(cdnow, churn):
    """Real amounts with cents: sums and means must be the same floats."""
    spec = discover_spec(cdnow, date(1998, 6, 30))
    counts = cdnow.group_by("customer_id").len().sort(["len", "customer_id"], descending=True)
    customers = counts["customer_id"].head(60).to_list() + counts["customer_id"].tail(20).to_list()
    dates = [date(1997, 3, 31), date(1997, 9, 30), date(1998, 6, 30)]
    assert _check(cdnow, customers, dates, spec, churn) > 60


def test_many_extend_and_append_equal_from_frame(simulated):
    customers = simulated["customer_id"].unique().sort().to_list()[:40]
    events = simulated.filter(pl.col("customer_id").is_in(customers))
    first, second = events.head(events.height // 2), events.tail(events.height - events.height // 2)
    held = CustomerEvents.many(first)
    for customer, more in CustomerEvents.many(second).items():
        if customer in held:
            held[customer].extend(more)
        else:
            held[customer] = more
    latest = simulated["ts"].max().date()
    spec = discover_spec(simulated, latest)
    for customer in customers:
        frame = events.filter(pl.col("customer_id") == customer)
        whole = CustomerEvents.from_frame(frame)
        appended = CustomerEvents(4)  # grows as events come
        for row in frame.iter_rows(named=True):
            price = (None, None)
            if row["event_type"].startswith("subscription"):
                ((price),) = [e[4:] for e in whole.lifecycle if e[2] == row["event_id"]]
            ts = int(row["ts"].timestamp() * 1000)
            appended.append(row["event_id"], row["event_type"], ts, row["value"], price)
        expected = customer_features(whole, customer, latest, spec)
        assert not _rows_equal(expected, customer_features(held[customer], customer, latest, spec))
        assert not _rows_equal(expected, customer_features(appended, customer, latest, spec))


def test_a_repeated_event_id_is_left_to_compute_features():
    ts = datetime(2026, 2, 1, 9, tzinfo=UTC)
    frame = events_frame([event("a", "c1", "login", ts), event("b", "c1", "login", ts)])
    held = CustomerEvents.from_frame(frame)
    assert not held.repeats
    held.append("a", "login", int(ts.timestamp() * 1000) + 5, None)  # a producer retry
    assert held.repeats
    with pytest.raises(ValueError, match="repeated event id"):
        customer_features(held, "c1", ts.date(), FeatureSpec(("login",), ()))
    assert CustomerEvents.many(pl.concat([frame, frame]))["c1"].repeats


@pytest.mark.parametrize("churn", DEFINITIONS[:2], ids=lambda c: c.key())
def test_many_customers_at_once_equal_one_at_a_time(simulated, churn):
    """A micro-batch: several customers, each as of its own date, in one call."""
    latest = simulated["ts"].max().date()
    spec = discover_spec(simulated, latest)
    customers = simulated["customer_id"].unique().sort().to_list()[:50]
    by_customer = simulated.partition_by("customer_id", as_dict=True)
    items = [
        (c, CustomerEvents.from_frame(by_customer[(c,)]), latest - timedelta(days=i % 9))
        for i, c in enumerate(customers)
    ]
    together = customers_features(items, spec, churn)
    for (customer, _, as_of), got in zip(items, together, strict=True):
        table = compute_features(by_customer[(customer,)], as_of, spec, churn)
        expected = table.to_dicts()[0] if table.height else None
        assert not _rows_equal(expected, got), (customer, _rows_equal(expected, got))
    assert sum(r is not None for r in together) > 20
    assert customers_features([], spec, churn) == []

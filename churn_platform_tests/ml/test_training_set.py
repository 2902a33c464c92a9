"""The training set: point in time, no label leakage, its dates, its inputs and its file."""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from churn_platform.events.contract import SUBSCRIPTION_CANCELLED
from churn_platform.features.churn import ChurnDefinition
from churn_platform.features.definitions import as_of_end, compute_features
from churn_platform.features.materialize import read_features
from churn_platform.lake import tables
from churn_platform.lake.raw import read_raw_events
from churn_platform.lake.store import Lake, LakeError
from churn_platform.ml.frame import KEY_COLUMNS, LABEL_COLUMN, model_input
from churn_platform.ml.labels import compute_labels, read_labels, write_labels
from churn_platform.ml.training_set import (
    SplitNeeds,
    TrainingSet,
    TrainingSetError,
    build_training_set,
    ensure_inputs,
    read_training_set,
    training_dates,
    write_training_set,
)
from churn_platform.testing.lakes import event, events_frame, write_events
from churn_platform_tests.ml.ml_lake import copy_lake

D = date(2024, 3, 1)


def at(day: date, hour: int = 9) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def started(event_id: str, customer: str, ts: datetime, plan: str = "pro", mrr: float = 49.0):
    attributes = json.dumps({"plan": plan, "mrr": mrr})
    return event(event_id, customer, "subscription_started", ts, attributes=attributes)


def lake_of(root: Path, rows: list[dict]) -> Lake:
    lake = Lake(str(root))
    write_events(lake, events_frame(rows), partitions=2)
    return lake


def drop_partition(lake: Lake, spec: tables.TableSpec, as_of: date) -> None:
    """A commit that empties the `as_of` partition (as if it was never materialized)."""
    nothing = pa.table({"customer_id": pa.array([], pa.string())})
    tables.write(lake, spec, nothing, replace={"as_of": as_of})


def rows_of(training: TrainingSet, as_of: date) -> pl.DataFrame:
    return training.table.filter(pl.col("as_of") == as_of).sort("customer_id")


@pytest.fixture(scope="module")
def training(ml_lake) -> TrainingSet:
    return build_training_set(ml_lake.lake, ml_lake.dates.dates)


# --- point in time ------------------------------------------------------------------


def test_training_set_has_every_active_customer_of_every_date_once(ml_lake, training):
    """One row per (customer, date), exactly the feature tables' customers, every date present."""
    assert training.dates == ml_lake.dates.dates and len(training.dates) == 12
    assert training.table.select(KEY_COLUMNS).is_duplicated().sum() == 0
    per_date = training.per_date()
    assert per_date["as_of"].to_list() == training.dates
    for as_of, rows in per_date.select("as_of", "rows").iter_rows():
        assert rows == read_features(ml_lake.lake, as_of, columns=["customer_id"]).height
    assert 0 < training.positives < training.rows
    assert training.table.columns == [*KEY_COLUMNS, *training.features, LABEL_COLUMN]


def test_rows_equal_features_recomputed_from_events_before_the_as_of_end(ml_lake, training):
    """Rows of d are exactly the features of the raw events with ts < end of d (and their labels
    exactly the cancellations in the horizon): no row uses an event after its as-of date."""
    raw = read_raw_events(ml_lake.lake)
    dates = training.dates
    for as_of in (dates[0], dates[len(dates) // 2], dates[-1]):
        end = as_of_end(as_of)
        assert raw.filter(pl.col("ts") >= end).height > 0  # the truncation removes something
        before = raw.filter(pl.col("ts") < end)
        recomputed = compute_features(before, as_of)
        expected = pl.concat(
            [recomputed.select(KEY_COLUMNS), model_input(recomputed, training.features)],
            how="horizontal",
        )
        actual = rows_of(training, as_of)
        assert_frame_equal(actual.drop(LABEL_COLUMN), expected)

        horizon_end = as_of_end(as_of + timedelta(days=30))
        cancellations = raw.filter(
            (pl.col("event_type") == SUBSCRIPTION_CANCELLED) & (pl.col("ts") < horizon_end)
        )
        labels = compute_labels(recomputed["customer_id"], cancellations, as_of, 30)
        assert actual[LABEL_COLUMN].to_list() == labels[LABEL_COLUMN].to_list()


def _twins(cancel_a: bool) -> list[dict]:
    """Customers a and b with the same history up to D; a optionally cancels at the first
    instant after D; z only makes the lake complete through D + 30."""
    rows = []
    for c in ("a", "b"):
        rows += [
            started(f"{c}-s", c, at(D - timedelta(days=60))),
            event(f"{c}-l1", c, "login", at(D - timedelta(days=20))),
            event(f"{c}-l2", c, "login", at(D - timedelta(days=5))),
            event(f"{c}-l3", c, "login", at(D, hour=23)),
            event(f"{c}-p1", c, "purchase", at(D - timedelta(days=10)), value=30.0),
        ]
    if cancel_a:
        rows.append(event("a-x", "a", SUBSCRIPTION_CANCELLED, as_of_end(D)))
    rows.append(event("z-1", "z", "login", at(D + timedelta(days=31))))
    return rows


def test_a_future_cancellation_changes_the_label_and_never_the_features(tmp_path):
    """Twins differ only in a cancellation right after D: same features, different labels; the
    cancellation added or removed leaves the row's features unchanged."""
    sets = {}
    for cancels in (True, False):
        lake = lake_of(tmp_path / f"lake-{cancels}", _twins(cancels))
        assert ensure_inputs(lake, [D]) == [f"customer_features {D}", f"churn_labels {D}"]
        sets[cancels] = rows_of(build_training_set(lake, [D]), D)

    with_cancel, without = sets[True], sets[False]
    assert with_cancel["customer_id"].to_list() == ["a", "b"]
    assert with_cancel[LABEL_COLUMN].to_list() == [True, False]
    assert without[LABEL_COLUMN].to_list() == [False, False]
    features = with_cancel.drop("customer_id", LABEL_COLUMN)
    assert features.row(0) == features.row(1)
    assert features["login_count_7d"].to_list() == [2.0, 2.0]  # the history was really read
    assert_frame_equal(with_cancel.drop(LABEL_COLUMN), without.drop(LABEL_COLUMN))


# --- which dates --------------------------------------------------------------------


LATEST = date(2025, 3, 30)  # the latest labelable date of span_lake(2025-01-01, 2025-04-30)


def span_lake(root: Path, first: date, last: date) -> Lake:
    """A lake whose events are dated `first` and `last` (all the date logic looks at)."""
    return lake_of(
        root,
        [event("e1", "x", "login", at(first)), event("e2", "x", "login", at(last))],
    )


def test_dates_step_back_from_the_latest_labelable_date(tmp_path):
    """Complete through the day before the last event date; labelable = that - horizon; weekly
    dates back from it, none before first event + min_history_days."""
    lake = span_lake(tmp_path / "lake", date(2025, 1, 1), date(2025, 4, 30))
    chosen = training_dates(lake)
    assert chosen.latest_labelable == LATEST  # complete through 2025-04-29, minus 30 days
    assert chosen.first_allowed == date(2025, 1, 29)  # 2025-01-01 + 28 days
    assert chosen.cadence_days == 7
    assert chosen.dates == [LATEST - timedelta(days=7 * i) for i in range(8, -1, -1)]
    assert chosen.dates[0] == date(2025, 2, 2)  # 2025-01-26 lacks 28 days of history

    assert training_dates(lake, count=3).dates == [date(2025, 3, 16), date(2025, 3, 23), LATEST]
    assert training_dates(lake, cadence_days=30, count=2).dates == [date(2025, 2, 28), LATEST]
    assert training_dates(lake, ChurnDefinition("cancellation", 14), count=1).dates == [
        date(2025, 4, 15)
    ]
    assert training_dates(lake, count=2, latest=date(2025, 3, 20)).dates == [
        date(2025, 3, 13),
        date(2025, 3, 20),
    ]
    assert training_dates(lake, count=1, latest=date(2026, 1, 1)).dates == [LATEST]
    no_history = training_dates(lake, min_history_days=0)
    assert len(no_history.dates) == 12 and no_history.dates[0] == date(2025, 1, 12)
    # two dates cannot hold a time split (2 holdout, 4 purged, 1 calibration, 1 to train)
    with pytest.raises(TrainingSetError, match="not enough history to train"):
        training_dates(lake, min_history_days=80)
    assert training_dates(lake, min_history_days=80, require=1).dates == [
        date(2025, 3, 23),
        LATEST,
    ]


def test_the_default_count_follows_the_horizon_and_the_split():
    """Holdout + the dates whose horizon reaches into it + calibration + min_train_dates."""
    needs = SplitNeeds()
    assert needs.purged(30, 7) == 4 and needs.default_count(30, 7) == 12
    assert needs.purged(28, 7) == 3  # d + 28 == the holdout start: not purged
    assert needs.purged(90, 7) == 12 and needs.default_count(90, 7) == 20
    assert needs.purged(1, 7) == 0 and needs.minimum(1, 7) == 4
    assert SplitNeeds(holdout_dates=3, min_train_dates=8).default_count(90, 14) == 3 + 6 + 1 + 8


def test_a_lake_too_short_for_the_split_says_what_it_needs(tmp_path):
    """28 days of warm-up, 8 weekly dates (the smallest split) and a 30-day horizon take
    109 days of events; a day fewer is refused with the numbers and the settings."""
    first = date(2025, 1, 1)
    days = 28 + 7 * 7 + 30 + 2
    enough = span_lake(tmp_path / "enough", first, first + timedelta(days=days - 1))
    chosen = training_dates(enough)
    assert len(chosen.dates) == 8 and chosen.dates[0] == first + timedelta(days=28)
    assert chosen.wanted == 12

    short = span_lake(tmp_path / "short", first, first + timedelta(days=days - 2))
    with pytest.raises(TrainingSetError) as refused:
        training_dates(short)
    message = str(refused.value)
    assert "not enough history to train" in message
    assert "events dated 2025-01-01..2025-04-18 (108 days, complete through 2025-04-17)" in message
    assert "8 as-of dates 7 days apart (2 holdout, 4 purged" in message
    assert "need at least 109 days of events" in message
    for setting in ("CHURN_HORIZON_DAYS", "cadence_days", "min_history_days", "holdout_dates"):
        assert setting in message
    # one labelable date needs min_history + horizon + 2 days
    one = span_lake(tmp_path / "one", first, first + timedelta(days=28 + 30))
    with pytest.raises(TrainingSetError, match="at least 60 days of events"):
        training_dates(one, count=1)
    assert training_dates(enough, ChurnDefinition("cancellation", 30), count=1).dates == [
        chosen.dates[-1]
    ]


def test_an_empty_lake_and_bad_arguments_are_refused(tmp_path):
    """No committed events → TrainingSetError naming the lake; cadence/count < 1 → ValueError."""
    lake = Lake(str(tmp_path / "empty"))
    with pytest.raises(TrainingSetError, match="holds no committed events") as refused:
        training_dates(lake)
    assert lake.url("") in str(refused.value)
    assert "raw_customer_events" in str(refused.value)
    with pytest.raises(ValueError, match="cadence_days must be at least 1"):
        training_dates(lake, cadence_days=0)
    with pytest.raises(ValueError, match="date count must be at least 1"):
        training_dates(lake, count=0)


# --- one column set over all dates -------------------------------------------------


D1, D2 = date(2024, 3, 1), date(2024, 3, 8)


def two_date_lake(root: Path) -> Lake:
    """`legacy` happens 360 days before D1 (in D1's 365-day window, not D2's); `export`
    (valued) only after D1; the lake is complete through D2 + 7."""
    rows = [
        started("c1-s", "c1", at(D1 - timedelta(days=400))),
        started("c2-s", "c2", at(D1 - timedelta(days=30)), plan="basic", mrr=19.0),
        event("c1-old", "c1", "legacy", at(D1 - timedelta(days=360))),
        event("c1-l1", "c1", "login", at(D1 - timedelta(days=2))),
        event("c2-l1", "c2", "login", at(D1 - timedelta(days=1))),
        event("c1-x1", "c1", "export", at(D1 + timedelta(days=2)), value=5.0),
        event("c2-l2", "c2", "login", at(D2)),
        event("z-1", "z", "login", at(D2 + timedelta(days=8))),
    ]
    return lake_of(root, rows)


def test_a_type_missing_at_one_date_gets_the_neutral_fill(tmp_path):
    """Every row has every activity type's columns: counts and sums 0, days-since and means null."""
    lake = two_date_lake(tmp_path / "lake")
    ensure_inputs(lake, [D1, D2], ChurnDefinition("cancellation", 7))
    assert "export_count_7d" not in read_features(lake, D1).columns
    assert "legacy_count_90d" not in read_features(lake, D2).columns

    training = build_training_set(lake, [D2, D1])
    assert training.dates == [D1, D2]
    assert {"export_count_7d", "export_value_mean_28d", "legacy_days_since_last"} <= set(
        training.features
    )
    at_d1, at_d2 = rows_of(training, D1), rows_of(training, D2)
    assert at_d1.height == at_d2.height == 2

    for name in ("export_count_7d", "export_count_28d", "export_count_90d"):
        assert at_d1[name].to_list() == [0.0, 0.0]
    assert at_d1["export_value_sum_28d"].to_list() == [0.0, 0.0]
    assert at_d1["export_value_mean_28d"].to_list() == [None, None]
    assert at_d1["export_days_since_last"].to_list() == [None, None]
    assert at_d2["export_count_7d"].to_list() == [1.0, 0.0]  # c1 exported at D1 + 2
    assert at_d2["export_days_since_last"].to_list() == [5.0, None]
    assert at_d2["export_value_mean_28d"].to_list() == [5.0, None]

    assert at_d1["legacy_days_since_last"].to_list() == [360.0, None]
    assert at_d2["legacy_count_90d"].to_list() == [0.0, 0.0]
    assert at_d2["legacy_days_since_last"].to_list() == [None, None]
    counts = [c for c in training.features if "_count_" in c]
    assert training.table.select(counts).null_count().sum_horizontal().item() == 0


# --- labels that do not fit ----------------------------------------------------------


def test_labels_that_do_not_match_the_feature_table_are_refused(tmp_path):
    """A label missing, or one for a customer without features, names the date and the fix."""
    lake = two_date_lake(tmp_path / "lake")
    ensure_inputs(lake, [D1, D2], ChurnDefinition("cancellation", 7))
    labels = read_labels(lake, D2)
    assert labels["customer_id"].to_list() == ["c1", "c2"]

    write_labels(lake, labels.filter(pl.col("customer_id") != "c2"), D2)
    with pytest.raises(TrainingSetError) as refused:
        build_training_set(lake, [D1, D2])
    message = str(refused.value)
    assert "labels of 2024-03-08 do not match its feature table" in message
    assert "1 customers without a label" in message and "rematerialize churn_labels" in message

    ghost = labels.head(1).with_columns(pl.lit("ghost").alias("customer_id"))
    write_labels(lake, pl.concat([labels, ghost]), D2)
    with pytest.raises(TrainingSetError, match=r"labels of 2024-03-08 .* 3 labels"):
        build_training_set(lake, [D1, D2])

    write_labels(lake, labels, D2)
    assert build_training_set(lake, [D1, D2]).rows == 4


def test_missing_labels_name_churn_labels(tmp_path):
    lake = two_date_lake(tmp_path / "lake")
    ensure_inputs(lake, [D1], ChurnDefinition("cancellation", 7))
    drop_partition(lake, tables.LABELS, D1)
    with pytest.raises(TrainingSetError, match="materialize churn_labels for 2024-03-01"):
        build_training_set(lake, [D1])


# --- ensure_inputs -----------------------------------------------------------------


def test_ensure_inputs_computes_exactly_what_is_missing(ml_lake, tmp_path):
    """Deleted dates are recomputed (and equal the originals); a second call computes nothing;
    labels of another horizon are recomputed, features are not."""
    lake = copy_lake(ml_lake.lake, tmp_path / "lake")
    dates = ml_lake.dates.dates
    gone, labels_gone = dates[5], dates[9]
    drop_partition(lake, tables.FEATURES, gone)
    drop_partition(lake, tables.LABELS, gone)
    drop_partition(lake, tables.LABELS, labels_gone)

    seen = []
    computed = ensure_inputs(
        lake, dates, engine="polars", on_computed=lambda kind, d: seen.append((kind, d))
    )
    assert computed == [
        f"customer_features {gone}",
        f"churn_labels {gone}",
        f"churn_labels {labels_gone}",
    ]
    assert seen == [
        ("customer_features", gone),
        ("churn_labels", gone),
        ("churn_labels", labels_gone),
    ]
    assert_frame_equal(read_features(lake, gone), read_features(ml_lake.lake, gone))
    for d in (gone, labels_gone):
        assert_frame_equal(read_labels(lake, d), read_labels(ml_lake.lake, d))
    assert ensure_inputs(lake, dates, engine="polars") == []

    assert ensure_inputs(lake, [gone], ChurnDefinition("cancellation", 20)) == [
        f"churn_labels {gone}"
    ]
    relabelled = read_labels(lake, gone)
    assert set(relabelled["horizon_days"]) == {20}
    assert relabelled.height == read_labels(ml_lake.lake, gone).height
    assert relabelled["churned"].sum() <= read_labels(ml_lake.lake, gone)["churned"].sum()
    assert ensure_inputs(lake, [gone], ChurnDefinition("cancellation", 20)) == []


# --- the table -----------------------------------------------------------------------


def test_write_read_roundtrip(ml_lake, training, tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    with pytest.raises(TrainingSetError, match="materialize training_set first"):
        read_training_set(lake)
    version = write_training_set(lake, training)
    assert version == training.version == tables.version(lake, tables.TRAINING_SET)
    back = read_training_set(lake)
    assert_frame_equal(back.table, training.table)
    assert back.dates == training.dates
    assert back.features == training.features
    assert (back.rows, back.positives) == (training.rows, training.positives)
    assert back.lineage() == training.lineage()
    assert back.features_version is not None and back.labels_version is not None

    # a smaller set replaces the whole table; the first stays readable by version
    fewer = build_training_set(ml_lake.lake, training.dates[-3:])
    newer = write_training_set(lake, fewer)
    assert_frame_equal(read_training_set(lake).table, fewer.table)
    assert set(read_training_set(lake).features) == set(fewer.features)
    assert_frame_equal(read_training_set(lake, version).table, training.table)
    assert newer == version + 1


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_training_set_is_an_error_naming_the_file(training, tmp_path, damage):
    lake = Lake(str(tmp_path / "lake"))
    write_training_set(lake, training)
    (data_file,) = tables.data_files(lake, tables.TRAINING_SET)
    path = tables.file_path(tables.TRAINING_SET, data_file)
    good = lake.read_bytes(path)
    lake.write_bytes(path, b"not parquet" if damage == "garbage" else good[:-100])
    with pytest.raises(LakeError, match=re.escape(lake.url(path))) as refused:
        read_training_set(lake)
    assert not isinstance(refused.value, TrainingSetError)

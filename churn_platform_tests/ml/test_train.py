"""Training: the time split, customer sampling, metrics, both models, the gate and the card."""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from functools import partial

import numpy as np
import polars as pl
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import GroupKFold
from threadpoolctl import threadpool_limits

from churn_platform.events.replay import ReplayMapping, SubscriptionMapping, rows_to_messages
from churn_platform.features.churn import ChurnDefinition
from churn_platform.lake.store import Lake
from churn_platform.ml.estimators import (
    CANDIDATE_KIND,
    build_estimator,
    positive_probability,
    small_batch_predictor,
)
from churn_platform.ml.flat import WALK_ROWS
from churn_platform.ml.frame import LABEL_COLUMN, input_rows, model_input
from churn_platform.ml.gate import GateConfig, judge_candidate
from churn_platform.ml.train import (
    DEFAULT_MAX_TRAIN_ROWS,
    FitPool,
    TrainConfig,
    TrainedModels,
    TrainingError,
    _sample_customers,
    evaluate,
    fit_served,
    gate_summary,
    model_card,
    row_limit,
    split_by_time,
    top_decile,
    train_models,
    usable_features,
)
from churn_platform.ml.training_set import (
    TrainingSet,
    build_training_set,
    ensure_inputs,
    training_dates,
)
from churn_platform.testing.lakes import append_messages

# small permutation importance: the full default costs more than both fits together
FAST = TrainConfig(importance_rows=600, importance_repeats=1)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """OpenMP threads only spin on a busy machine (a fit took 10 s instead of 1 s)."""
    with threadpool_limits(limits=1):
        yield


def weekly_table(dates: int, customers: int = 30, start: date = date(2025, 1, 5)) -> pl.DataFrame:
    """Customer i is present from date i % 3 on; churned for every fifth customer."""
    rows = [
        {
            "customer_id": f"c{i:03d}",
            "as_of": start + timedelta(days=7 * k),
            "x": float(i),
            LABEL_COLUMN: i % 5 == 0,
        }
        for i in range(customers)
        for k in range(dates)
        if k >= i % 3
    ]
    return pl.DataFrame(rows)


# --- the split ---------------------------------------------------------------------


def test_split_orders_train_calibration_holdout_and_purges_the_overlap():
    """Holdout = last 2 dates; a date is purged exactly when d + horizon > first holdout date."""
    table = weekly_table(10)
    dates = sorted(table["as_of"].unique().to_list())
    split = split_by_time(table, TrainConfig())

    assert split.holdout_dates == dates[8:]
    assert split.purged_dates == dates[4:8]  # 28, 21, 14 and 7 days before the holdout
    assert split.calibration_dates == [dates[3]]  # 35 days before: its horizon ends in time
    assert split.train_dates == dates[:3]
    assert max(split.train_dates) < min(split.calibration_dates)
    assert max(split.calibration_dates) < min(split.holdout_dates)
    for rows, chosen in (
        (split.train, split.train_dates),
        (split.calibration, split.calibration_dates),
        (split.holdout, split.holdout_dates),
    ):
        assert sorted(rows["as_of"].unique().to_list()) == chosen
        assert rows.height == table.filter(pl.col("as_of").is_in(chosen)).height
    purged_rows = table.filter(pl.col("as_of").is_in(split.purged_dates)).height
    total = split.train.height + split.calibration.height + split.holdout.height + purged_rows
    assert total == table.height
    assert split.sampled_customers is None
    assert split.describe()["purged_dates"] == [d.isoformat() for d in dates[4:8]]


def test_purge_boundary_is_strictly_past_the_holdout_start():
    """d + horizon == first holdout date is kept; one day more and d is purged."""
    table = weekly_table(6)
    dates = sorted(table["as_of"].unique().to_list())
    kept = split_by_time(table, TrainConfig(horizon_days=7))
    assert kept.purged_dates == [] and kept.calibration_dates == [dates[3]]
    purged = split_by_time(table, TrainConfig(horizon_days=8))
    assert purged.purged_dates == [dates[3]]
    assert purged.calibration_dates == [dates[2]] and purged.train_dates == dates[:2]


def test_too_few_dates_are_a_training_error_saying_what_to_add():
    with pytest.raises(TrainingError) as refused:
        split_by_time(weekly_table(3), TrainConfig())
    message = str(refused.value)
    assert "has 3 as-of dates; a time split needs at least 4" in message
    assert "2 holdout, 1 calibration, 1 train" in message and "add dates" in message

    with pytest.raises(TrainingError) as refused:
        split_by_time(weekly_table(6), TrainConfig())  # a 30-day horizon purges all 4 others
    message = str(refused.value)
    assert "after purging 4 as-of dates whose 30-day label horizon overlaps" in message
    assert "0 remain; 2 are needed" in message and "add older dates" in message

    with pytest.raises(TrainingError, match="must each be at least 1"):
        split_by_time(weekly_table(10), TrainConfig(holdout_dates=0))


# --- sampling whole customers -------------------------------------------------------


def test_sampling_keeps_whole_customers_seeded_and_about_the_size():
    table = weekly_table(4, customers=300)  # 300 customers with 2 to 4 dates each
    config = TrainConfig(max_train_rows=300, min_train_positives=0, seed=5)
    sample, customers = _sample_customers(table, config)

    assert customers == sample["customer_id"].n_unique() > 0
    assert 0.7 * 300 <= sample.height <= 1.3 * 300
    per_customer = table.group_by("customer_id").len()
    sampled = sample.group_by("customer_id").len()
    assert (
        sampled.join(per_customer, on="customer_id", suffix="_all")
        .filter(pl.col("len") != pl.col("len_all"))
        .is_empty()
    )

    again, _ = _sample_customers(table, config)
    assert set(again["customer_id"]) == set(sample["customer_id"])
    other, _ = _sample_customers(
        table, TrainConfig(max_train_rows=300, min_train_positives=0, seed=6)
    )
    assert set(other["customer_id"]) != set(sample["customer_id"])

    whole, none = _sample_customers(table, TrainConfig(max_train_rows=table.height))
    assert none is None and whole.height == table.height


def test_split_samples_only_the_train_dates():
    table = weekly_table(10, customers=300)
    split = split_by_time(table, TrainConfig(max_train_rows=200, min_train_positives=0))
    everyone = table.filter(pl.col("as_of").is_in(split.holdout_dates)).height
    before = table.filter(pl.col("as_of").is_in(split.train_dates)).height
    assert split.sampled_customers == split.train["customer_id"].n_unique()
    assert split.train.height < before
    assert split.holdout.height == everyone
    assert split.describe()["train_rows_before_sampling"] == before
    assert "train_rows_before_sampling" not in split_by_time(table, TrainConfig()).describe()


def test_the_row_limit_keeps_enough_churned_rows():
    """Above max_train_rows the sample shrinks, but not below min_train_positives churned
    rows at the data's own churn rate; None keeps every row."""
    config = TrainConfig(max_train_rows=1_000, min_train_positives=100)
    assert row_limit(900, 90, config) is None  # under the cap
    assert row_limit(10_000, 2_000, config) == 1_000  # 20% churn: 1,000 rows hold 200
    assert row_limit(10_000, 500, config) == 2_000  # 5% churn: 2,000 rows hold 100
    assert row_limit(10_000, 50, config) is None  # 0.5% churn: every row holds only 50
    assert row_limit(10_000, 0, config) == 1_000
    assert row_limit(10**9, 10**6, TrainConfig(max_train_rows=None)) is None
    # the defaults: a large business with common churn is sampled, rare churn keeps more
    defaults = TrainConfig()
    assert row_limit(574_634, 50_676, defaults) == DEFAULT_MAX_TRAIN_ROWS
    assert row_limit(2_000_000, 20_000, defaults) == 1_000_000

    table = weekly_table(4, customers=300)  # every fifth customer churned
    rare = TrainConfig(max_train_rows=300, min_train_positives=150)
    sample, _ = _sample_customers(table, rare)
    assert sample[LABEL_COLUMN].sum() >= 0.7 * 150


# --- metrics -------------------------------------------------------------------------


def test_top_decile_of_a_perfect_ranking():
    """Lift = 1/base rate, capped when the churners outnumber the decile; capture likewise."""
    few = np.array([1] * 5 + [0] * 95)
    assert top_decile(few, few.astype(float)) == (10.0, 1.0)  # 5 of 10 top, base rate 5%
    many = np.array([1] * 20 + [0] * 80)
    assert top_decile(many, many.astype(float)) == (5.0, 0.5)  # 10 of 20 churners in the top
    assert top_decile(many, 1.0 - many) == (0.0, 0.0)  # the worst ranking catches none
    assert top_decile(np.zeros(50, dtype=int), np.linspace(0, 1, 50)) == (0.0, 0.0)

    odd = np.array([1] * 10 + [0] * 85)  # 95 rows: the top decile is ceil(9.5) = 10 rows
    lift, capture = top_decile(odd, odd.astype(float))
    assert capture == 1.0 and lift == pytest.approx((10 / 10) / (10 / 95))


def test_evaluate_on_known_answers():
    y = np.array([0, 0, 1, 1])
    metrics = evaluate(y, np.array([0.1, 0.4, 0.35, 0.8]))
    assert metrics.roc_auc == 0.75  # 3 of the 4 (positive, negative) pairs are in order
    assert metrics.pr_auc == pytest.approx(0.8333, abs=1e-4)
    assert metrics.brier == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4, abs=1e-5)
    assert (metrics.base_rate, metrics.rows, metrics.positives) == (0.5, 4, 2)

    perfect = np.array([1] * 5 + [0] * 95)
    best = evaluate(perfect, perfect * 0.9 + 0.05)
    assert (best.roc_auc, best.pr_auc, best.top_decile_lift) == (1.0, 1.0, 10.0)
    assert best.top_decile_capture == 1.0
    assert best.brier == pytest.approx(0.0025)


def test_a_one_class_holdout_is_a_training_error():
    with pytest.raises(TrainingError, match="only one class: ROC AUC is undefined"):
        evaluate(np.zeros(10), np.linspace(0, 1, 10))


# --- both models on the simulated lake ------------------------------------------------


@pytest.fixture(scope="module")
def training(ml_lake) -> TrainingSet:
    return build_training_set(ml_lake.lake, ml_lake.dates.dates)


@pytest.fixture(scope="module")
def trained(_one_thread, training) -> TrainedModels:
    return train_models(training.table, training.features, FAST)


def test_candidate_beats_the_floor_and_the_baseline(trained, training):
    """Observed on this fixture: candidate 0.8773, baseline 0.8516 holdout ROC AUC."""
    candidate, baseline = trained.metrics.candidate, trained.metrics.baseline
    assert candidate.roc_auc > 0.75 and baseline.roc_auc > 0.75
    assert candidate.roc_auc > baseline.roc_auc
    assert candidate.top_decile_lift > 2.0
    assert trained.split.holdout_dates == training.dates[-2:]
    assert candidate.rows == baseline.rows == trained.split.holdout.height
    assert 0 < candidate.positives < candidate.rows


def test_scores_are_probabilities_of_the_holdout_rows(trained):
    labels = trained.split.holdout[LABEL_COLUMN].cast(pl.Int8).to_numpy()
    np.testing.assert_array_equal(trained.holdout_labels, labels)
    for scores in trained.holdout_scores.values():
        assert scores.shape == (trained.split.holdout.height,)
        assert np.all((scores >= 0) & (scores <= 1)) and np.isfinite(scores).all()
        assert scores.std() > 0.01  # not a constant


def test_same_seed_same_models(trained, training):
    """Also when the two fits run one after the other instead of side by side."""
    again = train_models(training.table, training.features, replace(FAST, workers=1))
    for name in ("candidate", "baseline"):
        np.testing.assert_array_equal(again.holdout_scores[name], trained.holdout_scores[name])
    assert again.metrics == trained.metrics
    assert again.importance.equals(trained.importance)


def test_small_batch_predictor_equals_predict_proba_bit_for_bit(trained, training):
    """The streaming scorer's predictor: same numbers as the pipeline, on every row of the
    training table, one row at a time, with nulls and with a plan the encoder never saw."""
    features = trained.features
    predict = small_batch_predictor(trained.candidate, features)
    assert predict is not None
    x = model_input(training.table, features)
    expected = positive_probability(trained.candidate, x)
    assert x.height > WALK_ROWS  # both paths: scikit-learn's loop for the whole table,
    np.testing.assert_array_equal(predict(x), expected)
    for start in range(0, x.height, WALK_ROWS):  # the all-trees walk for each slice
        chunk = predict(x.slice(start, WALK_ROWS))
        np.testing.assert_array_equal(chunk, expected[start : start + WALK_ROWS])
    for i in (0, 7, x.height - 1):
        row = x.slice(i, 1)
        np.testing.assert_array_equal(predict(row), positive_probability(trained.candidate, row))
    nullable = [c for c in features if c.endswith("days_since_last")]
    odd = x.head(50).with_columns(
        pl.lit("enterprise-legacy").alias("plan"),
        *[pl.lit(None, pl.Float64).alias(c) for c in nullable],
    )
    assert odd.null_count().sum_horizontal().item() > 0
    np.testing.assert_array_equal(predict(odd), positive_probability(trained.candidate, odd))
    # rows as dicts (the scorer's per-customer path): the same numbers, a column the
    # table lacks filled as model_input fills it
    table = training.table.head(200).with_columns(
        pl.when(pl.int_range(pl.len()) % 3 == 0).then(None).otherwise(pl.col("plan")).alias("plan")
    )
    dropped = next(c for c in features if c.endswith("_count_7d"))
    table = table.drop(dropped)
    rows = input_rows(table.to_dicts(), features)
    assert [list(r) for r in rows[:1]] == [list(features)]
    framed = model_input(table, features)
    assert rows == framed.to_dicts()
    np.testing.assert_array_equal(predict.rows(rows), predict(framed))
    np.testing.assert_array_equal(predict.rows(rows[:1]), predict(framed.head(1)))
    # anything but the calibrated boosting pipeline keeps scikit-learn's own path
    assert small_batch_predictor(trained.baseline, features) is None
    uncalibrated = trained.candidate.calibrated_classifiers_[0].estimator.estimator
    assert small_batch_predictor(uncalibrated, features) is None
    assert small_batch_predictor(trained.candidate, features[:-1]) is None


def test_importance_lists_every_feature_once_largest_first(trained, training):
    importance = trained.importance
    assert importance.columns == ["feature", "importance", "std"]
    assert sorted(importance["feature"].to_list()) == sorted(trained.features)
    assert set(trained.features) | set(trained.dropped) == set(training.features)
    assert importance["feature"].n_unique() == importance.height
    values = importance["importance"].to_list()
    assert values == sorted(values, reverse=True) and values[0] > 0


# --- the served model and what is left out --------------------------------------------


@pytest.fixture(scope="module")
def served(_one_thread, training, trained):
    return fit_served(training.table, trained.features, FAST)


def test_the_served_model_is_fitted_on_every_labelled_date(served, training, trained):
    """Every row of the training set, the holdout and purged dates included; out-of-fold
    calibration keeps its probabilities honest (mean near the churn rate)."""
    assert served.rows == training.rows and served.dates == training.dates
    assert served.dates[-1] == trained.split.holdout_dates[-1]  # the most recent date too
    assert served.churned == training.positives
    x = model_input(training.table, trained.features)
    p = positive_probability(served.estimator, x)
    assert np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()
    rate = training.positives / training.rows
    assert abs(p.mean() - rate) < 0.25 * rate, (p.mean(), rate)
    assert served.estimator.cv == FAST.calibration_folds  # no fold indices stored
    assert "out-of-fold" in served.calibration


def test_the_served_fit_in_threads_is_scikit_learns_out_of_fold_calibration(
    served, training, trained
):
    """Its fits run side by side; the model is CalibratedClassifierCV's (ensemble=False) to the
    bit, on the same rows with the same folds of whole customers."""
    x, y = model_input(training.table, trained.features), training.table[LABEL_COLUMN].to_numpy()
    customers = training.table["customer_id"].to_numpy()
    splits = list(GroupKFold(n_splits=FAST.calibration_folds).split(x, y, customers))
    expected = CalibratedClassifierCV(
        build_estimator(CANDIDATE_KIND, trained.features, FAST.seed),
        method=FAST.calibration,
        cv=splits,
        ensemble=False,
    ).fit(x, y.astype(np.int8))
    np.testing.assert_array_equal(
        positive_probability(served.estimator, x), positive_probability(expected, x)
    )
    calibrator, reference = (
        served.estimator.calibrated_classifiers_[0].calibrators[0],
        expected.calibrated_classifiers_[0].calibrators[0],
    )
    assert (calibrator.a_, calibrator.b_) == (reference.a_, reference.b_)
    assert list(served.estimator.feature_names_in_) == list(expected.feature_names_in_)
    assert served.estimator.n_features_in_ == expected.n_features_in_


def test_the_served_fit_samples_whole_customers_when_asked(training, trained):
    config = TrainConfig(
        max_train_rows=4_000, min_train_positives=0, importance_rows=300, importance_repeats=1
    )
    sampled = fit_served(training.table, trained.features, config)
    assert 3_000 < sampled.rows < 5_000 < training.rows
    assert sampled.dates == training.dates  # every date, fewer customers
    assert sampled.describe()["served_rows_before_sampling"] == training.rows
    assert f"rows of {training.rows}, whole customers sampled" in model_card(
        "v1", trained, training.rows, "range", [], True, served=sampled
    )


def test_small_batch_predictor_equals_the_served_model_bit_for_bit(served, training, trained):
    predict = small_batch_predictor(served.estimator, trained.features)
    assert predict is not None
    x = model_input(training.table, trained.features)
    expected = positive_probability(served.estimator, x)
    np.testing.assert_array_equal(predict(x), expected)
    np.testing.assert_array_equal(predict(x.head(17)), expected[:17])


def test_served_fits_queued_behind_the_evaluation_give_the_same_models(served, training, trained):
    """The model step's path: one FitPool, the served model's fits queued behind the
    evaluation's (so they start on the core the evaluation leaves idle): the same
    evaluation and the same served model, to the bit."""
    with FitPool(FAST) as fits:
        both = train_models(training.table, training.features, FAST, fits=fits, serve=True)
        assert both.served is not None
        again = both.served.result()
    for name in ("candidate", "baseline"):
        np.testing.assert_array_equal(both.holdout_scores[name], trained.holdout_scores[name])
    assert both.metrics == trained.metrics and both.importance.equals(trained.importance)
    x = model_input(training.table, trained.features)
    np.testing.assert_array_equal(
        positive_probability(again.estimator, x), positive_probability(served.estimator, x)
    )
    assert (again.rows, again.dates, again.churned) == (served.rows, served.dates, served.churned)
    assert 0 < again.seconds < float("inf")
    assert trained.served is None  # not asked for
    with pytest.raises(ValueError, match="FitPool"):
        train_models(training.table, training.features, FAST, serve=True)


def test_leaving_the_fit_pool_cancels_the_fits_not_started():
    """A failed gate leaves the block without asking for the served model: the fits still
    queued never run, the running ones finish."""
    running, ran, queued = threading.Barrier(3), [], {}

    def busy(name: str) -> str:
        running.wait(timeout=10)
        deadline = time.monotonic() + 10  # until the queued fit is cancelled
        while not queued["fit"].future.cancelled() and time.monotonic() < deadline:
            time.sleep(0.005)
        ran.append(name)
        return name

    with FitPool(workers=2) as fits:
        first, second = fits.submit(partial(busy, "a")), fits.submit(partial(busy, "b"))
        queued["fit"] = fits.submit(partial(ran.append, "queued"))
        running.wait(timeout=10)  # both threads are busy: the third fit waits in the queue
    assert sorted(ran) == ["a", "b"]
    assert (first.result(), second.result()) == ("a", "b")
    with pytest.raises(CancelledError):
        queued["fit"].result()


def test_features_with_nothing_to_learn_are_left_out_and_named():
    """All-null columns crashed the boosting's binning on a business without subscriptions."""
    rows = pl.DataFrame(
        {
            "a": [1.0, 2.0, 3.0],
            "empty": [None, None, None],
            "same": [5.0, 5.0, 5.0],
            "sparse": [None, 1.0, None],
            "plan": ["x", "x", "x"],
        },
        schema_overrides={"empty": pl.Float64},
    )
    kept, dropped = usable_features(rows, ["a", "empty", "same", "sparse", "plan"])
    assert kept == ["a", "sparse", "plan"]
    assert dropped == {
        "empty": "null in every training row",
        "same": "the same value (5.0) in every training row",
    }
    with pytest.raises(TrainingError, match="none of the 2 features varies"):
        usable_features(rows, ["empty", "same"])


def test_model_card_has_the_version_both_models_the_gate_and_the_definition(trained, served):
    y = trained.holdout_labels
    verdict = judge_candidate(
        y,
        trained.holdout_scores["candidate"],
        trained.holdout_scores["baseline"],
        trained.holdout_customers,
        GateConfig(),
    )
    gate_ok, reasons = gate_summary(verdict)
    churn = ChurnDefinition("inactivity", 60, ("login",))
    card = model_card(
        "20260630-abc", trained, 15_093, "2026-03-14..2026-05-30", reasons, gate_ok, churn, served
    )
    c, b = trained.metrics.candidate, trained.metrics.baseline
    assert card.startswith("# Churn model 20260630-abc\n")
    assert "as-of dates 2026-03-14..2026-05-30, 15093 rows" in card
    assert "- Churn: inactivity: no login within 60 days after the as-of date" in card
    assert f"every labelled date, {served.dates[0]}..{served.dates[-1]} ({served.rows} rows" in card
    for key in ("roc_auc", "pr_auc", "brier", "top_decile_lift", "top_decile_capture"):
        assert f"| {key} | {getattr(c, key)} | {getattr(b, key)} |" in card
    assert f"Gate: {'passed' if gate_ok else 'failed'}" in card
    for reason in reasons:
        assert f"- {reason}\n" in card
    assert f"purged {len(trained.split.purged_dates)} dates" in card
    failed = model_card("v2", trained, 1, "x", ["no_skill FAILED: too few"], False)
    assert "Gate: failed" in failed and "- no_skill FAILED: too few" in failed
    assert "Serves: nothing (the gate failed)" in failed
    assert "- Churn: cancellation: a subscription_cancelled within 30 days" in failed


# --- a replayed catalogue ----------------------------------------------------------------

REPLAY_START = datetime(2025, 1, 1, tzinfo=UTC)
REPLAY_DAYS = 100
ACTIONS = ("Page View", "API Call", "Report Export")


def replayed_lake(root, customers: int = 300, seed: int = 5) -> Lake:
    """A user's own data, replayed: an activity log with its own column and event names and a
    subscriptions table (start, end, tier, monthly) that becomes the lifecycle events. Churners
    go quiet in their last three weeks."""
    rng = np.random.default_rng(seed)
    activity, subscriptions = [], []
    for c in range(customers):
        account = f"ACC{c:04d}"
        first = int(rng.integers(0, 30))
        engagement = float(rng.gamma(2.0, 1.0)) + 0.2
        ends = next(
            (d for d in range(first + 7, REPLAY_DAYS) if rng.random() < 0.006 / engagement), None
        )
        for day in range(first, ends if ends is not None else REPLAY_DAYS):
            quiet = ends is not None and ends - day <= 21
            for _ in range(int(rng.poisson(engagement * (0.15 if quiet else 1.0)))):
                ts = REPLAY_START + timedelta(days=day, seconds=int(rng.integers(0, 86_400)))
                action = ACTIONS[int(rng.choice(3, p=(0.6, 0.3, 0.1)))]
                seconds = round(float(rng.exponential(40.0)), 2) if action == "Page View" else None
                activity.append((account, action, ts.strftime("%Y-%m-%d %H:%M:%S"), seconds))
        until = None if ends is None else REPLAY_START + timedelta(days=ends, hours=12)
        subscriptions.append(
            (
                account,
                (REPLAY_START + timedelta(days=first, minutes=3)).isoformat(),
                until.isoformat() if until else None,
                ("Starter", "Growth")[c % 2],
                (29.0, 99.0)[c % 2],
            )
        )
    activity_frame = pl.DataFrame(
        activity, schema=["account", "action", "when", "duration"], orient="row"
    )
    subscription_frame = pl.DataFrame(
        subscriptions, schema=["account", "since", "until", "tier", "monthly"], orient="row"
    )
    messages = rows_to_messages(
        activity_frame,
        ReplayMapping(
            customer_id_column="account",
            event_type_column="action",
            ts_column="when",
            value_column="duration",
        ),
        source="activity.csv",
    )
    messages += rows_to_messages(
        subscription_frame,
        SubscriptionMapping(
            customer_id_column="account",
            start_column="since",
            end_column="until",
            plan_column="tier",
            mrr_column="monthly",
        ),
        source="subscriptions.csv",
    )
    lake = Lake(str(root))
    now = REPLAY_START + timedelta(days=REPLAY_DAYS + 1)
    append_messages(lake, [value for _, value in messages], now=now)
    return lake


def test_the_pipeline_trains_on_a_replayed_catalogue(tmp_path):
    """ensure_inputs (polars) → build_training_set → train_models on replayed data, with the
    catalogue's own activity types as features and labels from its subscriptions table."""
    lake = replayed_lake(tmp_path / "lake")
    horizon = 14
    churn = ChurnDefinition("cancellation", horizon)
    dates = training_dates(lake, churn, count=7).dates
    assert len(dates) == 7
    computed = ensure_inputs(lake, dates, churn, engine="polars")
    assert len(computed) == 2 * len(dates)
    training = build_training_set(lake, dates)

    for kind in ("page_view", "api_call", "report_export"):
        assert {f"{kind}_count_7d", f"{kind}_days_since_last"} <= set(training.features)
    assert "page_view_value_mean_28d" in training.features  # durations became values
    assert not any(" " in name or name[0].isupper() for name in training.features)
    assert set(training.table["plan"]) == {"Starter", "Growth"}
    per_date = training.per_date()
    assert per_date["churned"].min() > 0  # every date has churners: cancellations were mapped

    config = TrainConfig(horizon_days=horizon, importance_rows=300, importance_repeats=1)
    trained = train_models(training.table, training.features, config)
    assert trained.split.holdout_dates == dates[-2:]
    assert trained.split.purged_dates == [dates[-3]]  # 7 days before, 14-day horizon
    for metrics in (trained.metrics.candidate, trained.metrics.baseline):
        assert 0.7 < metrics.roc_auc <= 1.0  # churners go quiet: learnable
    assert set(trained.importance["feature"]) == set(trained.features)
    # a business with subscriptions but no plan changes: nothing to learn from those
    assert "plan_changes" in trained.dropped and "plan_changes" not in trained.features

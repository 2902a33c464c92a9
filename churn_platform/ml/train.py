"""Training and evaluation: a time split, two calibrated models, holdout metrics; the served model.

Evaluation splits by as-of date, never at random:

    train dates  <  calibration dates  <  (purged)  <  holdout dates

The holdout is the latest `holdout_dates` as-of dates. The rows whose labels
overlap the holdout's are purged: a row at date d was labelled by events in
(d, d + horizon], and when d + horizon passes the holdout start, that window
overlaps the holdout's own, so training on it would let the model recall
holdout outcomes. Every row of such a date overlaps in time; keeping only the
rows of customers absent from the holdout would keep exactly the customers
who churned in between, i.e. choose rows by their label. So whole dates are
purged, and only those. The latest remaining dates calibrate the
probabilities (`estimators.calibrate`), the rest fit the models. Both
pipelines (gradient boosting, the candidate; logistic regression, the
baseline) are fitted on the same rows and judged on the same holdout; the
metrics describe that evaluation model.

The model that serves, used once the gate passed, is fitted on every
labelled date, the most recent included (`fit_served`): the evaluation said
how good the recipe is, and a model that scores May should have seen April.
Its probabilities are calibrated on out-of-fold predictions (folds of whole
customers), so no date is held back from the fit. Its fits may begin beside
the evaluation's, on a core the evaluation leaves idle (`train_models(serve=True)`
on a `FitPool`); a failed gate cancels those not yet started.

Features with nothing to learn from in the fitted rows (null or constant in
every row, e.g. subscription features of a business without subscriptions)
are left out and named in the model card: gradient boosting cannot bin a
column with no values at all.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from churn_platform.cores import available_cores
from churn_platform.features.churn import CANCELLATION, ChurnDefinition
from churn_platform.features.definitions import FeatureSpec
from churn_platform.ml.frame import LABEL_COLUMN, categorical_features, model_input
from churn_platform.ml.gate import Verdict
from churn_platform.ml.labels import DEFAULT_HORIZON_DAYS
from churn_platform.ml.metrics import EvaluationMetrics, HoldoutMetrics

if TYPE_CHECKING:  # scikit-learn loads when a model is fitted or measured, not with this module
    from sklearn.calibration import CalibratedClassifierCV

    from churn_platform.ml.estimators import CalibrationMethod, ModelKind

DEFAULT_SEED = 42
DEFAULT_CALIBRATION_FOLDS = 3
# Rows the boosting is fitted on, at most: whole customers are sampled above this, unless
# that would leave fewer than DEFAULT_MIN_TRAIN_POSITIVES churned rows. On 10M simulated
# events the evaluation's holdout ROC AUC was 0.8556 from 150k rows and 0.8559 from all
# 232k, while the served refit (four fits) took 72 s of the model's 115 s
# (docs/benchmarks.md, Model).
DEFAULT_MAX_TRAIN_ROWS = 250_000
DEFAULT_MIN_TRAIN_POSITIVES = 10_000


class TrainingError(ValueError):
    """The training set cannot support the requested split or fit."""


@dataclass(frozen=True)
class TrainConfig:
    seed: int = DEFAULT_SEED
    horizon_days: int = DEFAULT_HORIZON_DAYS
    holdout_dates: int = 2
    calibration_dates: int = 1
    calibration: CalibrationMethod = "sigmoid"
    max_train_rows: int | None = DEFAULT_MAX_TRAIN_ROWS  # None: every row, whatever the size
    min_train_positives: int = DEFAULT_MIN_TRAIN_POSITIVES  # churned rows a sample keeps
    importance_repeats: int = 3
    importance_rows: int = 3_000
    # OpenMP threads for the boosting. One by default: two cores shared with a
    # broker and other runs made four threads spin (a fit took several times longer:
    # docs/benchmarks.md, Model), and permutation importance is many small predictions.
    threads: int | None = 1
    calibration_folds: int = DEFAULT_CALIBRATION_FOLDS  # of the served model's calibration
    # Python threads running independent fits side by side (each with `threads` OpenMP
    # threads); None: the cores this process may use. 1: one fit after the other.
    workers: int | None = None


@dataclass(frozen=True)
class Split:
    train: pl.DataFrame
    calibration: pl.DataFrame
    holdout: pl.DataFrame
    train_dates: list[date]
    calibration_dates: list[date]
    holdout_dates: list[date]
    purged_dates: list[date]
    sampled_customers: int | None = None
    sampled_from_rows: int | None = None  # the train dates' rows before sampling

    def describe(self) -> dict:
        def span(dates: list[date]) -> str:
            return f"{dates[0].isoformat()}..{dates[-1].isoformat()}" if dates else "(none)"

        sampled = (
            {"train_rows_before_sampling": self.sampled_from_rows}
            if self.sampled_from_rows is not None
            else {}
        )
        return {
            "train_dates": span(self.train_dates),
            "train_rows": self.train.height,
            **sampled,
            "calibration_dates": span(self.calibration_dates),
            "calibration_rows": self.calibration.height,
            "holdout_dates": span(self.holdout_dates),
            "holdout_rows": self.holdout.height,
            "purged_dates": [d.isoformat() for d in self.purged_dates],
        }


def split_by_time(table: pl.DataFrame, config: TrainConfig) -> Split:
    """Train / calibration / holdout by as-of date, purging dates whose labels overlap the holdout."""
    dates = sorted(table["as_of"].unique().to_list())
    need = config.holdout_dates + config.calibration_dates + 1
    if config.holdout_dates < 1 or config.calibration_dates < 1:
        raise TrainingError("holdout_dates and calibration_dates must each be at least 1")
    if len(dates) < need:
        raise TrainingError(
            f"the training set has {len(dates)} as-of dates; a time split needs at least {need} "
            f"({config.holdout_dates} holdout, {config.calibration_dates} calibration, 1 train) "
            "after purging: add dates (training_set's date count or cadence) or more history"
        )
    holdout = dates[-config.holdout_dates :]
    horizon = timedelta(days=config.horizon_days)
    earlier = [d for d in dates[: -config.holdout_dates] if d + horizon <= holdout[0]]
    purged = [d for d in dates[: -config.holdout_dates] if d + horizon > holdout[0]]
    if len(earlier) < config.calibration_dates + 1:
        raise TrainingError(
            f"after purging {len(purged)} as-of dates whose {config.horizon_days}-day label "
            f"horizon overlaps the holdout ({holdout[0].isoformat()}), {len(earlier)} remain; "
            f"{config.calibration_dates + 1} are needed: add older dates (training_set's date "
            "count) or a longer history"
        )
    calibration = earlier[-config.calibration_dates :]
    train = earlier[: -config.calibration_dates]

    def rows(chosen: list[date]) -> pl.DataFrame:
        return table.filter(pl.col("as_of").is_in(chosen))

    train_all = rows(train)
    train_rows, sampled = _sample_customers(train_all, config)
    return Split(
        train=train_rows,
        calibration=rows(calibration),
        holdout=rows(holdout),
        train_dates=train,
        calibration_dates=calibration,
        holdout_dates=holdout,
        purged_dates=purged,
        sampled_customers=sampled,
        sampled_from_rows=train_all.height if sampled is not None else None,
    )


def row_limit(rows: int, positives: int, config: TrainConfig) -> int | None:
    """The rows to sample `rows` (`positives` of them churned) down to; None: keep them all.

    `max_train_rows`, raised to what keeps about `min_train_positives` churned
    rows at the data's own churn rate: a business with rare churn keeps more rows.
    """
    if config.max_train_rows is None or rows <= config.max_train_rows:
        return None
    limit = config.max_train_rows
    if positives > 0:
        limit = max(limit, -(-config.min_train_positives * rows // positives))
    return limit if limit < rows else None


def _sample_customers(train: pl.DataFrame, config: TrainConfig) -> tuple[pl.DataFrame, int | None]:
    """Whole customers (all their dates) at random, seeded, until about `row_limit` rows."""
    positives = int(train[LABEL_COLUMN].cast(pl.Int64).sum())
    limit = row_limit(train.height, positives, config)
    if limit is None:
        return train, None
    customers = train["customer_id"].unique().sort()
    share = limit / train.height
    keep = customers.sample(fraction=share, seed=config.seed, shuffle=False)
    return train.filter(pl.col("customer_id").is_in(keep.implode())), keep.len()


# --- metrics --------------------------------------------------------------------


def top_decile(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(lift, capture) of the 10% highest scores: churn rate there / overall, share of churners."""
    n = max(1, int(np.ceil(len(y) * 0.1)))
    order = np.argsort(-p, kind="stable")[:n]
    positives = y.sum()
    if positives == 0:
        return 0.0, 0.0
    caught = y[order].sum()
    return float((caught / n) / (positives / len(y))), float(caught / positives)


def evaluate(y: np.ndarray, p: np.ndarray) -> HoldoutMetrics:
    """Holdout metrics: ROC AUC, PR AUC, Brier score, top-decile lift and churn capture."""
    from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

    y = np.asarray(y, dtype=int)
    if len(np.unique(y)) < 2:
        raise TrainingError("the holdout holds only one class: ROC AUC is undefined")
    lift, capture = top_decile(y, p)
    return HoldoutMetrics(
        roc_auc=round(float(roc_auc_score(y, p)), 4),
        pr_auc=round(float(average_precision_score(y, p)), 4),
        brier=round(float(brier_score_loss(y, p)), 5),
        top_decile_lift=round(lift, 3),
        top_decile_capture=round(capture, 4),
        base_rate=round(float(y.mean()), 4),
        rows=int(len(y)),
        positives=int(y.sum()),
    )


# --- training -------------------------------------------------------------------


@dataclass
class TrainedModels:
    candidate: object  # the evaluation model: fitted on the train dates only
    baseline: object
    features: list[str]
    split: Split
    metrics: EvaluationMetrics  # of both, on the holdout
    holdout_scores: dict[str, np.ndarray]
    holdout_labels: np.ndarray
    importance: pl.DataFrame = field(default_factory=pl.DataFrame)
    seconds: dict[str, float] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)  # feature → why it was left out
    served: PendingServed | None = None  # `train_models(serve=True)`: the served model's fits

    @property
    def holdout_customers(self) -> np.ndarray:
        return self.split.holdout["customer_id"].to_numpy()


@dataclass
class ServedModel:
    """The model that serves: the candidate's recipe fitted on every labelled date."""

    estimator: object
    rows: int
    dates: list[date]
    churned: int
    seconds: float
    calibration: str  # how its probabilities were calibrated
    sampled_from_rows: int | None = None  # every labelled row, when whole customers were sampled

    def describe(self) -> dict:
        sampled = (
            {"served_rows_before_sampling": self.sampled_from_rows}
            if self.sampled_from_rows is not None
            else {}
        )
        return {
            "served_fit": "every labelled date",
            "served_rows": self.rows,
            **sampled,
            "served_dates": f"{self.dates[0].isoformat()}..{self.dates[-1].isoformat()}",
            "served_date_count": len(self.dates),
            "served_churned": self.churned,
            "served_calibration": self.calibration,
            "served_fit_seconds": round(self.seconds, 3),
        }


def _xy(rows: pl.DataFrame, features: list[str]) -> tuple[pl.DataFrame, np.ndarray]:
    return model_input(rows, features), rows[LABEL_COLUMN].cast(pl.Int8).to_numpy()


def usable_features(
    rows: pl.DataFrame, features: list[str], spec: FeatureSpec | None = None
) -> tuple[list[str], dict[str, str]]:
    """The features that vary in `rows`; the rest with the reason each was left out."""
    x = model_input(rows, features, spec)
    categorical = set(categorical_features(features, spec))
    kept, dropped = [], {}
    for name in features:
        column = x[name]
        if column.null_count() == column.len():
            dropped[name] = "null in every training row"
        elif name not in categorical and column.drop_nulls().n_unique() < 2:
            if column.null_count() == 0:
                dropped[name] = f"the same value ({column.drop_nulls()[0]}) in every training row"
            else:
                kept.append(name)  # one value and nulls: the null is the signal
        else:
            kept.append(name)
    if not kept:
        raise TrainingError(
            f"none of the {len(features)} features varies over the training rows: the events "
            "carry no activity to learn from (check the replayed event types and timestamps)"
        )
    return kept, dropped


def fit_calibrated(kind, split: Split, features: list[str], config: TrainConfig):
    from churn_platform.ml.estimators import build_estimator, calibrate

    x, y = _xy(split.train, features)
    if len(np.unique(y)) < 2:
        raise TrainingError(
            f"the training dates {split.describe()['train_dates']} hold only one class "
            f"({int(y.sum())} churned of {len(y)} rows): nothing to learn; with no churn at all "
            "the churn definition may not fit the data (CHURN_DEFINITION)"
        )
    fitted = build_estimator(kind, features, config.seed).fit(x, y)
    xc, yc = _xy(split.calibration, features)
    if len(np.unique(yc)) < 2:
        raise TrainingError(
            f"the calibration dates {split.describe()['calibration_dates']} hold only one class: "
            "raise calibration_dates or use more customers"
        )
    return calibrate(fitted, xc, yc, config.calibration)


def train_models(
    table: pl.DataFrame,
    features: list[str],
    config: TrainConfig,
    *,
    fits: FitPool | None = None,
    serve: bool = False,
) -> TrainedModels:
    """Split by time, fit and calibrate both models, evaluate them on the holdout.

    With `fits` (an open `FitPool`), the fits run on its threads; with `serve`
    too, the served model's fits (`start_served`) are queued behind the
    evaluation's on the same threads, so they take the core the evaluation
    leaves idle (the baseline is done long before the boosting) while the
    holdout is scored and judged. `TrainedModels.served` holds them: its
    `result()` once the gate passed; leaving the pool's block otherwise cancels
    the fits not yet started. The served model is the same either way.
    """
    from threadpoolctl import threadpool_limits

    if serve and fits is None:
        raise ValueError("serve=True needs an open FitPool to queue the served fits on")
    with threadpool_limits(limits=config.threads):
        if fits is not None:
            return _train_models(table, features, config, fits, serve)
        with FitPool(config) as own:
            return _train_models(table, features, config, own, serve)


def _train_models(
    table: pl.DataFrame, features: list[str], config: TrainConfig, fits: FitPool, serve: bool
) -> TrainedModels:
    from churn_platform.ml.estimators import BASELINE_KIND, CANDIDATE_KIND, positive_probability

    split = split_by_time(table, config)
    features, dropped = usable_features(split.train, list(features))

    def timed(kind):
        started = time.perf_counter()
        return fit_calibrated(kind, split, features, config), time.perf_counter() - started

    # the two fits are independent: side by side on the pool's threads
    evaluation = fits.largest_first(
        [partial(timed, CANDIDATE_KIND), partial(timed, BASELINE_KIND)],
        [2, 1],  # the boosting takes longer
    )
    served = start_served(table, features, config, fits) if serve else None
    (candidate, candidate_s), (baseline, baseline_s) = [f.result() for f in evaluation]
    seconds = {"candidate_fit": candidate_s, "baseline_fit": baseline_s}
    xh, yh = _xy(split.holdout, features)
    scores = {
        "candidate": positive_probability(candidate, xh),
        "baseline": positive_probability(baseline, xh),
    }
    metrics = EvaluationMetrics(
        candidate=evaluate(yh, scores["candidate"]), baseline=evaluate(yh, scores["baseline"])
    )
    started = time.perf_counter()
    importance = feature_importance(candidate, xh, yh, config)
    seconds["importance"] = time.perf_counter() - started
    return TrainedModels(
        candidate=candidate,
        baseline=baseline,
        features=features,
        split=split,
        metrics=metrics,
        holdout_scores=scores,
        holdout_labels=yh,
        importance=importance,
        seconds=seconds,
        dropped=dropped,
        served=served,
    )


def fit_served(
    table: pl.DataFrame, features: list[str], config: TrainConfig, kind: ModelKind | None = None
) -> ServedModel:
    """The candidate's recipe fitted on every row of `table`, calibrated out of fold.

    The pipeline is fitted on all rows (whole customers sampled down to about
    `row_limit` rows above `max_train_rows`); its probabilities are calibrated on
    predictions each row got from a pipeline fitted without its customer
    (`calibration_folds` folds of whole customers), so the calibration never
    sees a prediction for a row its model was fitted on. `kind` defaults to the candidate's.

    The result is what `CalibratedClassifierCV(cv=folds, ensemble=False).fit`
    gives (`calibrated_out_of_fold`), but its fits (one per fold, one on every
    row) run side by side in `config.workers` threads instead of one after the
    other.
    """
    with FitPool(config) as fits:
        return start_served(table, features, config, fits, kind).result()


def start_served(
    table: pl.DataFrame,
    features: list[str],
    config: TrainConfig,
    fits: FitPool,
    kind: ModelKind | None = None,
) -> PendingServed:
    """`fit_served`'s fits queued on `fits`; the model is `.result()`."""
    from sklearn.model_selection import GroupKFold

    from churn_platform.ml.estimators import CANDIDATE_KIND, build_estimator

    every = table.height
    table, sampled = _sample_customers(table, config)
    x, y = _xy(table, features)
    if len(np.unique(y)) < 2:
        raise TrainingError("the training set holds only one class: nothing to learn")
    customers = table["customer_id"].to_numpy()
    folds = min(config.calibration_folds, len(np.unique(customers)))
    splits = list(GroupKFold(n_splits=folds).split(np.zeros(len(y)), y, customers))
    calibrated = start_out_of_fold(
        build_estimator(kind or CANDIDATE_KIND, features, config.seed),
        x,
        y,
        splits,
        method=config.calibration,
        fits=fits,
    )

    def served(estimator, seconds: float) -> ServedModel:
        return ServedModel(
            estimator=estimator,
            rows=table.height,
            dates=sorted(table["as_of"].unique().to_list()),
            churned=int(y.sum()),
            seconds=seconds,
            calibration=f"{config.calibration}, on out-of-fold predictions ({folds} folds of "
            "whole customers)",
            sampled_from_rows=every if sampled is not None else None,
        )

    return PendingServed(calibrated, served)


class PendingServed:
    """The served model's fits, queued or running on a `FitPool`; `result()` waits for them."""

    def __init__(self, calibrated: PendingCalibration, make):
        self._calibrated, self._make = calibrated, make

    def result(self) -> ServedModel:
        estimator = self._calibrated.result()
        return self._make(estimator, self._calibrated.seconds)


def calibrated_out_of_fold(
    estimator,
    x: pl.DataFrame,
    y: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    *,
    method: CalibrationMethod = "sigmoid",
    workers: int | None = None,
    threads: int | None = 1,
) -> CalibratedClassifierCV:
    """`CalibratedClassifierCV(estimator, method, cv=splits, ensemble=False).fit(x, y)`, in threads.

    scikit-learn fits the folds (`cross_val_predict`) and then the model on every
    row one after the other, each fit on one core (`threads`). These fits are
    independent: here they run in `workers` threads (default: the cores this
    process may use), the largest first, each with `threads` OpenMP threads, and
    the fitted parts are put together as scikit-learn does (same clones, same
    rows, same label encoding, same calibrator), so the model is the same to the
    bit (tests compare). The stored `cv` is the fold count: the row indices are
    not needed after fitting, and would make the stored model large.
    """
    with FitPool(workers=workers, threads=threads) as fits:
        return start_out_of_fold(estimator, x, y, splits, method=method, fits=fits).result()


def start_out_of_fold(
    estimator,
    x: pl.DataFrame,
    y: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    *,
    method: CalibrationMethod,
    fits: FitPool,
) -> PendingCalibration:
    """`calibrated_out_of_fold`'s fits queued on `fits`, the largest first."""
    from sklearn.base import clone
    from sklearn.preprocessing import LabelEncoder
    from sklearn.utils import _safe_indexing
    from sklearn.utils.validation import _check_response_method

    classes = np.unique(y)
    if len(classes) != 2:
        raise TrainingError("out-of-fold calibration needs both classes")
    # cross_val_predict fits the folds on the label-encoded target
    encoded = LabelEncoder().fit_transform(y)
    method_name = _check_response_method(
        clone(estimator), ["decision_function", "predict_proba"]
    ).__name__

    def fit_all():
        return clone(estimator).fit(x, y)

    def fit_fold(train: np.ndarray, test: np.ndarray):
        fitted = clone(estimator).fit(_safe_indexing(x, train), encoded[train])
        predicted = getattr(fitted, method_name)(_safe_indexing(x, test))
        return predicted[:, 1] if predicted.ndim == 2 else predicted

    tasks = [fit_all] + [partial(fit_fold, train, test) for train, test in splits]
    sizes = [len(y)] + [len(train) for train, _ in splits]
    return PendingCalibration(
        estimator, y, classes, splits, method, fits.largest_first(tasks, sizes), fits.threads
    )


class PendingCalibration:
    """`start_out_of_fold`'s fits; `result()` waits for them and puts the calibrated model
    together as scikit-learn does."""

    def __init__(self, estimator, y, classes, splits, method, futures, threads):
        self._estimator, self._y, self._classes = estimator, y, classes
        self._splits, self._method, self._futures = splits, method, futures
        self.threads = threads
        self.seconds = 0.0  # from the first fit's start to the model, once `result()` returned

    def result(self) -> CalibratedClassifierCV:
        from threadpoolctl import threadpool_limits

        done = [f.result() for f in self._futures]
        with threadpool_limits(limits=self.threads):  # as every fit: the same numbers
            calibrated = self._calibrate(done[0], done[1:])
        self.seconds = time.perf_counter() - min(f.started for f in self._futures)
        return calibrated

    def _calibrate(self, fitted, parts: list[np.ndarray]) -> CalibratedClassifierCV:
        from sklearn.calibration import CalibratedClassifierCV, _fit_calibrator
        from sklearn.utils._array_api import get_namespace

        y, classes, splits = self._y, self._classes, self._splits
        predictions = np.empty(len(y), dtype=np.float64)
        for (_, test), part in zip(splits, parts, strict=True):
            predictions[test] = part
        xp, _ = get_namespace(predictions)
        calibrated = CalibratedClassifierCV(
            self._estimator, method=self._method, cv=len(splits), ensemble=False
        )
        calibrated.classes_ = classes
        calibrated.calibrated_classifiers_ = [
            _fit_calibrator(fitted, predictions.reshape(-1, 1), y, classes, self._method, xp=xp)
        ]
        for name in ("n_features_in_", "feature_names_in_"):
            if hasattr(fitted, name):
                setattr(calibrated, name, getattr(fitted, name))
        return calibrated


class FitPool:
    """Independent fits side by side: `workers` threads (None: the cores this process may
    use; 1: one after the other, each when its result is asked for), each fit with
    `threads` OpenMP threads, started in the order they were queued. Leaving the block
    cancels the fits not yet started and waits for the running ones.

    OpenMP's thread count is a per-thread setting: each worker limits its own
    (`threads`), or the boosting in it would start one OpenMP thread per core.
    """

    def __init__(self, config: TrainConfig | None = None, *, workers: int | None = None, threads=1):
        if config is not None:
            workers, threads = config.workers, config.threads
        self.workers = workers or available_cores()
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> FitPool:
        if self.workers > 1:
            self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="fit")
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def submit(self, task) -> Fit:
        fit = Fit(task, self.threads)
        if self._pool is not None:
            fit.future = self._pool.submit(fit.run)
        return fit

    def largest_first(self, tasks, sizes) -> list[Fit]:
        """Each task queued, the largest `sizes` first; the fits in the order of `tasks`."""
        order = sorted(range(len(tasks)), key=lambda i: -sizes[i])
        queued = {i: self.submit(tasks[i]) for i in order}
        return [queued[i] for i in range(len(tasks))]


class Fit:
    """One queued task: `result()` waits for it (or, with no threads, runs it)."""

    def __init__(self, task, threads: int | None):
        self._task, self._threads = task, threads
        self.future = None
        self.started = float("inf")

    def run(self):
        from threadpoolctl import threadpool_limits

        self.started = time.perf_counter()
        with threadpool_limits(limits=self._threads, user_api="openmp"):
            return self._task()

    def result(self):
        if self.future is None:
            self.future = _done(self.run())
        return self.future.result()


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def feature_importance(
    estimator, x: pl.DataFrame, y: np.ndarray, config: TrainConfig
) -> pl.DataFrame:
    """Permutation importance: the drop in holdout ROC AUC when one feature is shuffled.

    Done here rather than with `sklearn.inspection.permutation_importance`,
    which turns the frame into an array the column-named pipeline cannot read.
    """
    from sklearn.metrics import roc_auc_score

    from churn_platform.ml.estimators import positive_probability, small_batch_predictor

    rng = np.random.default_rng(config.seed)
    if x.height > config.importance_rows:
        rows = np.sort(rng.choice(x.height, config.importance_rows, replace=False))
        if len(np.unique(y[rows])) == 2:  # a sample with one class has no ROC AUC: keep all
            x, y = x[rows], y[rows]
    # the same probabilities without the pipeline's per-call checks, where it can
    predict = small_batch_predictor(estimator, x.columns) or partial(
        positive_probability, estimator
    )
    reference = roc_auc_score(y, predict(x))
    # every shuffle drawn up front, in the order of the loop that drew them one by one,
    # so that the features can be scored side by side with the same numbers
    shuffles = [
        [rng.permutation(x.height) for _ in range(config.importance_repeats)] for _ in x.columns
    ]

    def drops(name: str, orders: list[np.ndarray]) -> list[float]:
        return [
            reference - roc_auc_score(y, predict(x.with_columns(x[name].gather(order).alias(name))))
            for order in orders
        ]

    with FitPool(config) as pool:
        scored = pool.largest_first(
            [
                partial(drops, name, orders)
                for name, orders in zip(x.columns, shuffles, strict=True)
            ],
            [1] * x.width,
        )
        per_feature = [f.result() for f in scored]
    means = [float(np.mean(d)) for d in per_feature]
    stds = [float(np.std(d)) for d in per_feature]
    return pl.DataFrame({"feature": x.columns, "importance": means, "std": stds}).sort(
        "importance", descending=True
    )


def model_card(
    version: str,
    trained: TrainedModels,
    training_rows: int,
    data_range: str,
    gate_reasons: list[str],
    passed: bool,
    churn: ChurnDefinition = CANCELLATION,
    served: ServedModel | None = None,
    lineage: dict | None = None,
) -> str:
    """A short markdown card: what the model is, on what data, how good, against what.

    `lineage` (`TrainingSet.lineage()`): the lake table versions the training
    set was built from, so it can be rebuilt exactly.
    """
    c, b = trained.metrics.candidate, trained.metrics.baseline
    split = trained.split.describe()
    if served is not None:
        sample = (
            f" of {served.sampled_from_rows}, whole customers sampled (max_train_rows)"
            if served.sampled_from_rows is not None
            else ""
        )
        serves = (
            f"- Serves: the same recipe fitted on every labelled date, {served.dates[0]}.."
            f"{served.dates[-1]} ({served.rows} rows{sample}, {served.churned} churned); "
            f"calibration {served.calibration}"
        )
    else:
        serves = "- Serves: nothing (the gate failed); the evaluation model is stored"
    lines = [
        f"# Churn model {version}",
        "",
        "Calibrated HistGradientBoostingClassifier (scikit-learn Pipeline); "
        "baseline: calibrated logistic regression on the same rows.",
        "",
        f"- Churn: {churn.describe()}",
        f"- Data: as-of dates {data_range}, {training_rows} rows in the training set",
        *(
            [
                f"- Lake versions: customer_features v{lineage['features_version']}, "
                f"churn_labels v{lineage['labels_version']}, training_set "
                f"v{lineage['training_set_version']} (sha256 {lineage['sha256'][:16]}…); "
                "rebuild with `churn-platform training-set rebuild --model "
                f"{version}`"
            ]
            if lineage
            else []
        ),
        f"- Evaluation split by time: train {split['train_dates']} ({split['train_rows']} "
        + (
            f"of {split['train_rows_before_sampling']} "
            if "train_rows_before_sampling" in split
            else ""
        )
        + f"rows), calibration {split['calibration_dates']} ({split['calibration_rows']}), "
        f"holdout {split['holdout_dates']} ({split['holdout_rows']}); "
        f"purged {len(split['purged_dates'])} dates whose labels overlap the holdout's",
        serves,
        f"- Features: {len(trained.features)}"
        + (
            "; left out: " + ", ".join(f"{k} ({v})" for k, v in trained.dropped.items())
            if trained.dropped
            else ""
        ),
        "",
        "Holdout metrics of the evaluation model (fitted on the train dates only):",
        "",
        "| metric | candidate | baseline |",
        "|---|---:|---:|",
    ]
    for key in ("roc_auc", "pr_auc", "brier", "top_decile_lift", "top_decile_capture"):
        lines.append(f"| {key} | {getattr(c, key)} | {getattr(b, key)} |")
    lines += ["", f"Gate: {'passed' if passed else 'failed'}", ""]
    lines += [f"- {reason}" for reason in gate_reasons]
    return "\n".join(lines) + "\n"


def gate_summary(*verdicts: Verdict) -> tuple[bool, list[str]]:
    """Whether every check passed, and every rule's line."""
    return all(v.passed for v in verdicts), [line for v in verdicts for line in v.reasons()]

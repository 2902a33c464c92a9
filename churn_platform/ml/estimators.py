"""The two scikit-learn pipelines: gradient boosting (the candidate) and a logistic baseline.

Both take `frame.model_input(table, features)` (a polars frame: numbers as
Float64 with nulls, `plan` as a string) and are calibrated afterwards on later
as-of dates than they were fitted on (`calibrate`), so that a predicted 0.2
means about one customer in five churns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import polars as pl
from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from churn_platform.features.definitions import FeatureSpec
from churn_platform.ml.flat import (
    Sigmoid,
    SmallBatchPredictor,
    _tree_walker,
    arrays_bytes,
    predictor_arrays,
    predictor_from_bytes,
)
from churn_platform.ml.frame import categorical_features, numeric_features

ModelKind = Literal["gradient_boosting", "logistic_regression"]
CANDIDATE_KIND: ModelKind = "gradient_boosting"
BASELINE_KIND: ModelKind = "logistic_regression"
CalibrationMethod = Literal["isotonic", "sigmoid"]


def _encoder() -> OneHotEncoder:
    return OneHotEncoder(handle_unknown="ignore", sparse_output=False)


def build_estimator(
    kind: ModelKind,
    features: Sequence[str],
    seed: int,
    *,
    spec: FeatureSpec | None = None,
    max_iter: int = 150,
    learning_rate: float = 0.05,
    max_depth: int = 4,
    min_samples_leaf: int = 150,
    l2_regularization: float = 3.0,
) -> Pipeline:
    """An unfitted pipeline of `kind` over `features` (seeded).

    The boosting settings are deliberately conservative (shallow trees, large
    leaves, a fixed number of rounds): its early stopping draws a random
    validation slice, i.e. rows of the same customers at the same dates it
    trains on, so it stopped late and overfit. On the simulator's data, over
    two seeds, two sizes and one or two holdout dates, these settings beat the
    logistic baseline in 7 of 8 splits; the early-stopping defaults in 3 of 8.
    150 rounds at 0.05 (the same rounds × rate as the 250 at 0.03 of that study)
    give the same holdout ROC AUC on simulated 1M and 10M events and on CDNOW,
    in about 60% of the fitting time (docs/benchmarks.md, Model).
    """
    numeric = numeric_features(features, spec)
    categorical = categorical_features(features, spec)
    if kind == "gradient_boosting":
        columns = ColumnTransformer(
            [("numeric", "passthrough", numeric), ("categorical", _encoder(), categorical)],
            verbose_feature_names_out=False,
        )
        classifier = HistGradientBoostingClassifier(
            max_iter=max_iter,
            learning_rate=learning_rate,
            max_depth=max_depth,
            min_samples_leaf=min_samples_leaf,
            l2_regularization=l2_regularization,
            early_stopping=False,
            random_state=seed,
        )
    elif kind == "logistic_regression":
        scaled = Pipeline(
            [
                (
                    "impute",
                    SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                ),
                ("scale", StandardScaler()),
            ]
        )
        columns = ColumnTransformer(
            [("numeric", scaled, numeric), ("categorical", _encoder(), categorical)],
            verbose_feature_names_out=False,
        )
        classifier = LogisticRegression(max_iter=2000, C=0.5, random_state=seed)
    else:
        raise ValueError(
            f"unknown model kind {kind!r}: use 'gradient_boosting' or 'logistic_regression'"
        )
    return Pipeline([("features", columns), ("classifier", classifier)])


def calibrate(
    fitted: Pipeline, x: pl.DataFrame, y: np.ndarray, method: CalibrationMethod = "sigmoid"
) -> CalibratedClassifierCV:
    """`fitted` left as it is, with a probability calibration learned on (x, y)."""
    calibrated = CalibratedClassifierCV(FrozenEstimator(fitted), method=method)
    return calibrated.fit(x, y)


def positive_probability(estimator, x: pl.DataFrame) -> np.ndarray:
    """P(churned) for each row of `x`."""
    return estimator.predict_proba(x)[:, 1]


def small_batch_predictor(estimator, features: Sequence[str]) -> SmallBatchPredictor | None:
    """P(churned) of `model_input` rows, without scikit-learn's per-call overhead; or None.

    For the few rows of a streaming micro-batch, `predict_proba` of the
    calibrated boosting pipeline spends its time validating and converting the
    frame (calibrator, pipeline, column transformer) and calling each of the
    150 trees from Python (docs/benchmarks.md, Streaming). This does the same
    arithmetic on one numpy matrix: the numeric columns as they are, the
    categorical ones one-hot encoded by the fitted categories (unknown → all
    zeros, as `handle_unknown="ignore"`), every tree walked at once
    (`_tree_walker`; scikit-learn's loop above `flat.WALK_ROWS` rows), then the
    fitted calibrator. Only for exactly the shapes `calibrate()` and
    `train.fit_served` give a `build_estimator("gradient_boosting")`; anything else gives None (use
    `positive_probability`). Tests check it equals `predict_proba` bit for bit.
    """
    if not isinstance(estimator, CalibratedClassifierCV):
        return None
    if len(getattr(estimator, "calibrated_classifiers_", ())) != 1:
        return None
    if list(estimator.classes_) != [0, 1]:
        return None
    calibrated = estimator.calibrated_classifiers_[0]
    if calibrated.method not in ("sigmoid", "isotonic"):
        return None
    inner = calibrated.estimator
    # calibrate() wraps the fitted pipeline in FrozenEstimator; a model calibrated out of
    # fold (train.fit_served, ensemble=False) holds the pipeline fitted on every row
    pipeline = inner.estimator if isinstance(inner, FrozenEstimator) else inner
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        return None
    columns, classifier = pipeline.steps[0][1], pipeline.steps[1][1]
    if not isinstance(columns, ColumnTransformer) or columns.remainder != "drop":
        return None
    if (
        not isinstance(classifier, HistGradientBoostingClassifier)
        or len(calibrated.calibrators) != 1
    ):
        return None
    fitted = [(name, t, cols) for name, t, cols in columns.transformers_ if name != "remainder"]
    if [name for name, _, _ in fitted] != ["numeric", "categorical"]:
        return None
    (_, passthrough, numeric), (_, encoder, categorical) = fitted
    if getattr(passthrough, "func", "?") is not None or not isinstance(encoder, OneHotEncoder):
        return None
    if (
        encoder.handle_unknown != "ignore"
        or encoder.drop is not None
        or encoder.min_frequency is not None
        or encoder.max_categories is not None
    ):
        return None
    numeric, categorical = list(numeric), list(categorical)
    if sorted(numeric + categorical) != sorted(features):
        return None
    walker = _tree_walker(classifier)
    if walker is None:
        return None
    categories = [np.asarray(c, dtype=object)[None, :] for c in encoder.categories_]
    calibrator = calibrated.calibrators[0]
    if type(calibrator) is _SigmoidCalibration:
        calibrator = Sigmoid(float(calibrator.a_), float(calibrator.b_))
    return SmallBatchPredictor(numeric, categorical, categories, walker, classifier, calibrator)


PROBE_ROWS = 512


def served_arrays(estimator, features: Sequence[str], seed: int = 0) -> bytes | None:
    """`estimator` as served arrays (`flat.predictor_arrays`), or None when it has no such form.

    Checked before it is returned: the rebuilt predictor must give `predict_proba`'s
    probabilities bit for bit on `PROBE_ROWS` seeded rows made to reach every side
    of the trees' splits (each threshold, just above it, missing values, every
    category and an unknown one).
    """
    predictor = small_batch_predictor(estimator, features)
    arrays = predictor_arrays(predictor) if predictor is not None else None
    if arrays is None:
        return None
    data = arrays_bytes(arrays)
    probe = _probe(predictor, list(features), seed)
    rebuilt = predictor_from_bytes(data)
    if not np.array_equal(rebuilt(probe), positive_probability(estimator, probe)):
        return None
    return data


def _probe(predictor: SmallBatchPredictor, features: list[str], seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    flat = predictor.flat
    split = ~flat.leaf
    columns: dict[str, pl.Series] = {}
    for j, name in enumerate(predictor.numeric):
        cuts = flat.threshold[split & (flat.feature == j)]
        if not len(cuts):
            cuts = np.array([0.0])
        values = rng.choice(cuts, PROBE_ROWS)
        values = np.where(rng.random(PROBE_ROWS) < 0.5, np.nextafter(values, np.inf), values)
        values[rng.random(PROBE_ROWS) < 0.1] = np.nan
        columns[name] = pl.Series(name, values, dtype=pl.Float64)
    for name, fitted in zip(predictor.categorical, predictor.categories, strict=True):
        choices = [*fitted.ravel().tolist(), "(a category it never saw)"]
        columns[name] = pl.Series(name, rng.choice(np.array(choices, dtype=object), PROBE_ROWS))
    return pl.DataFrame([columns[name] for name in features])

"""The two scikit-learn pipelines: gradient boosting (the candidate) and a logistic baseline.

Both take `frame.model_input(table, features)` (a polars frame: numbers as
Float64 with nulls, `plan` as a string) and are calibrated afterwards on later
as-of dates than they were fitted on (`calibrate`), so that a predicted 0.2
means about one customer in five churns.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV, _SigmoidCalibration
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from churn_platform.features.definitions import FeatureSpec
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
    max_iter: int = 250,
    learning_rate: float = 0.03,
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


WALK_ROWS = 1024  # rows up to which small_batch_predictor walks all trees at once


def small_batch_predictor(estimator, features: Sequence[str]) -> SmallBatchPredictor | None:
    """P(churned) of `model_input` rows, without scikit-learn's per-call overhead; or None.

    For the few rows of a streaming micro-batch, `predict_proba` of the
    calibrated boosting pipeline spends its time validating and converting the
    frame (calibrator, pipeline, column transformer) and calling each of the
    250 trees from Python (docs/benchmarks.md, Streaming). This does the same
    arithmetic on one numpy matrix: the numeric columns as they are, the
    categorical ones one-hot encoded by the fitted categories (unknown → all
    zeros, as `handle_unknown="ignore"`), every tree walked at once
    (`_tree_walker`; scikit-learn's loop above `WALK_ROWS` rows), then the
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
    return SmallBatchPredictor(
        numeric, categorical, categories, walker, classifier, calibrated.calibrators[0]
    )


@dataclass(frozen=True, eq=False)
class SmallBatchPredictor:
    """`small_batch_predictor`'s arithmetic: called with `model_input` rows as a frame, or
    with `rows()` as dicts (`ml.frame.input_rows`), which skips the frame altogether."""

    numeric: list[str]
    categorical: list[str]
    categories: list[np.ndarray]
    trees: Callable[[np.ndarray], np.ndarray]
    classifier: HistGradientBoostingClassifier
    calibrator: object

    def __call__(self, x: pl.DataFrame) -> np.ndarray:
        return self.probability(self.matrix(x))

    def rows(self, rows: Sequence[Mapping]) -> np.ndarray:
        """P(churned) of rows given as dicts of `input_rows` (None: missing)."""
        return self.probability(self.matrix_rows(rows))

    def matrix(self, x: pl.DataFrame) -> np.ndarray:
        """The classifier's input for `model_input` rows: numbers, then one-hot categories."""
        parts = [x.select(self.numeric).to_numpy().astype(np.float64, copy=False)]
        for name, fitted in zip(self.categorical, self.categories, strict=True):
            values = x[name].to_numpy().astype(object)[:, None]
            parts.append((values == fitted).astype(np.float64))
        return np.hstack(parts)

    def matrix_rows(self, rows: Sequence[Mapping]) -> np.ndarray:
        """`matrix` of rows given as dicts of `input_rows`."""
        nan = float("nan")
        parts = [
            np.array(
                [[nan if (v := r[name]) is None else v for name in self.numeric] for r in rows],
                dtype=np.float64,
            ).reshape(len(rows), len(self.numeric))
        ]
        for name, fitted in zip(self.categorical, self.categories, strict=True):
            values = np.empty((len(rows), 1), dtype=object)
            values[:, 0] = [r[name] for r in rows]
            parts.append((values == fitted).astype(np.float64))
        return np.hstack(parts)

    def column_features(self) -> list[str]:
        """The model feature each column of `matrix` comes from (a category's one-hot
        columns all come from it)."""
        out = list(self.numeric)
        for name, fitted in zip(self.categorical, self.categories, strict=True):
            out += [name] * fitted.shape[1]
        return out

    def leaves(self, matrix: np.ndarray) -> np.ndarray | None:
        """rows × trees: the leaf (global node id, `FlatTrees`) each row reaches in each
        tree, to hand to `probability` and the reasons alike; None without flat trees.

        Up to `WALK_ROWS` rows numpy walks every tree at once; beyond, scikit-learn's
        compiled loop runs one tree at a time with each leaf's value replaced by its
        node id (exact in a float64), which costs what `decision_function` does.
        """
        if not isinstance(self.trees, _Walker):
            return None
        flat = self.trees.flat
        if len(matrix) <= WALK_ROWS:
            return flat.leaves(matrix)
        if matrix.ndim != 2 or matrix.shape[1] != flat.n_features:
            raise ValueError(f"expected {flat.n_features} columns, got shape {matrix.shape}")
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        known, f_idx_map = self.classifier._bin_mapper.make_known_categories_bitsets()
        threads = _openmp_effective_n_threads()
        x = np.ascontiguousarray(matrix, dtype=np.float64)
        out = np.empty((len(self._leaf_predictors), len(x)), dtype=np.int32)
        for t, predictor in enumerate(self._leaf_predictors):
            out[t] = predictor.predict(x, known, f_idx_map, threads)
        return out.T  # a view: `margin` reads it by tree as it was written

    @functools.cached_property
    def _leaf_predictors(self) -> list:
        from sklearn.ensemble._hist_gradient_boosting.predictor import TreePredictor

        roots = self.trees.flat.roots
        predictors = []
        for t, (predictor,) in enumerate(self.classifier._predictors):
            nodes = predictor.nodes.copy()
            nodes["value"] = roots[t] + np.arange(len(nodes))
            predictors.append(
                TreePredictor(
                    nodes, predictor.binned_left_cat_bitsets, predictor.raw_left_cat_bitsets
                )
            )
        return predictors

    def probability(self, matrix: np.ndarray, leaves: np.ndarray | None = None) -> np.ndarray:
        """P(churned) of a `matrix` (`leaves`: its `leaves()`, if already found)."""
        # the walk holds (rows × trees) indices: scikit-learn's own loop for big batches
        if leaves is not None and isinstance(self.trees, _Walker):
            raw = self.trees.flat.margin(leaves)
        elif len(matrix) <= WALK_ROWS:
            raw = self.trees(matrix)
        else:
            raw = self.classifier.decision_function(matrix)
        calibrator = self.calibrator
        if type(calibrator) is _SigmoidCalibration:
            # its predict(), without the input checks that cost more than the arithmetic
            probability = expit(-(calibrator.a_ * raw + calibrator.b_))
        else:
            probability = calibrator.predict(raw)
        # as CalibratedClassifierCV: a hair above 1 is 1
        probability[(probability > 1.0) & (probability <= 1.0 + 1e-5)] = 1.0
        return probability


@dataclass(frozen=True, eq=False)
class FlatTrees:
    """The nodes of every tree of a binary boosting in flat arrays (node ids are global).

    Leaves point at themselves, so `depth` steps from the roots reach every
    row's leaf in every tree. `count` is the training rows that reached a node.
    """

    roots: np.ndarray
    left: np.ndarray
    right: np.ndarray
    feature: np.ndarray  # a leaf's is 0 (never read: a leaf's step stays put)
    threshold: np.ndarray
    missing_left: np.ndarray
    value: np.ndarray
    count: np.ndarray
    leaf: np.ndarray
    node_depth: np.ndarray
    depth: int
    baseline: float
    n_features: int

    def leaves(self, x: np.ndarray) -> np.ndarray:
        """rows × trees: the (global) node id of the leaf each row of `x` reaches in each tree.

        Every node's decision for every row at once (a few thousand nodes), then
        `depth` steps that only look decisions up, with scikit-learn's rule (NaN goes
        the node's missing side, else left when value <= threshold).
        """
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} columns, got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float64)
        values = x[:, self.feature]
        go_left = np.where(np.isnan(values), self.missing_left, values <= self.threshold)
        flat = go_left.ravel()
        at = np.broadcast_to(self.roots, (x.shape[0], len(self.roots))).copy()
        row_start = (np.arange(x.shape[0]) * len(self.feature))[:, None]
        left, right = self.left, self.right
        for _ in range(self.depth):
            at = np.where(flat[row_start + at], left[at], right[at])
        return at

    def margin(self, leaves: np.ndarray) -> np.ndarray:
        """`decision_function` from `leaves`: leaf values added tree by tree after the
        baseline, in scikit-learn's order, so the sums are the same floats."""
        if len(leaves) > 1024:  # many rows: one vector add per tree (same order, same floats)
            margin = np.full(len(leaves), 0.0 + self.baseline)
            columns = np.ascontiguousarray(leaves.T)
            for tree in columns:
                margin += self.value[tree]
            return margin
        values = self.value[leaves]
        raw = np.empty((values.shape[0], values.shape[1] + 1))
        raw[:, 0] = 0.0 + self.baseline
        raw[:, 1:] = values
        return np.cumsum(raw, axis=1)[:, -1]  # sequential: baseline + tree 1 + tree 2 + ...


def flat_trees(classifier: HistGradientBoostingClassifier) -> FlatTrees | None:
    """`classifier`'s trees as `FlatTrees`; None for anything but numeric splits of a binary
    boosting without a preprocessor."""
    if getattr(classifier, "n_trees_per_iteration_", None) != 1:
        return None
    if getattr(classifier, "_preprocessor", None) is not None:
        return None
    if getattr(classifier, "is_categorical_", None) is not None:
        return None
    predictors = [iteration[0] for iteration in classifier._predictors]
    if not predictors:
        return None
    offsets = np.cumsum([0] + [len(p.nodes) for p in predictors[:-1]])
    nodes = np.concatenate([p.nodes for p in predictors])
    if nodes["is_categorical"].any():
        return None
    base = np.repeat(offsets, [len(p.nodes) for p in predictors])
    leaf = nodes["is_leaf"].astype(bool)
    own = np.arange(len(nodes))
    return FlatTrees(
        roots=offsets.astype(np.int64),
        left=np.where(leaf, own, nodes["left"].astype(np.int64) + base),
        right=np.where(leaf, own, nodes["right"].astype(np.int64) + base),
        feature=np.where(leaf, 0, nodes["feature_idx"].astype(np.int64)),
        threshold=nodes["num_threshold"].astype(np.float64),
        missing_left=nodes["missing_go_to_left"].astype(bool),
        value=nodes["value"].astype(np.float64),
        count=nodes["count"].astype(np.float64),
        leaf=leaf,
        node_depth=nodes["depth"].astype(np.int64),
        depth=int(nodes["depth"].max()),
        baseline=float(np.asarray(classifier._baseline_prediction).ravel()[0]),
        n_features=int(classifier.n_features_in_),
    )


def _tree_walker(
    classifier: HistGradientBoostingClassifier,
) -> Callable[[np.ndarray], np.ndarray] | None:
    """The binary boosting's `decision_function` for a numeric matrix, all trees at once
    (`FlatTrees.leaves`, then `FlatTrees.margin`). None where `flat_trees` is."""
    trees = flat_trees(classifier)
    if trees is None:
        return None
    return _Walker(trees)


@dataclass(frozen=True, eq=False)
class _Walker:
    flat: FlatTrees

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.flat.margin(self.flat.leaves(x))

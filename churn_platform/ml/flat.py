"""The served model as plain arrays: its trees, encoding and calibration, without scikit-learn.

`SmallBatchPredictor` does a calibrated boosting pipeline's arithmetic on numpy
arrays (`estimators.small_batch_predictor` builds it from the fitted pipeline;
tests hold it equal to `predict_proba` bit for bit). `predictor_arrays` and
`predictor_from_bytes` store and rebuild it as an `.npz` of numbers and strings
(read with `allow_pickle=False`: nothing in it can run code), which the registry
writes beside `model.skops`. A process that scores from it never imports
scikit-learn or skops: importing them and auditing the skops file took 2-4 s of
every scoring run (docs/benchmarks.md, Freshness).
"""

from __future__ import annotations

import functools
import io
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

if TYPE_CHECKING:
    from sklearn.ensemble import HistGradientBoostingClassifier

WALK_ROWS = 1024  # rows up to which small_batch_predictor walks all trees at once
ARRAYS_FORMAT = 1  # the layout `predictor_arrays` writes


@dataclass(frozen=True)
class Sigmoid:
    """A fitted sigmoid calibration (scikit-learn's `_SigmoidCalibration`, its two numbers):
    P = expit(-(a_ · margin + b_))."""

    a_: float
    b_: float


@dataclass(frozen=True, eq=False)
class SmallBatchPredictor:
    """`small_batch_predictor`'s arithmetic: called with `model_input` rows as a frame, or
    with `rows()` as dicts (`ml.frame.input_rows`), which skips the frame altogether.

    `classifier` is the fitted boosting when built from it (its compiled loop finds the
    leaves of large batches), None when rebuilt from arrays (numpy walks every batch,
    `WALK_ROWS` rows at a time). `calibrator` is a `Sigmoid`, or scikit-learn's
    fitted isotonic calibration.
    """

    numeric: list[str]
    categorical: list[str]
    categories: list[np.ndarray]
    trees: Callable[[np.ndarray], np.ndarray]
    classifier: HistGradientBoostingClassifier | None
    calibrator: object

    @property
    def flat(self) -> FlatTrees | None:
        """The trees as flat arrays (None: a shape only scikit-learn walks)."""
        return self.trees.flat if isinstance(self.trees, _Walker) else None

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
        if self.classifier is None:
            return np.concatenate(
                [flat.leaves(matrix[s : s + WALK_ROWS]) for s in range(0, len(matrix), WALK_ROWS)]
            )
        if matrix.ndim != 2 or matrix.shape[1] != flat.n_features:
            raise ValueError(f"expected {flat.n_features} columns, got shape {matrix.shape}")
        from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

        known, f_idx_map = self.classifier._bin_mapper.make_known_categories_bitsets()
        threads = _openmp_effective_n_threads()
        x = np.ascontiguousarray(matrix, dtype=np.float64)
        # rows × trees, written a tree (a column) at a time: cheaper than writing by tree
        # and transposing, and what the contributions' product reads as it is
        out = np.empty((len(x), len(self._leaf_predictors)), dtype=np.int32)
        for t, predictor in enumerate(self._leaf_predictors):
            out[:, t] = predictor.predict(x, known, f_idx_map, threads)
        return out

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
        elif self.classifier is None:
            raw = self.trees.flat.margin(self.leaves(matrix))
        else:
            raw = self.classifier.decision_function(matrix)
        calibrator = self.calibrator
        if isinstance(calibrator, Sigmoid):
            from scipy.special import expit

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

        Every tree at once, `depth` steps down from the roots, with scikit-learn's
        rule (NaN goes the node's missing side, else left when value <= threshold).
        Each step looks at the one node each row is at in each tree, not at every
        node: 5.9 against 22.7 µs a row for 150 trees of depth 4 (docs/benchmarks.md,
        Scale), and faster for five rows too.
        """
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected {self.n_features} columns, got shape {x.shape}")
        x = np.ascontiguousarray(x, dtype=np.float64)
        values = x.ravel()
        row_start = (np.arange(x.shape[0]) * x.shape[1])[:, None]
        at = np.broadcast_to(self.roots, (x.shape[0], len(self.roots))).copy()
        children, feature, threshold = self._children, self.feature, self.threshold
        missing_right = self._missing_right
        for _ in range(self.depth):
            value = values[row_start + feature[at]]
            right = np.where(np.isnan(value), missing_right[at], value > threshold[at])
            at = children[2 * at + right]
        return at

    @functools.cached_property
    def _children(self) -> np.ndarray:
        """Each node's left child at 2·node, its right at 2·node + 1 (a leaf: itself twice)."""
        return np.stack([self.left, self.right], axis=1).ravel()

    @functools.cached_property
    def _missing_right(self) -> np.ndarray:
        return ~self.missing_left

    def margin(self, leaves: np.ndarray) -> np.ndarray:
        """`decision_function` from `leaves`: leaf values added tree by tree after the
        baseline, in scikit-learn's order, so the sums are the same floats."""
        if len(leaves) > 1024:  # many rows: one vector add per tree (same order, same floats)
            margin = np.full(len(leaves), 0.0 + self.baseline)
            for tree in leaves.T:  # `take` reads a strided column as fast as a copy of it
                margin += self.value.take(tree)
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


# the served arrays -----------------------------------------------------------------

_TREE_FIELDS = ("depth", "baseline", "n_features")  # FlatTrees' scalars; the rest are arrays


def predictor_arrays(predictor: SmallBatchPredictor) -> dict[str, np.ndarray] | None:
    """Everything `predictor` computes with, as named arrays; None when something in it is
    not plain numbers and strings (an isotonic calibration, a category that is not text)."""
    flat = predictor.flat
    if flat is None or not isinstance(predictor.calibrator, Sigmoid):
        return None
    categories = [np.asarray(c, dtype=object).ravel() for c in predictor.categories]
    if any(not all(isinstance(v, str) for v in c) for c in categories):
        return None
    arrays = {
        "format": np.array(ARRAYS_FORMAT),
        "numeric": np.array(predictor.numeric, dtype=str),
        "categorical": np.array(predictor.categorical, dtype=str),
        "sigmoid": np.array([predictor.calibrator.a_, predictor.calibrator.b_], dtype=np.float64),
    }
    for i, values in enumerate(categories):
        arrays[f"categories_{i}"] = np.array(values.tolist(), dtype=str)
    for field in fields(FlatTrees):
        arrays[f"trees_{field.name}"] = np.asarray(getattr(flat, field.name))
    return arrays


def arrays_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """`arrays` as an uncompressed `.npz`."""
    sink = io.BytesIO()
    np.savez(sink, **arrays)
    return sink.getvalue()


class ArraysError(ValueError):
    """Served arrays that do not describe a predictor this code can build."""


def predictor_from_bytes(data: bytes) -> SmallBatchPredictor:
    """The predictor `arrays_bytes(predictor_arrays(p))` describes (numbers and strings only)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files}
        if int(arrays["format"]) != ARRAYS_FORMAT:
            raise ArraysError(f"format {int(arrays['format'])}, this code reads {ARRAYS_FORMAT}")
        categorical = arrays["categorical"].tolist()
        categories = [
            np.asarray(arrays[f"categories_{i}"].tolist(), dtype=object)[None, :]
            for i in range(len(categorical))
        ]
        values = {}
        for field in fields(FlatTrees):
            value = arrays[f"trees_{field.name}"]
            values[field.name] = value.item() if field.name in _TREE_FIELDS else value
        trees = FlatTrees(**values)
        a, b = arrays["sigmoid"].tolist()
    except ArraysError:
        raise
    except (KeyError, ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ArraysError(f"not served arrays: {exc}") from exc
    return SmallBatchPredictor(
        arrays["numeric"].tolist(), categorical, categories, _Walker(trees), None, Sigmoid(a, b)
    )

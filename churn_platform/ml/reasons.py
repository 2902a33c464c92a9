"""Why a customer is at risk: the features that pushed the champion's score up the most.

Every score carries its top reasons (`TOP_REASONS`): the feature, a sentence a
person reads ("login events in the last 28 days: 2 (typical 14)"), the
customer's value, a typical value (the median among the customers active at the
last date the model was trained on, stored with the model), and the size of the
contribution.

Contributions are the tree-path decomposition of the boosting's raw margin (the
log-odds before calibration), computed over the trees `flat.flat_trees`
already flattens for the small-batch predictor: walking a row down each tree,
every split moves the expected margin from the mean of the node (over the
training rows that reached it) to the mean of the child the row takes, and that
move is credited to the split's feature. So, exactly for every row,

    base + sum of the contributions = the model's margin,

where `base` is the baseline plus each tree's mean over its training rows
(a test checks it). Calibration is monotone, so a feature that raises the margin
raises the probability. Against the `shap` package's TreeSHAP on the same
models see docs/benchmarks.md (Reasons): both are exact in this sense; this walk
costs about one more prediction, TreeSHAP far more.

The batch scores (`score.score_table`) and the streaming scorer ask the same
`Reasoner` with the same model input, so their reasons are the same values and
the same text (the parity test checks it).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa

from churn_platform.features.definitions import FeatureColumn, FeatureSpec, Kind
from churn_platform.lake import tables

if TYPE_CHECKING:  # scikit-learn loads with a model, not with this module
    from churn_platform.ml.flat import FlatTrees, SmallBatchPredictor
    from churn_platform.ml.registry import LoadedModel

TOP_REASONS = 3
# rows explained at once: (rows × trees) leaves and a sparse matrix of a few MB
CONTRIBUTION_CHUNK_ROWS = 8192
REASON_FIELDS = {
    "feature": pl.String(),
    "text": pl.String(),
    "value": pl.Float64(),
    "typical": pl.Float64(),
    "contribution": pl.Float64(),
}
REASONS_DTYPE = pl.List(pl.Struct(REASON_FIELDS))
REASONS_ARROW = tables.SCORES_SCHEMA.field("reasons").type  # the lake's, one owner
TYPICAL_KEY = "typical_values"  # where training.json holds them
_WHOLE_KINDS = frozenset({Kind.COUNT, Kind.ACTIVE_DAYS, Kind.RECENCY, Kind.TENURE})


# --- contributions ---------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TreePathContributions:
    """Each feature's share of a binary boosting's margin, per row (see the module docstring).

    A row's contributions from one tree depend only on the leaf it reaches: the
    moves along that leaf's path. So every leaf's path is tabled once
    (`path_feature`, `path_move`: at most `depth` moves); a batch finds each
    row's leaf in every tree (`leaves`) and adds the tabled moves up.
    """

    trees: FlatTrees
    mean: np.ndarray  # per node: the mean margin of the training rows that reached it
    path_feature: np.ndarray  # per node (leaves used): the explained feature of each move
    path_move: np.ndarray  # per node: each move's size (0: no move)
    n_features: int
    base: float

    @functools.cached_property
    def _moves(self):
        """nodes × features (sparse): a leaf's row holds its path's moves by feature."""
        from scipy import sparse

        nodes, depth = self.path_feature.shape
        moves = sparse.csr_matrix(
            (
                self.path_move.ravel(),
                (np.repeat(np.arange(nodes), depth), self.path_feature.ravel()),
            ),
            shape=(nodes, self.n_features),
        )
        moves.eliminate_zeros()
        moves.sort_indices()
        return moves

    @classmethod
    def of(cls, trees: FlatTrees, column_feature: Sequence[int]) -> TreePathContributions:
        mean = trees.value.copy()
        internal = ~trees.leaf
        # children sit deeper than their parent: fill the means from the deepest level up
        for level in range(trees.depth - 1, -1, -1):
            at = np.flatnonzero(internal & (trees.node_depth == level))
            left, right = trees.left[at], trees.right[at]
            cl, cr = trees.count[left], trees.count[right]
            total = cl + cr
            mean[at] = np.where(
                total > 0,
                (cl * mean[left] + cr * mean[right]) / np.where(total > 0, total, 1.0),
                0.5 * (mean[left] + mean[right]),
            )
        to_feature = np.asarray(column_feature, dtype=np.int64)
        parent = np.full(len(mean), -1, dtype=np.int64)
        splits = np.flatnonzero(internal)
        parent[trees.left[splits]] = splits
        parent[trees.right[splits]] = splits
        depth = max(trees.depth, 1)
        path_feature = np.zeros((len(mean), depth), dtype=np.int64)
        path_move = np.zeros((len(mean), depth))
        at = np.arange(len(mean))
        for step in range(depth):  # from each node up to its root
            above = parent[at]
            moved = above >= 0
            safe = np.where(moved, above, 0)
            path_feature[:, step] = np.where(moved, to_feature[trees.feature[safe]], 0)
            path_move[:, step] = np.where(moved, mean[at] - mean[safe], 0.0)
            at = np.where(moved, above, at)
        base = trees.baseline + float(mean[trees.roots].sum())
        width = int(to_feature.max()) + 1 if len(to_feature) else 0
        return cls(trees, mean, path_feature, path_move, width, base)

    def __call__(self, matrix: np.ndarray, leaves: np.ndarray | None = None) -> np.ndarray:
        """rows × features: each feature's contribution to each row's margin (`leaves`:
        the leaves `matrix` reaches, `FlatTrees.leaves`, if already found).

        One sparse product: (rows × nodes, a 1 at each leaf reached) · (nodes ×
        features, `_moves`); each row's sums depend on that row alone, so a customer
        gets the same floats in a batch of five as in one of a million.
        """
        trees = self.trees
        if matrix.ndim != 2 or matrix.shape[1] != trees.n_features:
            raise ValueError(f"expected {trees.n_features} columns, got shape {matrix.shape}")
        n = len(matrix)
        out = np.zeros((n, self.n_features))
        for start in range(0, n, CONTRIBUTION_CHUNK_ROWS):
            chunk = (
                trees.leaves(matrix[start : start + CONTRIBUTION_CHUNK_ROWS])
                if leaves is None
                else leaves[start : start + CONTRIBUTION_CHUNK_ROWS]
            )
            self._add_moves(chunk, out[start : start + len(chunk)])
        return out

    def _add_moves(self, leaves: np.ndarray, out: np.ndarray) -> None:
        """`out` (zeros) += (rows × nodes, a 1 at each leaf reached) · `_moves`.

        scipy's compiled product, asked directly: the public `@` first runs a pass that
        only counts the result's entries, a third of the time here, and the count is
        known (at most rows × features). If this scipy's internals differ, `@` does it.
        """
        from scipy import sparse

        m, per_row = leaves.shape
        index = np.ascontiguousarray(leaves, dtype=np.int32).ravel()
        starts, ones = self._reached_rows(m, per_row)
        moves = self._moves
        try:
            from scipy.sparse import _sparsetools

            row_starts = np.empty(m + 1, dtype=np.int32)
            columns = np.empty(m * self.n_features, dtype=np.int32)
            sums = np.empty(m * self.n_features)
            _sparsetools.csr_matmat(
                m,
                self.n_features,
                starts,
                index,
                ones,
                *self._moves_int32,
                moves.data,
                row_starts,
                columns,
                sums,
            )
        except (ImportError, AttributeError, TypeError, ValueError):
            reached = sparse.csr_matrix((ones, index, starts), shape=(m, len(self.path_feature)))
            out += (reached @ moves).toarray()
            return
        filled = int(row_starts[-1])
        at = np.repeat(np.arange(0, m * self.n_features, self.n_features), np.diff(row_starts))
        np.put(out, at + columns[:filled], sums[:filled])  # `out` is a block of whole rows

    @functools.cached_property
    def _moves_int32(self) -> tuple[np.ndarray, np.ndarray]:
        return self._moves.indptr.astype(np.int32), self._moves.indices.astype(np.int32)

    def _reached_rows(self, rows: int, per_row: int) -> tuple[np.ndarray, np.ndarray]:
        """The row starts and the ones of a (rows × nodes) matrix with `per_row` entries a
        row: views of arrays kept for the most rows asked so far (allocating ~10 MB of
        ones for each 8,192-row slice cost a sixth of the product; a scorer's micro-batches
        keep a few kB)."""
        kept = self.__dict__.get("_reached")
        if kept is None or len(kept[0]) < rows + 1 or kept[2] != per_row:
            starts = np.arange(0, rows * per_row + 1, per_row, dtype=np.int32)
            ones = np.ones(rows * per_row)
            starts.flags.writeable = ones.flags.writeable = False
            kept = self.__dict__["_reached"] = (starts, ones, per_row)
        return kept[0][: rows + 1], kept[1][: rows * per_row]


# --- typical values ----------------------------------------------------------------


def typical_values(table: pl.DataFrame, features: Sequence[str], spec: FeatureSpec | None) -> dict:
    """What a typical customer holds, for the reasons' comparison: per feature the median
    (a category: the most common value) among the customers of `table`'s latest as-of
    date (a training set: the customers active then). Stored in training.json."""
    from churn_platform.ml.frame import model_input

    if table.is_empty():
        return {"as_of": None, "values": {}}
    latest = table["as_of"].max()
    x = model_input(table.filter(pl.col("as_of") == latest), features, spec)
    values: dict[str, float | str | None] = {}
    for name in features:
        column = x[name]
        if column.dtype == pl.String:
            counts = column.drop_nulls().value_counts(sort=True)
            values[name] = (
                None
                if counts.is_empty()
                else counts.sort(["count", name], descending=[True, False])[name][0]
            )
        else:
            median = column.drop_nans().median()
            values[name] = None if median is None else float(median)
    return {"as_of": latest.isoformat(), "values": values}


# --- reasons -------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Reasoner:
    """The top reasons of a model's scores, from its model input (`frame.model_input` rows)."""

    predictor: SmallBatchPredictor
    contributions: TreePathContributions
    features: list[str]  # explained features: the predictor's numeric, then categorical ones
    inputs: list[str]  # the model's feature list (its input's order)
    spec: FeatureSpec
    columns: list[FeatureColumn]
    typical: list[float | str | None]
    top: int = TOP_REASONS
    # +1: a higher margin is a higher probability (every calibration fitted on real
    # churn); -1 for a sigmoid calibration fitted decreasing (no signal: it can be)
    direction: float = 1.0

    @classmethod
    def of(
        cls,
        model: LoadedModel,
        predictor: SmallBatchPredictor | None = None,
        top: int = TOP_REASONS,
    ) -> Reasoner | None:
        """The reasoner of a registry model (typical values from its training record).

        Without `predictor`, the model's own for small tables (its served arrays, where
        it has them: no scikit-learn import)."""
        stored = (model.record.training.get(TYPICAL_KEY) or {}).get("values") or {}
        predictor = predictor or model.predictor_for(0)
        if predictor is None:
            return None
        return cls.build(
            None,
            model.features,
            model.record.spec,
            stored,
            predictor=predictor,
            top=top,
        )

    @classmethod
    def build(
        cls,
        estimator: object,
        features: Sequence[str],
        spec: FeatureSpec | None = None,
        typical: Mapping[str, float | str | None] | None = None,
        *,
        predictor: SmallBatchPredictor | None = None,
        top: int = TOP_REASONS,
    ) -> Reasoner | None:
        """The reasoner of a calibrated boosting pipeline over `features`; None when its
        shape is not one `estimators.small_batch_predictor` knows (nothing to walk)."""
        if predictor is None:
            from churn_platform.ml.estimators import small_batch_predictor

            predictor = small_batch_predictor(estimator, features)
        if predictor is None:
            return None
        trees = predictor.flat
        if trees is None:
            return None
        explained = [*predictor.numeric, *predictor.categorical]
        index = {name: i for i, name in enumerate(explained)}
        contributions = TreePathContributions.of(
            trees, [index[name] for name in predictor.column_features()]
        )
        spec = spec or FeatureSpec.from_columns(features)
        typical = typical or {}
        slope = getattr(predictor.calibrator, "a_", None)  # sigmoid: p = 1 / (1 + exp(a·m + b))
        return cls(
            predictor,
            contributions,
            explained,
            list(features),
            spec,
            [spec.column(name) for name in explained],
            [typical.get(name) for name in explained],
            top,
            -1.0 if slope is not None and float(slope) > 0 else 1.0,
        )

    @functools.cached_property
    def labels(self) -> list[str]:
        return [column.label for column in self.columns]

    @property
    def base(self) -> float:
        return self.contributions.base

    def table(self, table: pl.DataFrame) -> pa.Array:
        """`frame` of a feature table's rows (extra columns ignored)."""
        return self.score_table(table)[1]

    def score_table(self, table: pl.DataFrame) -> tuple[np.ndarray, pa.Array]:
        """P(churned) and reasons (`REASONS_ARROW`) of a feature table's rows, from one walk
        down the trees (the probabilities are `predict_proba`'s floats: `estimators`)."""
        from churn_platform.ml.frame import model_input

        probabilities, chosen = [], []
        # slices of a few MB: on these machines a fresh array of hundreds of MB costs more
        # in page faults than the arithmetic done in it (docs/benchmarks.md, Reasons)
        for rows in table.iter_slices(CONTRIBUTION_CHUNK_ROWS):
            x = model_input(rows, self.inputs, self.spec)
            matrix = self.predictor.matrix(x)
            leaves = self.predictor.leaves(matrix)
            probabilities.append(self.predictor.probability(matrix, leaves))
            chosen.append(self._top(matrix, x, leaves))
        if not chosen:
            return np.empty(0), pa.array([], type=REASONS_ARROW)
        # the words once for the whole table: a value repeats across slices
        return np.concatenate(probabilities), self._arrow(_Chosen.concat(chosen))

    def frame(self, x: pl.DataFrame) -> pa.Array:
        """The reasons of each row of `x` (`model_input` rows), as an Arrow list array
        (`REASONS_ARROW`)."""
        matrix = self.predictor.matrix(x)
        return self._arrow(self._top(matrix, x, self.predictor.leaves(matrix)))

    def reasons(
        self, matrix: np.ndarray, x: pl.DataFrame, leaves: np.ndarray | None = None
    ) -> list[list[dict]]:
        """The reasons of each row of `x` (`model_input` rows) whose `predictor.matrix` is
        `matrix` (`leaves`: as in `rows`)."""
        return self._dicts(self._top(matrix, x, leaves))

    def rows(
        self,
        rows: Sequence[Mapping],
        matrix: np.ndarray | None = None,
        leaves: np.ndarray | None = None,
    ) -> list[list[dict]]:
        """The reasons of rows given as dicts of `input_rows` (`matrix`: their
        `predictor.matrix_rows`, `leaves`: its `predictor.leaves`, if already found)."""
        if matrix is None:
            matrix = self.predictor.matrix_rows(rows)
        return self._dicts(self._top(matrix, rows, leaves))

    def _top(self, matrix: np.ndarray, source, leaves: np.ndarray | None) -> _Chosen:
        """The chosen reasons as flat arrays (rows in order, each row's largest first)."""
        if leaves is None:
            leaves = self.predictor.leaves(matrix)
        contribution = self.contributions(matrix, leaves)
        if self.direction < 0:
            contribution = -contribution
        order = _largest(contribution, self.top)
        chosen = np.take_along_axis(contribution, order, axis=1)
        keep = chosen > 0.0  # sorted: the pushes up come first, the rest is dropped
        rows, slots = np.nonzero(keep)
        features = order[rows, slots]
        n_numeric = len(self.predictor.numeric)
        numeric = features < n_numeric
        numbers = matrix[rows, np.where(numeric, features, 0)]
        categories: dict[int, object] = {}
        if not numeric.all():
            numbers = np.where(numeric, numbers, np.nan)
            categorical = self.predictor.categorical
            if isinstance(source, pl.DataFrame):
                columns = [source[name].to_list() for name in categorical]
            else:
                columns = [[r[name] for r in source] for name in categorical]
            for i in np.flatnonzero(~numeric).tolist():
                categories[i] = columns[features[i] - n_numeric][rows[i]]
        return _Chosen(keep.sum(axis=1), features, numbers, chosen[rows, slots], categories)

    def _text_of(self, j: int, value: float | str | None) -> str:
        """The sentence of feature `j` at `value`, cached per feature."""
        if value != value:  # NaN, a missing number: one key for all of them
            value = None
        cache = self._text_cache[j]
        text = cache.get(value)
        if text is None:
            if len(cache) > 20_000:  # values that hardly repeat (means, amounts)
                cache.clear()
            text = cache[value] = self._text(j, value)
        return text

    @functools.cached_property
    def _text_cache(self) -> list[dict]:
        return [{} for _ in self.features]

    def _text(self, j: int, value: float | str | None) -> str:
        column, typical, label = self.columns[j], self.typical[j], self.labels[j]
        if column.categorical:
            text = f"{label}: {value}"
            return text if typical is None else f"{text} (most common: {typical})"
        text = f"{label}: {_shown(value, column)}"
        return text if typical is None else f"{text} (typical {_shown(typical, column)})"

    @functools.cached_property
    def _typical_numbers(self) -> np.ndarray:
        """Per explained feature its typical number (NaN: none, or a category)."""
        return np.array(
            [
                np.nan if column.categorical or t is None else float(t)
                for column, t in zip(self.columns, self.typical, strict=True)
            ],
            dtype=np.float64,
        )

    @functools.cached_property
    def _names(self) -> pa.Array:
        return pa.array(self.features, pa.string())

    def _dicts(self, chosen: _Chosen) -> list[list[dict]]:
        """A few rows' reasons as dicts (the streaming scorer's messages)."""
        features = chosen.features.tolist()
        numbers = chosen.numbers.tolist()
        values = [chosen.categories.get(i, v) for i, v in enumerate(numbers)]
        typical = self._typical_numbers[chosen.features].tolist()
        sizes = chosen.sizes.tolist()
        names = self.features
        out: list[list[dict]] = []
        at = 0
        for count in chosen.counts.tolist():
            out.append(
                [
                    {
                        "feature": names[features[i]],
                        "text": self._text_of(features[i], values[i]),
                        "value": None if numbers[i] != numbers[i] else numbers[i],
                        "typical": None if typical[i] != typical[i] else typical[i],
                        "contribution": sizes[i],
                    }
                    for i in range(at, at + count)
                ]
            )
            at += count
        return out

    def _arrow(self, chosen: _Chosen) -> pa.Array:
        """Many rows' reasons as an Arrow list array (`REASONS_ARROW`), built column by
        column: each distinct (feature, value) is put in words once."""
        features, numbers = chosen.features, chosen.numbers
        typical = self._typical_numbers[features]
        items = pa.StructArray.from_arrays(
            [
                self._names.take(pa.array(features)),
                self._texts(chosen),
                pa.array(numbers, pa.float64(), mask=np.isnan(numbers)),
                pa.array(typical, pa.float64(), mask=np.isnan(typical)),
                pa.array(chosen.sizes, pa.float64()),
            ],
            fields=list(REASONS_ARROW.value_type),
        )
        offsets = np.zeros(len(chosen.counts) + 1, dtype=np.int32)
        np.cumsum(chosen.counts, out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), items, type=REASONS_ARROW)

    def _texts(self, chosen: _Chosen) -> pa.Array:
        features, numbers = chosen.features, chosen.numbers
        ids = np.empty(len(features), dtype=np.int64)
        words: list[str] = []
        order = np.argsort(features, kind="stable")
        bounds = np.flatnonzero(np.diff(features[order])) + 1
        for group in np.split(order, bounds) if len(order) else []:
            j = int(features[group[0]])
            if j >= len(self.predictor.numeric):  # a category: its values from `categories`
                distinct: dict = {}
                at = [distinct.setdefault(chosen.categories[i], len(distinct)) for i in group]
                values, inverse = list(distinct), np.asarray(at, dtype=np.int64)
            else:
                unique, inverse = np.unique(numbers[group], return_inverse=True)
                values = unique.tolist()
            ids[group] = len(words) + inverse.ravel()
            words += [self._text_of(j, value) for value in values]
        return pa.array(words, pa.string()).take(pa.array(ids))


def _largest(contribution: np.ndarray, k: int) -> np.ndarray:
    """rows × min(k, features): each row's k largest columns, largest first, equal values
    in column order (the first of them first).

    For a few of many columns, `argmax` k times (each taking the first maximum)
    is cheaper than `argpartition` and a sort of what it picked.
    """
    rows, width = contribution.shape
    if k >= width:
        return np.argsort(-contribution, axis=1, kind="stable")
    left = contribution.copy()
    order = np.empty((rows, k), dtype=np.intp)
    every = np.arange(rows)
    for slot in range(k):
        best = left.argmax(axis=1)
        order[:, slot] = best
        left[every, best] = -np.inf
    return order


class _Chosen(NamedTuple):
    """Reasons chosen for a batch, one entry per reason, rows in order."""

    counts: np.ndarray  # per row: how many reasons
    features: np.ndarray  # the explained feature (index into `Reasoner.features`)
    numbers: np.ndarray  # its value (NaN: missing, or a category)
    sizes: np.ndarray  # its contribution
    categories: dict[int, object]  # a category's value, by the reason's position

    @staticmethod
    def concat(parts: Sequence[_Chosen]) -> _Chosen:
        """The reasons of consecutive batches as those of one."""
        if len(parts) == 1:
            return parts[0]
        categories: dict[int, object] = {}
        at = 0
        for part in parts:
            categories.update((at + i, value) for i, value in part.categories.items())
            at += len(part.features)
        return _Chosen(
            np.concatenate([p.counts for p in parts]),
            np.concatenate([p.features for p in parts]),
            np.concatenate([p.numbers for p in parts]),
            np.concatenate([p.sizes for p in parts]),
            categories,
        )


def _shown(value: float | str | None, column: FeatureColumn) -> str:
    if value is None:
        return "none"
    number = float(value)
    if column.kind in _WHOLE_KINDS or number.is_integer():
        return f"{number:,.0f}"
    return f"{number:,.2f}".rstrip("0").rstrip(".")


# --- summaries -------------------------------------------------------------------------


def reasons_markdown(reasons: Sequence[dict] | None) -> str:
    """One cell's worth: the reasons' sentences, most important first."""
    if not reasons:
        return "—"
    return "; ".join(r["text"] for r in reasons)


def common_reasons(scores: pl.DataFrame, band: str, n: int = 10) -> pl.DataFrame:
    """Which reasons recur among the customers of `band`: per feature, the customers who
    have it among their reasons, those whose first reason it is, and its median
    contribution; most common first."""
    chosen = scores.filter(pl.col("risk_band") == band).select("customer_id", "reasons")
    customers = chosen.height
    exploded = chosen.explode("reasons").drop_nulls("reasons").unnest("reasons")
    if exploded.is_empty():
        return pl.DataFrame(
            schema={
                "feature": pl.String,
                "customers": pl.UInt32,
                "share": pl.Float64,
                "first_reason": pl.UInt32,
                "median_contribution": pl.Float64,
            }
        )
    firsts = (
        chosen.select(pl.col("reasons").list.first().struct.field("feature"))
        .drop_nulls()
        .group_by("feature")
        .len("first_reason")
    )
    return (
        exploded.group_by("feature")
        .agg(
            pl.col("customer_id").n_unique().cast(pl.UInt32).alias("customers"),
            pl.col("contribution").median().alias("median_contribution"),
        )
        .join(firsts, on="feature", how="left")
        .select(
            "feature",
            "customers",
            (pl.col("customers") / customers).alias("share"),
            pl.col("first_reason").fill_null(0).cast(pl.UInt32),
            "median_contribution",
        )
        .sort(["customers", "feature"], descending=[True, False])
        .head(n)
    )


def common_reasons_markdown(
    scores: pl.DataFrame, band: str, spec: FeatureSpec | None, n: int = 10
) -> str:
    """`common_reasons` of `band` as a markdown table (for Dagster metadata)."""
    table = common_reasons(scores, band, n)
    if table.is_empty():
        return f"_no reasons among the {band!r} band_"
    spec = spec or FeatureSpec.from_columns(table["feature"].to_list())
    lines = [
        f"| reason (among the {band!r} band) | customers | share | first reason | "
        "median contribution |",
        "|---|---:|---:|---:|---:|",
    ]
    for feature, customers, share, first, median in table.iter_rows():
        lines.append(
            f"| {spec.column(feature).label} | {customers:,} | {share:.0%} | {first:,} | "
            f"{median:+.3f} |"
        )
    return "\n".join(lines)

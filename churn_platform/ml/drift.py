"""Feature drift: the population stability index (PSI) of live features against training rows.

PSI compares two distributions binned the same way::

    PSI = Σ over bins (live share - reference share) · ln(live share / reference share)

The reference is what the champion learned from: the training-set rows of its
train dates (the registry's `training["train_dates"]`), or the whole training
set when those rows are no longer in it. The live side is the feature table of
an as-of date. Both go through `frame.model_input` with the champion's feature
list, so an activity type missing on one side is filled the way the model sees it.

Numeric features are cut at the reference's deciles (ties merge bins, so a
count that is 0 for 70% of customers gets one bin for the zeros); a constant
reference gets three bins (below, equal, above). Categorical features use
their categories. Nulls are a bin of their own on both sides: a feature that
starts arriving empty is drift too. An empty bin gets a share of `EPSILON` so
the logarithm stays finite.

Bands, the industry's usual reading: below 0.1 stable, 0.1 to 0.25 moderate,
above 0.25 significant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl

from churn_platform.features.materialize import read_features
from churn_platform.lake.store import Lake
from churn_platform.ml import registry
from churn_platform.ml.frame import categorical_features, model_input
from churn_platform.ml.training_set import read_training_set

DEFAULT_BINS = 10
STABLE_BELOW = 0.1
SIGNIFICANT_ABOVE = 0.25
DEFAULT_PSI_THRESHOLD = SIGNIFICANT_ABOVE
EPSILON = 1e-4  # the share an empty bin counts as
DEFAULT_MAX_REFERENCE_ROWS = 200_000
DEFAULT_SEED = 42
BANDS = ("stable", "moderate", "significant")

PSI_SCHEMA = {
    "feature": pl.String,
    "kind": pl.String,
    "psi": pl.Float64,
    "band": pl.String,
    "bins": pl.Int64,
    "reference_null_rate": pl.Float64,
    "live_null_rate": pl.Float64,
}


def band(psi: float) -> str:
    """'stable' (< 0.1), 'moderate' (0.1 to 0.25) or 'significant' (> 0.25)."""
    if psi < STABLE_BELOW:
        return "stable"
    if psi <= SIGNIFICANT_ABOVE:
        return "moderate"
    return "significant"


def psi_from_counts(reference: np.ndarray, live: np.ndarray) -> float:
    """PSI of two count vectors over the same bins (empty bins count as `EPSILON`)."""
    reference = np.asarray(reference, dtype=np.float64)
    live = np.asarray(live, dtype=np.float64)
    if reference.shape != live.shape:
        raise ValueError(f"bin counts differ in shape: {reference.shape} vs {live.shape}")
    if reference.sum() <= 0 or live.sum() <= 0:
        raise ValueError("PSI needs at least one row on each side")
    expected = np.clip(reference / reference.sum(), EPSILON, None)
    actual = np.clip(live / live.sum(), EPSILON, None)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def _values(series: pl.Series) -> tuple[np.ndarray, int]:
    """Non-null values as floats (NaN counts as null) and the number of nulls."""
    floats = series.cast(pl.Float64).fill_nan(None)
    present = floats.drop_nulls().to_numpy()
    return present, floats.len() - present.size


def numeric_bins(reference: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Inner bin edges from the reference's quantiles; one edge for a constant reference."""
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    if reference.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(reference, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def _bin_codes(values: np.ndarray, edges: np.ndarray, constant: bool) -> np.ndarray:
    if constant:  # below, equal to, above the one reference value
        return np.where(values < edges[0], 0, np.where(values == edges[0], 1, 2))
    # bin i holds (edges[i-1], edges[i]]; the last holds everything above the top edge
    return np.searchsorted(edges, values, side="left")


def numeric_psi(
    reference: pl.Series, live: pl.Series, bins: int = DEFAULT_BINS
) -> tuple[float, int]:
    """PSI of a numeric feature and the number of bins used (nulls included)."""
    ref, ref_nulls = _values(reference)
    now, now_nulls = _values(live)
    edges = numeric_bins(ref, bins)
    constant = ref.size > 0 and ref.min() == ref.max()
    value_bins = 3 if constant else edges.size + 1
    ref_counts = np.bincount(_bin_codes(ref, edges, constant), minlength=value_bins)
    now_counts = np.bincount(_bin_codes(now, edges, constant), minlength=value_bins)
    ref_counts = np.append(ref_counts, ref_nulls)
    now_counts = np.append(now_counts, now_nulls)
    used = (ref_counts > 0) | (now_counts > 0)
    return psi_from_counts(ref_counts[used], now_counts[used]), int(used.sum())


def categorical_psi(reference: pl.Series, live: pl.Series) -> tuple[float, int]:
    """PSI of a categorical feature over the categories of both sides (null is one)."""

    def counts(series: pl.Series) -> dict[str | None, int]:
        frame = series.cast(pl.String).rename("category").value_counts(name="n")
        return dict(zip(frame["category"].to_list(), frame["n"].to_list(), strict=True))

    ref, now = counts(reference), counts(live)
    categories = sorted(set(ref) | set(now), key=lambda c: (c is None, c or ""))
    return (
        psi_from_counts(
            np.array([ref.get(c, 0) for c in categories]),
            np.array([now.get(c, 0) for c in categories]),
        ),
        len(categories),
    )


def feature_psi(
    reference: pl.DataFrame,
    live: pl.DataFrame,
    features: Sequence[str],
    bins: int = DEFAULT_BINS,
) -> pl.DataFrame:
    """One row per feature (`PSI_SCHEMA`), the most drifted first (ties by name)."""
    if reference.height == 0:
        raise ValueError("the reference sample is empty: there is nothing to compare against")
    if live.height == 0:
        raise ValueError("the live feature table is empty: there is nothing to compare")
    missing = [f for f in features if f not in reference.columns or f not in live.columns]
    if missing:
        raise ValueError(
            f"features missing from the reference or live table: {missing[:5]}; "
            "pass both through frame.model_input with the same feature list"
        )
    categorical = set(categorical_features(features))
    rows = []
    for name in features:
        if name in categorical:
            psi, used = categorical_psi(reference[name], live[name])
        else:
            psi, used = numeric_psi(reference[name], live[name], bins)
        rows.append(
            {
                "feature": name,
                "kind": "categorical" if name in categorical else "numeric",
                "psi": psi,
                "band": band(psi),
                "bins": used,
                "reference_null_rate": reference[name].null_count() / reference.height,
                "live_null_rate": live[name].null_count() / live.height,
            }
        )
    table = pl.DataFrame(rows, schema=PSI_SCHEMA)
    return table.sort(["psi", "feature"], descending=[True, False])


# --- against the champion -----------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """What the champion learned from, as model input."""

    table: pl.DataFrame
    features: list[str]
    champion_version: str
    source: str  # e.g. "training set, train dates 2026-01-01..2026-02-01"
    dates: list[date]


@dataclass(frozen=True)
class DriftReport:
    """PSI per feature of one as-of date against the champion's reference."""

    as_of: date
    psi: pl.DataFrame  # PSI_SCHEMA, most drifted first
    champion_version: str
    reference_source: str
    reference_rows: int
    live_rows: int

    @property
    def max_psi(self) -> float:
        return float(self.psi["psi"].max() or 0.0) if self.psi.height else 0.0

    @property
    def worst_feature(self) -> str | None:
        return self.psi["feature"][0] if self.psi.height else None

    def band_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(BANDS, 0)
        for name in self.psi["band"].to_list():
            counts[name] += 1
        return counts

    def above(self, threshold: float) -> list[str]:
        """Features whose PSI exceeds `threshold`, most drifted first."""
        return self.psi.filter(pl.col("psi") > threshold)["feature"].to_list()


def parse_date_span(span: object) -> tuple[date, date] | None:
    """'2026-01-01..2026-02-01' → the two dates; None for '(none)' or anything else."""
    if not isinstance(span, str) or ".." not in span:
        return None
    first, _, last = span.partition("..")
    try:
        return date.fromisoformat(first.strip()), date.fromisoformat(last.strip())
    except ValueError:
        return None


def champion_reference(
    lake: Lake,
    max_rows: int | None = DEFAULT_MAX_REFERENCE_ROWS,
    seed: int = DEFAULT_SEED,
) -> Reference:
    """The champion's training rows (its train dates), else the whole training set.

    Above `max_rows` rows, a seeded random sample of them.
    """
    champion = registry.read_champion(lake)
    if champion is None:
        raise registry.ModelMissing(
            f"no champion yet: {lake.url(registry.CHAMPION_FILE)} does not exist; drift is "
            "measured against the champion's training rows, so train and promote one first"
        )
    record = registry.read_record(lake, champion.version)
    training = read_training_set(lake)
    rows = training.table
    span = parse_date_span(record.training.get("train_dates"))
    source = "whole training set (the champion's train dates are not recorded)"
    if span is not None:
        chosen = rows.filter(pl.col("as_of").is_between(span[0], span[1], closed="both"))
        if chosen.height:
            rows = chosen
            source = f"training set, train dates {span[0].isoformat()}..{span[1].isoformat()}"
        else:
            source = (
                f"whole training set (it holds no rows of the champion's train dates "
                f"{span[0].isoformat()}..{span[1].isoformat()})"
            )
    dates = sorted(rows["as_of"].unique().to_list())
    if max_rows is not None and rows.height > max_rows:
        rows = rows.sample(n=max_rows, seed=seed)
        source += f", {max_rows} rows sampled (seed {seed})"
    return Reference(
        table=model_input(rows, record.features, record.spec),
        features=list(record.features),
        champion_version=champion.version,
        source=source,
        dates=dates,
    )


def measure_drift(
    lake: Lake,
    as_of: date,
    *,
    bins: int = DEFAULT_BINS,
    max_reference_rows: int | None = DEFAULT_MAX_REFERENCE_ROWS,
    seed: int = DEFAULT_SEED,
) -> DriftReport:
    """PSI of every champion feature in the feature table of `as_of` against its training rows."""
    reference = champion_reference(lake, max_reference_rows, seed)
    live = model_input(read_features(lake, as_of), reference.features)
    return DriftReport(
        as_of=as_of,
        psi=feature_psi(reference.table, live, reference.features, bins),
        champion_version=reference.champion_version,
        reference_source=reference.source,
        reference_rows=reference.table.height,
        live_rows=live.height,
    )


def psi_markdown(psi: pl.DataFrame, top: int | None = None) -> str:
    """A markdown table: feature, kind, PSI, band and null rates (most drifted first)."""
    lines = [
        "| feature | kind | PSI | band | null rate (reference) | null rate (live) |",
        "|---|---|---:|---|---:|---:|",
    ]
    shown = psi if top is None else psi.head(top)
    for row in shown.iter_rows(named=True):
        lines.append(
            f"| `{row['feature']}` | {row['kind']} | {row['psi']:.4f} | {row['band']} | "
            f"{row['reference_null_rate']:.1%} | {row['live_null_rate']:.1%} |"
        )
    return "\n".join(lines)

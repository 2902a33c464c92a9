"""Small charts for Dagster metadata and reports, as markdown with an embedded PNG.

Every function returns `![title](data:image/png;base64,...)`: Dagster renders
markdown metadata in the UI, and a data URI needs no file server or artifact
store next to it. The figures are small (5 x 3.5 in at 90 dpi, 256-colour
PNG, 10-20 KB) because they are stored with every materialization.

Figures are built with `matplotlib.figure.Figure` and rendered by the Agg
canvas directly; pyplot is never imported, so nothing here touches global
state, needs a display, or leaks figures in long-running processes.

Bad input (no rows, one class only, scores of different lengths) raises
`ValueError` saying what is wrong before matplotlib sees it.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # matplotlib and scikit-learn load when a plot is drawn
    from matplotlib.figure import Figure

FIGSIZE = (5.0, 3.5)
DPI = 90
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEFAULT_TOP = 15
_GRID_ALPHA = 0.3


# --- rendering -------------------------------------------------------------------


def new_figure(figsize: tuple[float, float] = FIGSIZE) -> Figure:
    """A figure on its own Agg canvas (no pyplot, no global figure registry)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """`fig` as a 256-colour palette PNG.

    Charts have few distinct colours, so the palette is visually lossless and
    the file about a third of matplotlib's RGBA PNG: what keeps a chart of 40
    bars under ~20 KB of metadata. Pillow writes no timestamp, so equal charts
    give equal bytes.
    """
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())
    image = Image.fromarray(pixels).convert("RGB").quantize(colors=256)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_markdown(fig: Figure, title: str) -> str:
    """`fig` as a markdown image with a base64 PNG data URI; `title` is the alt text."""
    encoded = base64.b64encode(png_bytes(fig)).decode("ascii")
    return f"![{_alt_text(title)}](data:image/png;base64,{encoded})"


def _alt_text(title: str) -> str:
    # brackets and newlines would end the alt text early and break the image
    return " ".join(title.replace("[", "(").replace("]", ")").split())


# --- input checks ----------------------------------------------------------------


def _labels(y_true: Sequence[int] | np.ndarray) -> np.ndarray:
    """`y_true` as a 0/1 int array with both classes present."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be one-dimensional, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("y_true is empty: there are no labelled rows to plot")
    if y.dtype == bool:
        y = y.astype(np.int8)
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise ValueError(
            f"y_true must hold only 0 and 1 (churned), got values {sorted(values)[:5]}"
        )
    if len(values) < 2:
        only = values.pop()
        raise ValueError(
            f"y_true has only class {only} in all {y.size} rows: ROC, precision-recall and "
            "calibration need churned and retained customers; label a longer period"
        )
    return y.astype(np.int8)


def _scores(
    scores: Mapping[str, Sequence[float] | np.ndarray], rows: int, probabilities: bool
) -> dict[str, np.ndarray]:
    """Each model's scores as a float array of `rows` finite values."""
    if not scores:
        raise ValueError("scores is empty: pass at least one model's scores")
    checked = {}
    for name, values in scores.items():
        array = np.asarray(values, dtype=np.float64)
        if array.shape != (rows,):
            raise ValueError(
                f"scores of {name!r} have shape {array.shape}, expected ({rows},) like y_true"
            )
        if not np.isfinite(array).all():
            raise ValueError(f"scores of {name!r} contain NaN or infinite values")
        if probabilities and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"scores of {name!r} must be probabilities in [0, 1]")
        checked[name] = array
    return checked


# --- model evaluation charts -----------------------------------------------------


def roc_curves_markdown(
    y_true: Sequence[int] | np.ndarray,
    scores: Mapping[str, Sequence[float] | np.ndarray],
    title: str = "ROC curves",
) -> str:
    """One ROC curve per model, labelled with its AUC, and the chance diagonal."""
    from sklearn.metrics import roc_auc_score, roc_curve

    y = _labels(y_true)
    checked = _scores(scores, y.size, probabilities=False)
    fig = new_figure()
    ax = fig.add_subplot()
    for name, values in checked.items():
        fpr, tpr, _ = roc_curve(y, values)
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC {roc_auc_score(y, values):.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance")
    _unit_axes(ax, "false positive rate", "true positive rate")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize="small")
    return png_markdown(fig, title)


def pr_curves_markdown(
    y_true: Sequence[int] | np.ndarray,
    scores: Mapping[str, Sequence[float] | np.ndarray],
    title: str = "Precision-recall curves",
) -> str:
    """Precision against recall per model (labelled with average precision) and the base rate.

    The base rate is the precision of guessing: with rare churn the ROC curve
    flatters a model, this chart does not.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve

    y = _labels(y_true)
    checked = _scores(scores, y.size, probabilities=False)
    fig = new_figure()
    ax = fig.add_subplot()
    for name, values in checked.items():
        precision, recall, _ = precision_recall_curve(y, values)
        ap = average_precision_score(y, values)
        ax.step(recall, precision, where="post", linewidth=1.5, label=f"{name} (AP {ap:.3f})")
    base_rate = float(y.mean())
    ax.axhline(
        base_rate, linestyle="--", color="grey", linewidth=1, label=f"base rate {base_rate:.3f}"
    )
    _unit_axes(ax, "recall", "precision")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small")
    return png_markdown(fig, title)


def calibration_markdown(
    y_true: Sequence[int] | np.ndarray,
    scores: Mapping[str, Sequence[float] | np.ndarray],
    bins: int = 10,
    title: str = "Calibration (reliability)",
) -> str:
    """Mean predicted probability against the observed churn rate, per quantile bin.

    Quantile bins hold equally many customers, so the sparse high-risk tail
    gets points of its own instead of one noisy bin.
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    from sklearn.calibration import calibration_curve

    y = _labels(y_true)
    checked = _scores(scores, y.size, probabilities=True)
    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect")
    for name, values in checked.items():
        observed, predicted = calibration_curve(y, values, n_bins=bins, strategy="quantile")
        ax.plot(predicted, observed, marker="o", markersize=3, linewidth=1.5, label=name)
    _unit_axes(ax, "mean predicted probability", "observed churn rate")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")
    return png_markdown(fig, title)


def importance_markdown(
    names: Sequence[str],
    means: Sequence[float] | np.ndarray,
    stds: Sequence[float] | np.ndarray,
    top: int = DEFAULT_TOP,
    title: str = "Permutation importance",
) -> str:
    """The `top` features by mean permutation importance, as bars with ±1 std whiskers."""
    mean = np.asarray(means, dtype=np.float64)
    std = np.asarray(stds, dtype=np.float64)
    if not (len(names) == mean.size == std.size) or mean.ndim != 1 or std.ndim != 1:
        raise ValueError(
            f"names, means and stds must have one entry per feature, got lengths "
            f"{len(names)}, {mean.size} and {std.size}"
        )
    order = _top_order(names, mean, top)
    shown = [names[i] for i in order]
    fig = new_figure(_bar_figsize(len(shown)))
    ax = fig.add_subplot()
    positions = np.arange(len(shown))
    ax.barh(positions, mean[order], xerr=np.nan_to_num(std[order]), color="tab:blue", capsize=2)
    _bar_axes(ax, positions, shown, "mean drop in score when shuffled")
    ax.set_title(title)
    return png_markdown(fig, title)


def bar_markdown(
    names: Sequence[str],
    values: Sequence[float] | np.ndarray,
    title: str,
    threshold: float | None = None,
    top: int | None = DEFAULT_TOP,
    xlabel: str = "",
) -> str:
    """Horizontal bars, largest first (e.g. PSI per feature); bars past `threshold` in red."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or len(names) != array.size:
        raise ValueError(
            f"names and values must have one entry per bar, got {len(names)} and {array.size}"
        )
    order = _top_order(names, array, len(names) if top is None else top)
    shown = [names[i] for i in order]
    heights = array[order]
    colors = ["tab:blue"] * len(shown)
    fig = new_figure(_bar_figsize(len(shown)))
    ax = fig.add_subplot()
    positions = np.arange(len(shown))
    if threshold is not None:
        colors = ["tab:red" if v > threshold else "tab:blue" for v in heights]
        ax.axvline(
            threshold, linestyle="--", color="grey", linewidth=1, label=f"threshold {threshold:g}"
        )
        ax.legend(loc="lower right", fontsize="small")
    ax.barh(positions, heights, color=colors)
    _bar_axes(ax, positions, shown, xlabel)
    ax.set_title(title)
    return png_markdown(fig, title)


def histogram_markdown(
    probabilities: Sequence[float] | np.ndarray,
    cutoffs: Sequence[float],
    bins: int = 40,
    title: str = "Churn probability distribution",
    names: Sequence[str] | None = None,
) -> str:
    """How scored customers spread over [0, 1], with a line at each risk band cut-off.

    `names` (one more than `cutoffs`, e.g. low/medium/high) labels the bands.
    """
    values = np.asarray(probabilities, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("probabilities is empty: there are no scores to plot")
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        raise ValueError("probabilities must be finite values in [0, 1]")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if names is not None and len(names) != len(cutoffs) + 1:
        raise ValueError(
            f"names needs one more entry than cutoffs ({len(cutoffs) + 1}), got {len(names)}"
        )
    fig = new_figure()
    ax = fig.add_subplot()
    ax.hist(values, bins=bins, range=(0.0, 1.0), color="tab:blue", alpha=0.8)
    for cutoff in cutoffs:
        ax.axvline(cutoff, linestyle="--", color="tab:red", linewidth=1)
    if names is not None:
        edges = [0.0, *cutoffs, 1.0]
        for name, low, high in zip(names, edges[:-1], edges[1:], strict=True):
            ax.text(
                (low + high) / 2,
                0.97,
                name,
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="top",
                fontsize="small",
            )
    ax.set_xlim(0, 1)
    ax.set_xlabel("churn probability")
    ax.set_ylabel("customers")
    ax.grid(alpha=_GRID_ALPHA)
    ax.set_title(f"{title} (n={values.size:,})")
    return png_markdown(fig, title)


# --- helpers ---------------------------------------------------------------------


def _unit_axes(ax, xlabel: str, ylabel: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=_GRID_ALPHA)


def _top_order(names: Sequence[str], values: np.ndarray, top: int) -> list[int]:
    """Indices of the `top` largest values (NaN last, ties by name), largest first."""
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    if values.size == 0:
        raise ValueError("there are no bars to plot")
    ranked = sorted(
        range(values.size),
        key=lambda i: (math.isnan(values[i]), -np.nan_to_num(values[i]), names[i]),
    )
    return ranked[:top]


def _bar_figsize(bars: int) -> tuple[float, float]:
    # taller with many bars so labels stay readable, never smaller than the default
    return (FIGSIZE[0], max(FIGSIZE[1], 0.9 + 0.22 * bars))


def _bar_axes(ax, positions: np.ndarray, labels: list[str], xlabel: str) -> None:
    ax.set_yticks(positions, labels=labels, fontsize="small")
    ax.invert_yaxis()  # largest on top
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=_GRID_ALPHA)

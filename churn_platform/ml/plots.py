"""Small charts for Dagster metadata and reports, as markdown with an embedded PNG.

Every function returns `![title](data:image/png;base64,...)`: Dagster renders
markdown metadata in the UI, and a data URI needs no file server or artifact
store next to it. The figures are small (5 x 3.5 in at 90 dpi, 256-colour
PNG, 10-20 KB) because they are stored with every materialization.

The model-evaluation charts (training runs) are built with
`matplotlib.figure.Figure` and rendered by the Agg canvas directly; pyplot is
never imported, so nothing here touches global state, needs a display, or
leaks figures in long-running processes. The two charts every scoring and drift
run draws (`histogram_markdown`, `bar_markdown`) are drawn with Pillow alone:
importing matplotlib cost those runs 0.6-0.8 s each (docs/benchmarks.md,
Freshness).

Bad input (no rows, one class only, scores of different lengths) raises
`ValueError` saying what is wrong before matplotlib sees it.
"""

from __future__ import annotations

import base64
import functools
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
    return _image_png(Image.fromarray(np.asarray(fig.canvas.buffer_rgba())))


def _image_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").quantize(colors=256).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def png_markdown(fig: Figure, title: str) -> str:
    """`fig` as a markdown image with a base64 PNG data URI; `title` is the alt text."""
    return _png_image_markdown(png_bytes(fig), title)


def _png_image_markdown(png: bytes, title: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
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
    width, height = (round(v * DPI) for v in _bar_figsize(len(shown)))
    chart = _Chart(width, height, title, left=_label_width(shown), xlabel=xlabel)
    finite = heights[np.isfinite(heights)]
    low = min(0.0, float(finite.min()) if finite.size else 0.0)
    high = max([0.0, *finite.tolist(), *([threshold] if threshold is not None else [])])
    chart.x_axis(low, high if high > low else low + 1.0)
    slot = chart.plot_height / len(shown)
    for i, (name, value) in enumerate(zip(shown, heights, strict=True)):
        middle = chart.top + slot * (i + 0.5)
        chart.label_left(name, middle)
        if np.isfinite(value):
            red = threshold is not None and value > threshold
            chart.bar_horizontal(0.0, float(value), middle, slot * 0.8, _RED if red else _BLUE)
    if threshold is not None:
        chart.vertical(threshold, _GREY, dashed=True)
        chart.legend(f"threshold {threshold:g}", _GREY)
    return chart.markdown(title)


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
    counts, _ = np.histogram(values, bins=bins, range=(0.0, 1.0))
    width, height = (round(v * DPI) for v in FIGSIZE)
    chart = _Chart(width, height, f"{title} (n={values.size:,})", xlabel="churn probability")
    chart.x_axis(0.0, 1.0)
    chart.y_axis(0.0, float(max(counts.max(), 1)) * 1.05, "customers")
    for i, count in enumerate(counts):
        if count:
            chart.bar_vertical(i / bins, (i + 1) / bins, float(count), _BLUE)
    for cutoff in cutoffs:
        chart.vertical(cutoff, _RED, dashed=True)
    if names is not None:
        edges = [0.0, *cutoffs, 1.0]
        for name, low, high in zip(names, edges[:-1], edges[1:], strict=True):
            chart.label_top(name, (low + high) / 2)
    return chart.markdown(title)


# --- charts drawn with Pillow ----------------------------------------------------

_BLUE = (31, 119, 180)  # matplotlib's tab:blue, tab:red and grey
_RED = (214, 39, 40)
_GREY = (128, 128, 128)
_GRID = (224, 224, 224)
_INK = (38, 38, 38)
_MARGIN = 10


@functools.cache
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _label_width(labels: Sequence[str]) -> int:
    """Room for the bars' names, at most a third of the chart."""
    widest = max((_font(10).getlength(label) for label in labels), default=0)
    return int(min(widest, FIGSIZE[0] * DPI / 3)) + 2 * _MARGIN


def _nice_ticks(low: float, high: float, most: int = 6) -> list[float]:
    """Round tick values covering [low, high], at most about `most` of them."""
    raw = (high - low) / max(most - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _tick_text(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:g}"


class _Chart:
    """A white canvas with a title, a plot area and linear axes, drawn with Pillow."""

    def __init__(self, width: int, height: int, title: str, left: int = 0, xlabel: str = ""):
        from PIL import ImageDraw

        self.image = Image.new("RGB", (width, height), "white")
        self.draw = ImageDraw.Draw(self.image)
        self.left = max(left, 52)
        self.right = width - 2 * _MARGIN
        self.top = 30
        self.bottom = height - (38 if xlabel else 24)
        self.plot_height = self.bottom - self.top
        self.x_range = (0.0, 1.0)
        self.y_range = (0.0, 1.0)
        self.draw.text((width / 2, 8), title, fill=_INK, font=_font(12), anchor="mt")
        if xlabel:
            middle = (self.left + self.right) / 2
            self.draw.text((middle, height - 6), xlabel, fill=_INK, font=_font(11), anchor="mb")

    def markdown(self, title: str) -> str:
        """The chart, framed, as a markdown image (`title` is the alt text)."""
        self.draw.rectangle([self.left, self.top, self.right, self.bottom], outline=_INK)
        return _png_image_markdown(_image_png(self.image), title)

    def x(self, value: float) -> float:
        low, high = self.x_range
        return self.left + (value - low) / (high - low) * (self.right - self.left)

    def y(self, value: float) -> float:
        low, high = self.y_range
        return self.bottom - (value - low) / (high - low) * self.plot_height

    def x_axis(self, low: float, high: float) -> None:
        self.x_range = (low, high)
        for tick in _nice_ticks(low, high):
            at = self.x(tick)
            self.draw.line([(at, self.top), (at, self.bottom)], fill=_GRID)
            self.draw.text(
                (at, self.bottom + 4), _tick_text(tick), fill=_INK, font=_font(10), anchor="mt"
            )

    def y_axis(self, low: float, high: float, label: str) -> None:
        ticks = _nice_ticks(low, high)
        self.y_range = (low, max(high, ticks[-1]))
        for tick in ticks:
            at = self.y(tick)
            self.draw.line([(self.left, at), (self.right, at)], fill=_GRID)
            self.draw.text(
                (self.left - 4, at), _tick_text(tick), fill=_INK, font=_font(10), anchor="rm"
            )
        self.draw.text((_MARGIN, self.top - 14), label, fill=_INK, font=_font(10), anchor="lm")

    def bar_vertical(self, start: float, end: float, value: float, color) -> None:
        # at least a pixel tall, so a bin of one customer among thousands still shows
        box = [
            self.x(start) + 0.5,
            min(self.y(value), self.bottom - 2),
            self.x(end) - 0.5,
            self.bottom - 1,
        ]
        self.draw.rectangle(box, fill=color)

    def bar_horizontal(self, start: float, end: float, middle: float, size: float, color):
        low, high = sorted((self.x(start), self.x(end)))
        self.draw.rectangle([low, middle - size / 2, high, middle + size / 2], fill=color)

    def vertical(self, value: float, color, dashed: bool = False) -> None:
        at = self.x(value)
        step = 6 if dashed else self.plot_height
        for start in range(int(self.top), int(self.bottom), step):
            end = min(start + (4 if dashed else step), self.bottom)
            self.draw.line([(at, start), (at, end)], fill=color, width=1)

    def label_left(self, text: str, middle: float) -> None:
        room = self.left - 2 * _MARGIN
        while len(text) > 1 and _font(10).getlength(text) > room:
            text = text[:-2] + "…"
        self.draw.text((self.left - 6, middle), text, fill=_INK, font=_font(10), anchor="rm")

    def label_top(self, text: str, value: float) -> None:
        self.draw.text((self.x(value), self.top + 4), text, fill=_INK, font=_font(10), anchor="mt")

    def legend(self, text: str, color) -> None:
        at = (self.right - 8, self.bottom - 8)
        self.draw.text(at, text, fill=color, font=_font(10), anchor="rb")


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

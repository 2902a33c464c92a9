"""Charts as markdown images: valid small PNGs, `top` respected, clear errors on bad input."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys

import numpy as np
import pytest

from churn_platform.ml import plots

MAX_MARKDOWN_CHARS = 60_000
_IMAGE = re.compile(
    r"^!\[(?P<title>[^\]\n]*)\]\(data:image/png;base64,(?P<data>[A-Za-z0-9+/=]+)\)$"
)


def decode(markdown: str) -> tuple[str, bytes]:
    """(alt text, PNG bytes) of a markdown image; fails unless it is exactly one image."""
    assert markdown.startswith("![")
    assert "data:image/png;base64," in markdown
    assert len(markdown) < MAX_MARKDOWN_CHARS
    match = _IMAGE.match(markdown)
    assert match, markdown[:120]
    png = base64.b64decode(match["data"], validate=True)
    assert png.startswith(plots.PNG_SIGNATURE)
    return match["title"], png


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk."""
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


@pytest.fixture(scope="module")
def labelled() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 1_500)
    good = np.clip(0.25 * y + 0.75 * rng.random(y.size), 0, 1)
    noise = rng.random(y.size)
    return y, {"gradient_boosting": good, "logistic_regression": noise}


@pytest.mark.parametrize(
    "chart", [plots.roc_curves_markdown, plots.pr_curves_markdown, plots.calibration_markdown]
)
def test_model_charts_are_small_png_markdown_images(chart, labelled):
    y, scores = labelled
    title, png = decode(chart(y, scores))
    assert title
    width, height = png_size(png)
    assert 300 <= width <= 600 and 200 <= height <= 450


def test_charts_accept_lists_and_booleans(labelled):
    y, scores = labelled
    decode(plots.roc_curves_markdown(y.astype(bool).tolist(), {"m": scores["gradient_boosting"]}))


def test_calibration_bins_are_respected(labelled):
    y, scores = labelled
    decode(plots.calibration_markdown(y, scores, bins=5))
    with pytest.raises(ValueError, match="bins"):
        plots.calibration_markdown(y, scores, bins=1)


def test_title_is_the_alt_text_and_cannot_break_the_image(labelled):
    y, scores = labelled
    title, _ = decode(plots.roc_curves_markdown(y, scores, title="ROC [holdout]\nweek 3"))
    assert title == "ROC (holdout) week 3"


def test_same_input_gives_same_bytes(labelled):
    y, scores = labelled
    assert plots.pr_curves_markdown(y, scores) == plots.pr_curves_markdown(y, scores)


@pytest.mark.parametrize(
    "chart", [plots.roc_curves_markdown, plots.pr_curves_markdown, plots.calibration_markdown]
)
@pytest.mark.parametrize("only", [0, 1])
def test_one_class_only_is_a_clear_value_error(chart, only):
    y = np.full(50, only)
    with pytest.raises(ValueError, match=f"only class {only}"):
        chart(y, {"m": np.linspace(0, 1, 50)})


@pytest.mark.parametrize(
    "chart", [plots.roc_curves_markdown, plots.pr_curves_markdown, plots.calibration_markdown]
)
def test_bad_inputs_are_value_errors(chart):
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="empty"):
        chart(np.array([]), {"m": np.array([])})
    with pytest.raises(ValueError, match="scores is empty"):
        chart(y, {})
    with pytest.raises(ValueError, match="shape"):
        chart(y, {"m": np.array([0.1, 0.2])})
    with pytest.raises(ValueError, match="NaN"):
        chart(y, {"m": np.array([0.1, np.nan, 0.2, 0.3])})
    with pytest.raises(ValueError, match="only 0 and 1"):
        chart(np.array([0, 1, 2, 1]), {"m": np.array([0.1, 0.2, 0.3, 0.4])})


def test_calibration_needs_probabilities():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plots.calibration_markdown(np.array([0, 1, 0, 1]), {"m": np.array([-1.0, 2.0, 0.1, 0.2])})


def _ticks_of(chart: str) -> int:
    """How tall the bar chart is, in pixels (grows with the number of bars)."""
    return png_size(decode(chart)[1])[1]


def test_importance_shows_at_most_top_bars():
    names = [f"feature_{i}" for i in range(40)]
    rng = np.random.default_rng(1)
    means, stds = rng.random(40), rng.random(40) * 0.05
    five = _ticks_of(plots.importance_markdown(names, means, stds, top=5))
    fifteen = _ticks_of(plots.importance_markdown(names, means, stds, top=15))
    forty = _ticks_of(plots.importance_markdown(names, means, stds, top=40))
    assert five < fifteen < forty
    # asking for more bars than features shows them all: same chart as top=len
    assert plots.importance_markdown(names, means, stds, top=100) == plots.importance_markdown(
        names, means, stds, top=40
    )


def test_top_order_ranks_largest_first_nan_last_ties_by_name():
    values = np.array([0.2, np.nan, 0.5, 0.2, -0.1])
    names = ["b", "nan", "top", "a", "negative"]
    assert plots._top_order(names, values, 10) == [2, 3, 0, 4, 1]
    assert plots._top_order(names, values, 2) == [2, 3]


def test_importance_and_bars_reject_bad_input():
    with pytest.raises(ValueError, match="one entry per feature"):
        plots.importance_markdown(["a", "b"], np.array([0.1]), np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="top"):
        plots.importance_markdown(["a"], np.array([0.1]), np.array([0.0]), top=0)
    with pytest.raises(ValueError, match="no bars"):
        plots.importance_markdown([], np.array([]), np.array([]))
    with pytest.raises(ValueError, match="one entry per bar"):
        plots.bar_markdown(["a"], np.array([0.1, 0.2]), "PSI")


def test_bar_markdown_with_threshold_and_nan():
    names = [f"f{i}" for i in range(20)]
    values = np.linspace(0, 0.5, 20)
    values[3] = np.nan
    title, _ = decode(plots.bar_markdown(names, values, "PSI per feature", threshold=0.2))
    assert title == "PSI per feature"
    decode(plots.bar_markdown(names, values, "all", top=None, xlabel="PSI"))


def test_histogram_with_cutoffs_and_band_names():
    rng = np.random.default_rng(3)
    probabilities = rng.beta(1, 6, 5_000)
    decode(plots.histogram_markdown(probabilities, (0.1, 0.3)))
    decode(plots.histogram_markdown(probabilities, [0.1, 0.3], names=["low", "medium", "high"]))
    decode(plots.histogram_markdown(np.array([0.5]), [], bins=10))


def test_histogram_rejects_bad_input():
    with pytest.raises(ValueError, match="empty"):
        plots.histogram_markdown(np.array([]), [0.1, 0.3])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plots.histogram_markdown(np.array([0.2, 1.5]), [0.1, 0.3])
    with pytest.raises(ValueError, match="one more entry"):
        plots.histogram_markdown(np.array([0.2]), [0.1, 0.3], names=["low", "high"])
    with pytest.raises(ValueError, match="bins"):
        plots.histogram_markdown(np.array([0.2]), [0.1], bins=0)


def test_png_markdown_renders_any_figure():
    fig = plots.new_figure()
    fig.add_subplot().plot([0, 1], [1, 0])
    title, png = decode(plots.png_markdown(fig, "anything"))
    assert title == "anything"
    assert png_size(png) == (450, 315)  # 5 x 3.5 in at 90 dpi


def _pixels(markdown: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(decode(markdown)[1])).convert("RGB"))


def _has_colour(pixels: np.ndarray, rgb: tuple[int, int, int]) -> bool:
    return bool((np.abs(pixels.astype(int) - rgb).sum(axis=2) < 30).any())


def test_bars_past_the_threshold_are_red_and_only_they():
    names = ["a", "b", "c"]
    past = _pixels(plots.bar_markdown(names, [0.05, 0.1, 0.4], "PSI", threshold=0.2))
    below = _pixels(plots.bar_markdown(names, [0.05, 0.1, 0.15], "PSI", threshold=0.2))
    assert _has_colour(past, plots._RED) and _has_colour(past, plots._BLUE)
    assert not _has_colour(below, plots._RED) and _has_colour(below, plots._BLUE)


def test_histogram_bars_grow_with_their_bins():
    few = _pixels(plots.histogram_markdown(np.full(10, 0.55), [], bins=10))
    column = few[:, few.shape[1] * 6 // 10 - 20]  # inside the 0.5-0.6 bin
    blue = (np.abs(column.astype(int) - plots._BLUE).sum(axis=1) < 30).sum()
    assert blue > few.shape[0] / 2  # the only bin reaches most of the plot's height


def test_scoring_and_drift_charts_do_not_import_matplotlib():
    code = (
        "import sys, numpy as np\n"
        "from churn_platform.ml import plots\n"
        "plots.histogram_markdown(np.linspace(0, 1, 50), [0.2, 0.5], names=['l', 'm', 'h'])\n"
        "plots.bar_markdown(['a', 'b'], [0.1, float('nan')], 'PSI', threshold=0.05)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"

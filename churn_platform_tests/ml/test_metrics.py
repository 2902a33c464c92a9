"""metrics.json as a typed record: the form earlier versions stored still reads."""

from __future__ import annotations

import msgspec
import pytest

from churn_platform.ml.metrics import EvaluationMetrics, HoldoutMetrics

# metrics.json of a version saved before the typed record (as parsed JSON)
OLD_FORM = {
    "baseline": {
        "base_rate": 0.1812,
        "brier": 0.12094,
        "pr_auc": 0.5121,
        "positives": 163,
        "roc_auc": 0.8516,
        "rows": 900,
        "top_decile_capture": 0.3497,
        "top_decile_lift": 3.497,
    },
    "candidate": {
        "base_rate": 0.1812,
        "brier": 0.11521,
        "pr_auc": 0.5672,
        "positives": 163,
        "roc_auc": 0.8773,
        "rows": 900,
        "top_decile_capture": 0.3926,
        "top_decile_lift": 3.926,
    },
    "champion_on_holdout": 0.8702,
}


def test_the_stored_form_reads_field_by_field_and_writes_back_unchanged():
    metrics = EvaluationMetrics.from_dict(OLD_FORM)
    assert metrics.candidate.roc_auc == 0.8773 and metrics.baseline.roc_auc == 0.8516
    assert metrics.candidate.top_decile_lift == 3.926 and metrics.baseline.brier == 0.12094
    assert (metrics.candidate.rows, metrics.candidate.positives) == (900, 163)
    assert metrics.champion_on_holdout == 0.8702
    assert msgspec.to_builtins(metrics) == OLD_FORM


def test_without_a_champion_the_comparison_is_none():
    body = {k: v for k, v in OLD_FORM.items() if k != "champion_on_holdout"}
    metrics = EvaluationMetrics.from_dict(body)
    assert metrics.champion_on_holdout is None
    assert metrics.with_champion(0.8).champion_on_holdout == 0.8
    assert metrics.with_champion(0.8).candidate == metrics.candidate


def test_a_metric_missing_or_of_the_wrong_type_is_named():
    body = {
        **OLD_FORM,
        "candidate": {k: v for k, v in OLD_FORM["candidate"].items() if k != "brier"},
    }
    with pytest.raises(msgspec.ValidationError, match="brier"):
        EvaluationMetrics.from_dict(body)
    body = {**OLD_FORM, "baseline": {**OLD_FORM["baseline"], "rows": "900"}}
    with pytest.raises(msgspec.ValidationError, match="rows"):
        EvaluationMetrics.from_dict(body)


def test_holdout_metrics_take_keywords_only():
    """Nine numbers in a row are easy to swap: a positional call is refused."""
    with pytest.raises(TypeError):
        HoldoutMetrics(0.8, 0.5, 0.1, 3.0, 0.3, 0.2, 900, 163)  # type: ignore[misc]

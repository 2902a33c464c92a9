"""The evaluation metrics a model version records (its metrics.json), as typed records.

`train.evaluate` makes them, the registry stores them, the model card, the
Dagster assets and the run summaries read them by field.
"""

from __future__ import annotations

import msgspec


class HoldoutMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """One model's scores on the holdout."""

    roc_auc: float
    pr_auc: float
    brier: float
    top_decile_lift: float  # churn rate in the top 10% of scores / the overall rate
    top_decile_capture: float  # share of the churners in the top 10% of scores
    base_rate: float  # share of the holdout rows that churned
    rows: int
    positives: int


class EvaluationMetrics(msgspec.Struct, frozen=True, kw_only=True):
    """metrics.json of a version: the candidate and its logistic baseline on its holdout.

    Stored as a JSON object by field name; `champion_on_holdout` is the champion
    of the day's ROC AUC on the same holdout (None: there was none to compare).
    """

    candidate: HoldoutMetrics
    baseline: HoldoutMetrics
    champion_on_holdout: float | None = None

    def with_champion(self, roc_auc: float | None) -> EvaluationMetrics:
        """The same metrics with the champion's ROC AUC on this holdout."""
        return msgspec.structs.replace(self, champion_on_holdout=roc_auc)

    @classmethod
    def from_dict(cls, body: object) -> EvaluationMetrics:
        """Read metrics.json (as parsed JSON); `msgspec.ValidationError` names what is off."""
        return msgspec.convert(body, cls)

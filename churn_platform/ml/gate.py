"""The promotion gate: may a candidate serve? Judged by what the same holdout rows allow.

A fixed ROC AUC floor chosen on simulated data dead-ended the first model of a
real business (just below the floor, while the same model ranked that business's
customers about as well as a carefully built reference; docs/own-data.md). So the
gate compares the candidate with what can be computed on its own holdout, with
the uncertainty the number of churners there allows:

- `no_skill`: the candidate ranks churners above non-churners more often than
  a random ranking (ROC AUC 0.5), beyond the noise: the lower bound of its
  ROC AUC is above 0.5. Fewer than `min_holdout_churners` churners (or
  non-churners) on the holdout: too few to judge, and it fails saying so.
- `baseline`: the candidate is not worse than the logistic baseline fitted on
  the same rows, beyond the noise (with `must_beat_baseline`, it must be
  better beyond the noise).
- `floor` (opt-in, `min_roc_auc`): the holdout ROC AUC is at least the floor.
- `no_regression` (its own check): the candidate is not worse than the
  current champion on the candidate's holdout by more than `max_regression`
  beyond the noise.

The noise is a bootstrap over customers (a customer's rows at several holdout
dates are not independent): `rounds` resamples of whole customers, seeded,
the same resamples for every model so differences are paired. The bounds are
one-sided at `confidence`. Each rule says what it saw and which setting
changes it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
import numpy as np

DEFAULT_CONFIDENCE = 0.95
DEFAULT_ROUNDS = 400
DEFAULT_MIN_HOLDOUT_CHURNERS = 10
DEFAULT_MAX_REGRESSION = 0.005
MIN_ROC_AUC_ENV = "CHURN_MIN_ROC_AUC"
CONFIDENCE_ENV = "CHURN_GATE_CONFIDENCE"


@dataclass(frozen=True)
class GateConfig:
    """The gate's settings; the defaults judge relative to the data, with no fixed floor."""

    min_roc_auc: float | None = None  # an absolute floor, off by default
    must_beat_baseline: bool = False  # else: not worse than the baseline beyond the noise
    max_regression: float = DEFAULT_MAX_REGRESSION  # allowed ROC AUC drop vs the champion
    confidence: float = DEFAULT_CONFIDENCE
    rounds: int = DEFAULT_ROUNDS
    min_holdout_churners: int = DEFAULT_MIN_HOLDOUT_CHURNERS
    seed: int = 42

    def __post_init__(self) -> None:
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"gate confidence must be in [0.5, 1) (got {self.confidence})")
        if self.min_roc_auc is not None and not 0.5 <= self.min_roc_auc <= 1:
            raise ValueError(f"min_roc_auc must be in [0.5, 1] (got {self.min_roc_auc})")


@dataclass(frozen=True)
class Rule:
    """One rule of the gate: did it pass, what was seen, which setting changes it."""

    name: str
    passed: bool
    reason: str
    setting: str = ""

    def line(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        fix = f" (change with {self.setting})" if self.setting and not self.passed else ""
        return f"{self.name} {verdict}: {self.reason}{fix}"


@dataclass(frozen=True)
class Verdict:
    """The rules of one check and whether all of them passed."""

    rules: tuple[Rule, ...]
    details: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(rule.passed for rule in self.rules)

    def reasons(self) -> list[str]:
        return [rule.line() for rule in self.rules]

    def failed(self) -> list[Rule]:
        return [rule for rule in self.rules if not rule.passed]


class GateDecision(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """gate.json of a model version: may it serve, and every rule's line.

    Stored as a JSON object by field name; the fields with defaults came later
    (a gate.json without them reads with them empty).
    """

    passed: bool
    reasons: list[str]
    failed_rules: list[str] = msgspec.field(default_factory=list)
    quality: dict[str, Any] = msgspec.field(default_factory=dict)  # the quality check's details
    regression: dict[str, Any] = msgspec.field(default_factory=dict)  # no_regression's details

    @classmethod
    def of(cls, quality: Verdict, regression: Verdict) -> GateDecision:
        """The decision of churn_model's two checks: passed when every rule of both did."""
        return cls(
            passed=quality.passed and regression.passed,
            reasons=quality.reasons() + regression.reasons(),
            failed_rules=[rule.name for rule in quality.failed() + regression.failed()],
            quality=dict(quality.details),
            regression=dict(regression.details),
        )


# --- the noise ---------------------------------------------------------------------


class _Ranked:
    """One score's rows in score order, split into churners and the rest, with ties.

    A churner's row counts the weight of the non-churners scored below it, and
    half of those tied with it: with `cumulative` the running sum of the
    non-churners' weights in score order (a zero first), that is half of
    `cumulative[below] + cumulative[through]`, where `below` and `through`
    count the non-churners before its group of equal scores and up to its end.
    """

    def __init__(self, y: np.ndarray, scores: np.ndarray, clusters: np.ndarray) -> None:
        order = np.argsort(scores, kind="stable")
        ranked = scores[order]
        churned = np.asarray(y)[order] == 1
        opens = np.r_[True, ranked[1:] != ranked[:-1]]  # a row that starts a group of ties
        starts = np.flatnonzero(opens)
        group = np.cumsum(opens) - 1  # each row's group
        ends = np.r_[starts[1:], len(ranked)]
        stayed_before = np.r_[0, np.cumsum(~churned)]  # non-churners among the first k rows
        self.below = stayed_before[starts][group][churned]
        self.through = stayed_before[ends][group][churned]
        self.churners = clusters[order][churned]  # the cluster of each churner's row
        self.stayers = clusters[order][~churned]

    def aucs(self, by_cluster: np.ndarray) -> np.ndarray:
        """ROC AUC for each column of `by_cluster` (clusters × rounds: draws per cluster).

        Every sum is of whole numbers (or halves), exact in float64 in any order.
        """
        stayers = by_cluster[self.stayers]
        cumulative = np.zeros((len(stayers) + 1, by_cluster.shape[1]))
        np.cumsum(stayers, axis=0, out=cumulative[1:])
        churners = by_cluster[self.churners]
        ranks = cumulative[self.below] + cumulative[self.through]
        total_churners, total_stayers = churners.sum(axis=0), cumulative[-1]
        with np.errstate(invalid="ignore", divide="ignore"):
            return (churners * ranks).sum(axis=0) * 0.5 / (total_churners * total_stayers)


def auc(y: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC (ties half), the same arithmetic as the bootstrap."""
    rows = np.arange(len(y))
    return float(_Ranked(y, np.asarray(scores, dtype=float), rows).aucs(np.ones((len(y), 1)))[0])


def bootstrap_aucs(
    y: np.ndarray,
    scores: Mapping[str, np.ndarray],
    clusters: np.ndarray,
    rounds: int = DEFAULT_ROUNDS,
    seed: int = 42,
) -> dict[str, np.ndarray]:
    """ROC AUC of each score over `rounds` resamples of whole clusters (customers).

    The same resamples for every score, so `a - b` is a paired bootstrap of the
    difference. Resamples without both classes give NaN.
    """
    y = np.asarray(y, dtype=int)
    _, cluster_of = np.unique(np.asarray(clusters), return_inverse=True)
    n_clusters = int(cluster_of.max()) + 1 if len(cluster_of) else 0
    rng = np.random.default_rng(seed)
    ranked = {
        name: _Ranked(y, np.asarray(score, dtype=float), cluster_of)
        for name, score in scores.items()
    }
    out: dict[str, list[np.ndarray]] = {name: [] for name in scores}
    # rounds in chunks, so the (rows × rounds) weights stay small for big holdouts
    chunk = max(1, min(rounds, 4_000_000 // max(len(y), 1)))
    for start in range(0, rounds, chunk):
        size = min(chunk, rounds - start)
        # how often each cluster is drawn in each round (clusters × rounds): one
        # contiguous row of counts per cluster, gathered for each row in score order
        draws = rng.integers(0, n_clusters, size=(size, n_clusters))
        flat = (np.arange(size)[:, None] * n_clusters + draws).ravel()
        counts = np.bincount(flat, minlength=size * n_clusters).reshape(size, n_clusters)
        by_cluster = np.ascontiguousarray(counts.T, dtype=np.float64)
        for name, rows in ranked.items():
            out[name].append(rows.aucs(by_cluster))
    return {name: np.concatenate(parts) for name, parts in out.items()}


def lower_bound(samples: np.ndarray, confidence: float) -> float:
    return float(np.nanquantile(samples, 1 - confidence))


def upper_bound(samples: np.ndarray, confidence: float) -> float:
    return float(np.nanquantile(samples, confidence))


# --- the rules ---------------------------------------------------------------------


def judge_candidate(
    y: np.ndarray,
    candidate: np.ndarray,
    baseline: np.ndarray,
    customers: np.ndarray,
    config: GateConfig,
) -> Verdict:
    """The `candidate_quality` check: no-skill, the baseline and (opt-in) a floor."""
    y = np.asarray(y, dtype=int)
    churners, stayers = int(y.sum()), int(len(y) - y.sum())
    level = f"{config.confidence:.0%}"
    settings_more = "more holdout rows: churn_model's holdout_dates, more customers or history"
    if min(churners, stayers) < config.min_holdout_churners:
        rare = "churners" if churners <= stayers else "customers who stayed"
        rules = [
            Rule(
                "no_skill",
                False,
                f"the holdout has {churners} churners and {stayers} customers who stayed; "
                f"fewer than {config.min_holdout_churners} {rare} are too few to tell a model "
                "from chance",
                settings_more,
            )
        ]
        return Verdict(tuple(rules), {"holdout_churners": churners, "holdout_rows": len(y)})
    point = {"candidate": auc(y, candidate), "baseline": auc(y, baseline)}
    samples = bootstrap_aucs(
        y, {"candidate": candidate, "baseline": baseline}, customers, config.rounds, config.seed
    )
    low = lower_bound(samples["candidate"], config.confidence)
    diff = samples["candidate"] - samples["baseline"]
    diff_low, diff_high = (
        lower_bound(diff, config.confidence),
        upper_bound(diff, config.confidence),
    )
    c, b = point["candidate"], point["baseline"]
    rules = [
        Rule(
            "no_skill",
            low > 0.5,
            f"holdout ROC AUC {c:.4f}, {level} lower bound {low:.4f} "
            f"{'>' if low > 0.5 else '≤'} 0.5 (no skill), over {churners} churners of {len(y)} rows",
            settings_more + f", or {CONFIDENCE_ENV}",
        )
    ]
    if config.must_beat_baseline:
        ok = diff_low > 0
        rules.append(
            Rule(
                "baseline",
                ok,
                f"candidate {c:.4f} vs logistic baseline {b:.4f}: difference {c - b:+.4f}, "
                f"{level} lower bound {diff_low:+.4f} {'>' if ok else '≤'} 0 (must beat it)",
                "churn_model's must_beat_baseline: false",
            )
        )
    else:
        ok = diff_high >= 0
        rules.append(
            Rule(
                "baseline",
                ok,
                f"candidate {c:.4f} vs logistic baseline {b:.4f}: difference {c - b:+.4f}, "
                f"{level} upper bound {diff_high:+.4f} "
                f"{'≥' if ok else '<'} 0 (not worse beyond the noise)",
                "a different model: the candidate is worse than the logistic baseline",
            )
        )
    if config.min_roc_auc is not None:
        ok = c >= config.min_roc_auc
        rules.append(
            Rule(
                "floor",
                ok,
                f"holdout ROC AUC {c:.4f} {'≥' if ok else '<'} floor {config.min_roc_auc:.4f}",
                f"churn_model's min_roc_auc or {MIN_ROC_AUC_ENV} (unset: no floor)",
            )
        )
    details = {
        "holdout_rows": len(y),
        "holdout_churners": churners,
        "candidate_roc_auc": round(c, 4),
        "candidate_roc_auc_lower": round(low, 4),
        "baseline_roc_auc": round(b, 4),
        "difference_lower": round(diff_low, 4),
        "difference_upper": round(diff_high, 4),
        "confidence": config.confidence,
        "bootstrap_rounds": config.rounds,
    }
    return Verdict(tuple(rules), details)


def judge_regression(
    y: np.ndarray,
    candidate: np.ndarray,
    champion: np.ndarray | None,
    champion_version: str | None,
    customers: np.ndarray,
    config: GateConfig,
) -> Verdict:
    """The `no_regression` check: not worse than the champion beyond noise and tolerance."""
    if champion is None:
        return Verdict(
            (Rule("no_regression", True, "no champion yet: nothing to regress against"),)
        )
    y = np.asarray(y, dtype=int)
    c, h = auc(y, candidate), auc(y, champion)
    if min(int(y.sum()), int(len(y) - y.sum())) < 2:
        diff_high = c - h
    else:
        samples = bootstrap_aucs(
            y, {"candidate": candidate, "champion": champion}, customers, config.rounds, config.seed
        )
        diff_high = upper_bound(samples["candidate"] - samples["champion"], config.confidence)
    ok = diff_high >= -config.max_regression
    level = f"{config.confidence:.0%}"
    rule = Rule(
        "no_regression",
        ok,
        f"candidate {c:.4f} vs champion {champion_version} {h:.4f} on the candidate's holdout: "
        f"difference {c - h:+.4f}, {level} upper bound {diff_high:+.4f} "
        f"{'≥' if ok else '<'} -{config.max_regression:.4f} (allowed drop)",
        "churn_model's max_regression",
    )
    return Verdict(
        (rule,),
        {
            "champion": champion_version,
            "champion_roc_auc": round(h, 4),
            "candidate_roc_auc": round(c, 4),
            "difference_upper": round(diff_high, 4),
        },
    )

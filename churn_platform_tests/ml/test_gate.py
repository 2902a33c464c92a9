"""The promotion gate: judged against no skill, the baseline and the champion, with the noise."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from churn_platform.ml.gate import (
    GateConfig,
    auc,
    bootstrap_aucs,
    judge_candidate,
    judge_regression,
    lower_bound,
)


def holdout(n: int = 4000, rate: float = 0.1, signal: float = 1.0, seed: int = 0):
    """Labels, a score with `signal`, and customers that each appear on two dates."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    score = signal * y + rng.normal(size=n)
    customers = np.arange(n) // 2
    return y, score, customers


def test_auc_equals_scikit_learn_with_ties_and_weights():
    y, score, _ = holdout()
    assert auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)
    rounded = np.round(score, 1)  # many ties
    assert auc(y, rounded) == pytest.approx(roc_auc_score(y, rounded), abs=1e-12)


def test_the_bootstrap_resamples_customers_and_is_paired_and_seeded():
    y, score, customers = holdout()
    other = score + np.random.default_rng(1).normal(scale=0.5, size=len(y))
    a = bootstrap_aucs(y, {"a": score, "b": other}, customers, rounds=200, seed=3)
    again = bootstrap_aucs(y, {"a": score, "b": other}, customers, rounds=200, seed=3)
    np.testing.assert_array_equal(a["a"], again["a"])
    assert a["a"].shape == (200,) and np.isfinite(a["a"]).all()
    point = auc(y, score)
    assert lower_bound(a["a"], 0.95) < point < np.quantile(a["a"], 0.95)
    # paired: the difference varies less than either AUC alone
    assert np.std(a["a"] - a["b"]) < np.std(a["a"])
    # a score identical to another has a difference of exactly zero in every round
    same = bootstrap_aucs(y, {"a": score, "b": score.copy()}, customers, rounds=50)
    np.testing.assert_array_equal(same["a"], same["b"])
    # memory is bounded by chunks: many rounds on many rows still work
    big = bootstrap_aucs(
        np.r_[y, y, y], {"a": np.r_[score, score, score]}, np.arange(3 * len(y)), rounds=700
    )
    assert big["a"].shape == (700,)


def test_each_bootstrap_round_is_the_weighted_auc_of_its_draws():
    """Round r weighs every row by how often its customer was drawn in round r (the rounds'
    draws from the seeded generator, one row of draws per round); ties count half."""
    y, score, customers = holdout(n=600)
    rounded = np.round(score, 1)  # ties within and across customers
    rounds, seed = 30, 5
    got = bootstrap_aucs(y, {"a": rounded}, customers, rounds=rounds, seed=seed)["a"]
    n_customers = customers.max() + 1
    draws = np.random.default_rng(seed).integers(0, n_customers, size=(rounds, n_customers))
    for r in range(rounds):
        weight = np.bincount(draws[r], minlength=n_customers)[customers]
        expected = roc_auc_score(y, rounded, sample_weight=weight)
        assert got[r] == pytest.approx(expected, abs=1e-12), r


def test_a_real_model_passes_with_no_floor_where_a_fixed_floor_dead_ended_it():
    """The user's case: ROC AUC about 0.73, baseline a little lower. No floor by default."""
    y, score, customers = holdout(n=6000, rate=0.2, signal=0.87, seed=4)
    baseline = score + np.random.default_rng(5).normal(scale=0.6, size=len(y))
    verdict = judge_candidate(y, score, baseline, customers, GateConfig())
    assert 0.70 < verdict.details["candidate_roc_auc"] < 0.76
    assert verdict.passed, verdict.reasons()
    assert [r.name for r in verdict.rules] == ["no_skill", "baseline"]
    floored = judge_candidate(y, score, baseline, customers, GateConfig(min_roc_auc=0.75))
    assert not floored.passed and [r.name for r in floored.failed()] == ["floor"]
    line = floored.failed()[0].line()
    assert line.startswith("floor FAILED: holdout ROC AUC 0.7") and "< floor 0.7500" in line
    assert "CHURN_MIN_ROC_AUC" in line and "min_roc_auc" in line


def test_no_skill_fails_on_noise_and_on_too_few_churners():
    y, _, customers = holdout(n=3000, rate=0.1, seed=6)
    noise = np.random.default_rng(7).normal(size=len(y))
    verdict = judge_candidate(y, noise, noise.copy(), customers, GateConfig())
    assert not verdict.passed and verdict.failed()[0].name == "no_skill"
    assert "lower bound" in verdict.reasons()[0] and "≤ 0.5" in verdict.reasons()[0]

    few = np.zeros(500, dtype=int)
    few[:4] = 1
    scores = np.linspace(1, 0, 500)  # ranks the 4 churners first: AUC 1.0, still unjudgeable
    verdict = judge_candidate(few, scores, scores, np.arange(500), GateConfig())
    assert not verdict.passed
    reason = verdict.reasons()[0]
    assert "4 churners and 496 customers who stayed" in reason
    assert "fewer than 10 churners are too few" in reason and "holdout_dates" in reason


def test_worse_than_the_baseline_beyond_the_noise_fails_and_must_beat_is_opt_in():
    y, score, customers = holdout(n=6000, signal=1.2, seed=8)
    weaker = score + np.random.default_rng(9).normal(scale=1.5, size=len(y))
    assert not judge_candidate(y, weaker, score, customers, GateConfig()).passed  # worse
    assert judge_candidate(y, score, weaker, customers, GateConfig()).passed
    # a tie is not worse beyond the noise, but it does not beat the baseline either
    tied = judge_candidate(y, score, score.copy(), customers, GateConfig())
    assert tied.passed
    strict = judge_candidate(y, score, score.copy(), customers, GateConfig(must_beat_baseline=True))
    assert not strict.passed and strict.failed()[0].name == "baseline"
    assert "must_beat_baseline" in strict.failed()[0].line()


def test_no_regression_against_the_champion():
    y, score, customers = holdout(n=6000, signal=1.2, seed=10)
    first = judge_regression(y, score, None, None, customers, GateConfig())
    assert first.passed and first.reasons() == [
        "no_regression passed: no champion yet: nothing to regress against"
    ]
    same = judge_regression(y, score, score.copy(), "v1", customers, GateConfig())
    assert same.passed
    weaker = score + np.random.default_rng(11).normal(scale=1.5, size=len(y))
    worse = judge_regression(y, weaker, score, "v1", customers, GateConfig())
    assert not worse.passed
    line = worse.reasons()[0]
    assert "vs champion v1" in line and "max_regression" in line
    # a big enough allowance lets it through
    assert judge_regression(
        y, weaker, score, "v1", customers, GateConfig(max_regression=0.5)
    ).passed


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="confidence"):
        GateConfig(confidence=1.0)
    with pytest.raises(ValueError, match="min_roc_auc"):
        GateConfig(min_roc_auc=0.2)


def test_the_gate_and_churn_resources_read_their_settings_from_the_environment():
    from churn_platform.defs.resources.churn import ChurnDefinitionResource
    from churn_platform.defs.resources.gate import GateResource

    assert GateResource.from_env({}).min_roc_auc is None  # no floor unless asked
    assert GateResource.from_env({}).confidence == 0.95
    set_ = GateResource.from_env({"CHURN_MIN_ROC_AUC": "0.7", "CHURN_GATE_CONFIDENCE": "0.9"})
    assert (set_.min_roc_auc, set_.confidence) == (0.7, 0.9)
    for name, bad in (
        ("CHURN_MIN_ROC_AUC", "0.2"),
        ("CHURN_GATE_CONFIDENCE", "1"),
        ("CHURN_MIN_ROC_AUC", "x"),
    ):
        with pytest.raises(ValueError, match=f"{name}={bad!r} is not a number in"):
            GateResource.from_env({name: bad})
    churn = ChurnDefinitionResource.from_env(
        {"CHURN_DEFINITION": "inactivity", "CHURN_QUALIFYING_EVENTS": "purchase, login"}
    ).churn()
    assert churn.key() == "inactivity:90:purchase,login"
    with pytest.raises(ValueError, match="CHURN_HORIZON_DAYS"):
        ChurnDefinitionResource.from_env({"CHURN_HORIZON_DAYS": "400"})

"""Reasons with every score: contributions that add up to the model's margin, the top ones
in words, typical values from the training set, the same from rows as from frames."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from churn_platform.features.definitions import FeatureSpec
from churn_platform.ml.estimators import small_batch_predictor
from churn_platform.ml.flat import WALK_ROWS
from churn_platform.ml.frame import input_rows, model_input
from churn_platform.ml.reasons import (
    Reasoner,
    _largest,
    common_reasons,
    common_reasons_markdown,
    typical_values,
)
from churn_platform.ml.training_set import build_training_set


@pytest.fixture(scope="module")
def training(ml_lake):
    return build_training_set(ml_lake.lake, ml_lake.dates.dates)


@pytest.fixture(scope="module")
def reasoner(trained_model, training):
    typical = typical_values(training.table, trained_model.features, training.spec)["values"]
    built = Reasoner.build(trained_model.candidate, trained_model.features, training.spec, typical)
    assert built is not None
    return built


@pytest.fixture(scope="module")
def holdout(trained_model, training):
    return model_input(trained_model.split.holdout, trained_model.features, training.spec)


def _classifier(trained_model):
    return small_batch_predictor(trained_model.candidate, trained_model.features).classifier


def test_contributions_plus_the_base_are_the_models_margin(reasoner, holdout, trained_model):
    matrix = reasoner.predictor.matrix(holdout)
    assert np.isnan(matrix).any()  # missing values take the trees' missing side
    margin = _classifier(trained_model).decision_function(matrix)
    contributions = reasoner.contributions(matrix)
    assert contributions.shape == (holdout.height, len(reasoner.features))
    np.testing.assert_allclose(reasoner.base + contributions.sum(axis=1), margin, rtol=0, atol=1e-9)
    # the margin orders customers as the calibrated probability does (monotone calibration)
    probability = trained_model.candidate.predict_proba(holdout)[:, 1]
    order = np.argsort(margin, kind="stable")
    assert (np.diff(probability[order]) >= -1e-12).all()


def _reference(classifier, to_feature: list[int], width: int, row: np.ndarray) -> np.ndarray:
    """Tree-path contributions of one row, node by node over scikit-learn's own trees."""
    out = np.zeros(width)
    for (predictor,) in classifier._predictors:
        nodes = predictor.nodes

        def mean(i: int, nodes=nodes) -> float:
            node = nodes[i]
            if node["is_leaf"]:
                return float(node["value"])
            left, right = int(node["left"]), int(node["right"])
            cl, cr = float(nodes[left]["count"]), float(nodes[right]["count"])
            return (cl * mean(left, nodes) + cr * mean(right, nodes)) / (cl + cr)

        at = 0
        while not nodes[at]["is_leaf"]:
            node = nodes[at]
            value = row[node["feature_idx"]]
            if math.isnan(value):
                go_left = bool(node["missing_go_to_left"])
            else:
                go_left = value <= node["num_threshold"]
            child = int(node["left"] if go_left else node["right"])
            out[to_feature[node["feature_idx"]]] += mean(child) - mean(at)
            at = child
    return out


def test_contributions_equal_a_walk_down_each_tree(reasoner, holdout, trained_model):
    rows = holdout.sample(12, seed=3)
    matrix = reasoner.predictor.matrix(rows)
    index = {name: i for i, name in enumerate(reasoner.features)}
    to_feature = [index[name] for name in reasoner.predictor.column_features()]
    got = reasoner.contributions(matrix)
    classifier = _classifier(trained_model)
    for i, row in enumerate(matrix):
        expected = _reference(classifier, to_feature, len(reasoner.features), row)
        np.testing.assert_allclose(got[i], expected, rtol=0, atol=1e-12)
    # the rows of a bigger batch get the same floats
    whole = reasoner.contributions(reasoner.predictor.matrix(holdout))
    head = reasoner.contributions(reasoner.predictor.matrix(holdout.head(300)))
    np.testing.assert_array_equal(whole[:300], head)


def test_reasons_are_the_largest_pushes_up_in_words(reasoner, holdout, training):
    matrix = reasoner.predictor.matrix(holdout)
    contributions = reasoner.contributions(matrix)
    reasons = reasoner.reasons(matrix, holdout)
    assert len(reasons) == holdout.height
    spec: FeatureSpec = training.spec
    seen_typical = 0
    for i, row_reasons in enumerate(reasons[:300]):
        positive = sorted((c, j) for j, c in enumerate(contributions[i]) if c > 0)[::-1][
            : reasoner.top
        ]
        assert [r["feature"] for r in row_reasons] == [reasoner.features[j] for _, j in positive]
        assert [r["contribution"] for r in row_reasons] == [c for c, _ in positive]
        for r in row_reasons:
            column = spec.column(r["feature"])
            assert r["text"].startswith(f"{column.label}: ")
            if not column.categorical:
                value = holdout[r["feature"]][i]
                assert r["value"] == value or (r["value"] is None and value is None)
            if r["typical"] is not None:
                seen_typical += 1
                assert "(typical " in r["text"]
    assert seen_typical > 0
    assert any(rs for rs in reasons)


def test_reasons_from_rows_equal_reasons_from_a_frame(reasoner, holdout, trained_model):
    head = holdout.head(40)
    rows = input_rows(head.to_dicts(), trained_model.features, reasoner.spec)
    assert reasoner.rows(rows) == reasoner.reasons(reasoner.predictor.matrix(head), head)
    assert pl.Series(reasoner.frame(head)).to_list() == reasoner.rows(rows)


@pytest.mark.parametrize("k", [1, 3, 7, 9])
def test_the_largest_columns_come_first_and_ties_in_column_order(k):
    """`_largest` (the reasons' pick): each row's k largest columns, largest first, equal
    values in column order, as sorting each row by (-value, column) and taking k."""
    rng = np.random.default_rng(3)
    values = rng.integers(-3, 4, size=(500, 7)).astype(np.float64)  # many ties
    values[0] = 1.0  # a row of one value
    expected = np.array(
        [sorted(range(values.shape[1]), key=lambda j, r=row: (-r[j], j))[:k] for row in values]
    )
    np.testing.assert_array_equal(_largest(values, k), expected)


def test_typical_values_are_the_latest_dates_medians(training, trained_model):
    table = training.table
    stored = typical_values(table, trained_model.features, training.spec)
    latest = table["as_of"].max()
    assert stored["as_of"] == latest.isoformat()
    rows = table.filter(pl.col("as_of") == latest)
    assert stored["values"]["events_28d"] == rows["events_28d"].median()
    plans = rows["plan"].value_counts().sort(["count", "plan"], descending=[True, False])
    assert stored["values"]["plan"] == plans["plan"][0]
    assert typical_values(table.head(0), trained_model.features, training.spec) == {
        "as_of": None,
        "values": {},
    }


def test_labels_read_as_words():
    spec = FeatureSpec(("login", "page_view"), ("page_view",), (7, 28), 28)
    labels = {c.name: c.label for c in spec.describe()}
    assert labels["login_count_28d"] == "login events in the last 28 days"
    assert labels["page_view_days_since_last"] == "days since the last page view event"
    assert labels["page_view_value_mean_28d"] == "average page view value in the last 28 days"
    assert labels["tenure_days"] == "days as a customer"
    assert spec.column("some_experiment").label == "some experiment"
    assert all("_" not in label for label in labels.values())


def test_a_decreasing_calibration_turns_the_reasons_round(reasoner, holdout):
    """A sigmoid calibration fitted decreasing (no signal) raises risk with a lower margin."""
    from dataclasses import replace

    flipped = replace(reasoner, direction=-1.0)
    head = holdout.head(50)
    matrix = reasoner.predictor.matrix(head)
    contributions = reasoner.contributions(matrix)
    for i, row_reasons in enumerate(flipped.reasons(matrix, head)):
        for r in row_reasons:
            j = reasoner.features.index(r["feature"])
            assert r["contribution"] == -contributions[i, j] > 0


def test_common_reasons_of_the_high_band(reasoner, holdout):
    reasons = reasoner.reasons(reasoner.predictor.matrix(holdout), holdout)
    scores = pl.DataFrame(
        {
            "customer_id": [f"c{i}" for i in range(holdout.height)],
            "risk_band": ["high" if i % 3 == 0 else "low" for i in range(holdout.height)],
            "reasons": pl.Series(reasons),
        }
    )
    table = common_reasons(scores, "high", n=5)
    high = [rs for i, rs in enumerate(reasons) if i % 3 == 0]
    expected = {}
    for rs in high:
        for r in rs:
            expected[r["feature"]] = expected.get(r["feature"], 0) + 1
    top = table.row(0, named=True)
    assert top["customers"] == max(expected.values())
    assert top["first_reason"] == sum(1 for rs in high if rs and rs[0]["feature"] == top["feature"])
    assert top["share"] == pytest.approx(top["customers"] / len(high))
    markdown = common_reasons_markdown(scores, "high", reasoner.spec)
    assert reasoner.spec.column(top["feature"]).label in markdown.splitlines()[2]
    assert "no reasons" in common_reasons_markdown(scores, "medium", reasoner.spec)


def test_a_model_without_trees_to_walk_has_no_reasoner(trained_model):
    assert Reasoner.build(trained_model.baseline, trained_model.features) is None


def test_a_big_batch_gets_the_same_leaves_probabilities_and_reasons(
    reasoner, holdout, trained_model
):
    """Beyond WALK_ROWS scikit-learn's compiled loop finds the leaves: the same leaves, the
    model's own probabilities, and each row's contributions as in a batch of a few."""
    predictor = reasoner.predictor
    matrix = predictor.matrix(holdout)
    assert len(matrix) > WALK_ROWS
    leaves = predictor.leaves(matrix)
    few = [predictor.leaves(matrix[i : i + 7]) for i in range(0, len(matrix), 7)]
    np.testing.assert_array_equal(leaves, np.concatenate(few))
    expected = trained_model.candidate.predict_proba(holdout)[:, 1]
    np.testing.assert_array_equal(predictor.probability(matrix, leaves), expected)
    whole = reasoner.contributions(matrix, leaves)
    np.testing.assert_array_equal(whole[:14], reasoner.contributions(matrix[:14]))
    probabilities, reasons = reasoner.score_table(trained_model.split.holdout)
    np.testing.assert_array_equal(probabilities, expected)
    assert pl.Series(reasons).to_list()[:20] == reasoner.reasons(matrix[:20], holdout.head(20))


def test_scipys_public_product_gives_the_same_contributions(reasoner, holdout, monkeypatch):
    """`_add_moves` asks scipy's compiled product directly; where a scipy has other
    internals it falls back to the public `@`, with the same floats."""
    from scipy.sparse import _sparsetools

    matrix = reasoner.predictor.matrix(holdout)
    direct = reasoner.contributions(matrix)

    def changed(*args):
        raise TypeError("csr_matmat() takes other arguments in this scipy")

    monkeypatch.setattr(_sparsetools, "csr_matmat", changed)
    np.testing.assert_array_equal(reasoner.contributions(matrix), direct)
    assert np.count_nonzero(direct) > direct.shape[0]

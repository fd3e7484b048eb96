"""Evaluation metrics: hand-computed cases, scikit-learn, the ISIC Challenge's own scorer, thresholds from val."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, matthews_corrcoef, roc_auc_score

from melanoma.evaluation.metrics import (
    MetricError,
    at_threshold,
    average_precision,
    brier,
    choose_threshold,
    expected_calibration_error,
    point_metrics,
    roc_points,
)

Y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.6, 0.3, 0.7, 0.2, 0.2, 0.1, 0.05])


def test_threshold_metrics_by_hand():
    m = at_threshold(Y, P, 0.5)  # predicted malignant: 0.9, 0.6, 0.7 -> tp 2, fp 1, fn 1, tn 4
    assert m["confusion"] == {"tp": 2, "fn": 1, "fp": 1, "tn": 4}
    assert m["sensitivity"] == pytest.approx(2 / 3) and m["specificity"] == pytest.approx(4 / 5)
    assert m["accuracy"] == pytest.approx(6 / 8) and m["balanced_accuracy"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert m["precision"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert m["mcc"] == pytest.approx((2 * 4 - 1 * 1) / np.sqrt(3 * 3 * 5 * 5))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(Y, P >= 0.5))
    assert at_threshold(Y, P, 0.6)["confusion"]["tp"] == 2  # >= threshold is malignant


def test_probability_metrics_by_hand_and_against_sklearn():
    # AUROC over the 3 x 5 (malignant, benign) pairs: 0.9 beats all 5, 0.6 beats 4 (not 0.7), 0.3 beats 4
    assert point_metrics(Y, P, 0.5)["auroc"] == pytest.approx(13 / 15) == roc_auc_score(Y, P)
    assert average_precision(Y, P) == pytest.approx(average_precision_score(Y, P))
    assert brier([1, 0], [0.8, 0.4]) == pytest.approx((0.04 + 0.16) / 2)
    # two bins used: [0.1, 0.2) holds p=0.15 (label 0) -> |0 - 0.15|; [0.9, 1] holds 0.95 (1), 0.95 (0) -> |0.5 - 0.95|
    assert expected_calibration_error([0, 1, 0], [0.15, 0.95, 0.95]) == pytest.approx((0.15 + 2 * 0.45) / 3)


def test_ties_perfect_and_inverted_classifiers():
    y = np.array([0, 0, 1, 1])
    assert point_metrics(y, np.array([0.1, 0.2, 0.8, 0.9]), 0.5)["auroc"] == 1.0
    inverted = point_metrics(y, np.array([0.9, 0.8, 0.2, 0.1]), 0.5)
    assert inverted["auroc"] == 0.0 and inverted["sensitivity"] == 0.0 and inverted["mcc"] == -1.0
    tied = point_metrics(y, np.full(4, 0.5), 0.5)
    assert tied["auroc"] == 0.5 and tied["auprc"] == 0.5 and tied["sensitivity"] == 1.0 and tied["mcc"] == 0.0
    c = roc_points(y, np.array([0.3, 0.5, 0.5, 0.9]))
    assert c["fpr"].tolist() == [0, 0, 0.5, 1] and c["tpr"].tolist() == [0, 0.5, 1, 1]


def test_one_class_test_set_is_a_clear_error():
    with pytest.raises(MetricError, match="test has only benign images \\(4\\)"):
        point_metrics(np.zeros(4), np.full(4, 0.3), 0.5)
    with pytest.raises(MetricError, match="val has only malignant images"):
        choose_threshold(np.ones(3), np.full(3, 0.3), "youden", 0.9)


def test_threshold_comes_from_val_and_is_applied_unchanged_to_test():
    """Val scores are centred low, test scores high: a threshold picked on test would differ; ours must not."""
    rng = np.random.default_rng(0)
    yv = np.r_[np.ones(50), np.zeros(100)].astype(int)
    pv = np.clip(np.r_[rng.normal(0.35, 0.05, 50), rng.normal(0.15, 0.05, 100)], 0, 1)
    yt = yv.copy()
    pt = np.clip(pv + 0.4, 0, 1)
    thr = choose_threshold(yv, pv, "youden", 0.9)
    assert 0.2 < thr < 0.35  # between the val classes
    assert thr != choose_threshold(yt, pt, "youden", 0.9)
    m = point_metrics(yt, pt, thr)
    assert m["threshold"] == thr and m["specificity"] < 0.1  # shifted test: almost everything called malignant
    sens_thr = choose_threshold(yv, pv, "sensitivity", 0.9)
    assert at_threshold(yv, pv, sens_thr)["sensitivity"] >= 0.9
    assert at_threshold(yv, pv, np.nextafter(sens_thr, 1))["sensitivity"] < 0.9  # the highest such threshold


def test_agrees_with_the_isic_challenge_scorer():
    """The ISIC Challenge's own scoring package (isic-challenge-scoring) on the same predictions: AUROC, AP,
    sensitivity, specificity and balanced accuracy agree to 1e-6. It decides 'malignant' when P > 0.5, so the
    probabilities are passed through a monotone map that sends our threshold to 0.5 (ranks, hence AUROC and AP,
    are unchanged)."""
    pd = pytest.importorskip("pandas")
    classification = pytest.importorskip(
        "isic_challenge_scoring.classification",
        reason="isic-challenge-scoring is a test requirement (requirements-test.txt)",
    )
    rng = np.random.default_rng(5)
    y = np.r_[np.ones(70), np.zeros(130)].astype(int)
    p = np.clip(np.round(np.r_[rng.normal(0.6, 0.2, 70), rng.normal(0.4, 0.2, 130)], 2), 0, 1)  # with ties
    thr = choose_threshold(y, p, "youden", 0.9)
    ours = point_metrics(y, p, thr)
    # p >= thr  <=>  q > 0.5, order preserved
    q = np.where(p >= thr, 0.5 + 0.5 * (p - thr + 1e-9) / (1 - thr + 1e-9), 0.5 * p / thr)
    truth = pd.DataFrame({"benign": 1.0 - y, "malignant": y.astype(float)})
    pred = pd.DataFrame({"benign": 1 - q, "malignant": q})
    weights = pd.DataFrame({"score_weight": np.ones(len(y)), "validation_weight": np.ones(len(y))})
    score = classification.ClassificationScore(truth, pred, weights, classification.ClassificationMetric.AUC)
    theirs = score.per_category.loc["malignant"]
    assert abs(theirs["auc"] - ours["auroc"]) < 1e-6
    assert abs(theirs["ap"] - ours["auprc"]) < 1e-6
    assert abs(theirs["sensitivity"] - ours["sensitivity"]) < 1e-6
    assert abs(theirs["specificity"] - ours["specificity"]) < 1e-6
    assert abs(score.aggregate["balanced_accuracy"] - ours["balanced_accuracy"]) < 1e-6


def test_youden_ties_go_to_the_higher_threshold_though_floats_disagree():
    # J = 0.6 at 0.4 (5/5, 2/5), 0.5 (4/5, 1/5) and 0.7 (3/5, 0/5); in floats 0.8 - 0.2 > 0.6 - 0.0
    y = np.array([0] * 5 + [1] * 5)
    p = np.array([0.1, 0.2, 0.3, 0.45, 0.6, 0.4, 0.5, 0.7, 0.8, 0.9])
    assert 0.8 - 0.2 > 0.6 - 0.0
    assert choose_threshold(y, p, "youden", 0.9) == 0.7
    assert choose_threshold(y, p, "sensitivity", 0.8) == 0.5 and choose_threshold(y, p, "sensitivity", 1.0) == 0.4
    w = np.array([1] * 5 + [1, 1, 0, 0, 0])  # a draw without the three top malignant images
    assert choose_threshold(y, p, "youden", 0.9, w) == 0.4

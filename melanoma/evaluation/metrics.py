"""Classification metrics for one model on one split: the threshold chosen on val, applied unchanged to test.
(Uncertainty over seeds and images: melanoma.evaluation.stats.)

Conventions (stated once, used everywhere): the positive class is malignant; a prediction is malignant when
P(malignant) >= threshold; sensitivity = recall of malignant, specificity = recall of benign. Curves and AUROC
treat tied scores the standard way (ties counted half). All of it is plain numpy (no scikit-learn import: it
costs each of the 30 training processes ~1 s), checked against scikit-learn and against the ISIC Challenge's
own scoring package in the tests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from melanoma.errors import MelanomaError

SEED_METRICS = (
    "auroc",
    "auprc",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "f1",
    "mcc",
    "brier",
    "ece",
)  # what the grid summarises over seeds (mean, sd) per held-out split


class MetricError(MelanomaError, ValueError):
    """A metric is undefined for these labels (e.g. AUROC with one class only)."""


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > score of a random negative), ties counting half.

    Computed from average ranks (Mann-Whitney U), so tied scores are handled exactly.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise MetricError(f"AUROC needs both classes; got {n_pos} positive and {n_neg} negative labels")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2  # 1-based rank of each distinct score, ties averaged
    ranks = average_rank[inverse]
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _check(labels: np.ndarray, probs: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels).astype(np.int64)
    p = np.asarray(probs, dtype=np.float64)
    if y.shape != p.shape or y.ndim != 1:
        raise MetricError(f"{where}: {len(y)} labels but {len(p)} probabilities")
    if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
        raise MetricError(f"{where}: probabilities must be finite and in [0, 1]")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        only = "malignant" if n_pos else "benign"
        raise MetricError(
            f"{where} has only {only} images ({len(y)}): sensitivity, specificity and AUROC need both "
            "classes; check the split (split.val_fraction / split.test_fraction) and the data"
        )
    return y, p


def roc_points(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """ROC curve at every distinct score (thresholds descending, starting above the top score)."""
    y, p = np.asarray(labels).astype(bool), np.asarray(probs, dtype=np.float64)
    thr = np.unique(p)[::-1]
    pos, neg = y.sum(), (~y).sum()
    tp = np.array([(p[y] >= t).sum() for t in thr])
    fp = np.array([(p[~y] >= t).sum() for t in thr])
    return {"threshold": np.r_[np.inf, thr], "fpr": np.r_[0, fp / neg], "tpr": np.r_[0, tp / pos]}


def pr_points(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Precision-recall curve at every distinct score (recall increasing)."""
    y, p = np.asarray(labels).astype(bool), np.asarray(probs, dtype=np.float64)
    thr = np.unique(p)[::-1]
    tp = np.array([(p[y] >= t).sum() for t in thr])
    fp = np.array([(p[~y] >= t).sum() for t in thr])
    return {"threshold": thr, "recall": tp / y.sum(), "precision": tp / (tp + fp)}


def average_precision(labels: np.ndarray, probs: np.ndarray) -> float:
    """AP = sum over thresholds of (R_n - R_(n-1)) * P_n (step-wise, no interpolation; scikit-learn's definition)."""
    c = pr_points(labels, probs)
    recall = np.r_[0.0, c["recall"]]
    return float(np.sum(np.diff(recall) * c["precision"]))


def confusion(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, int]:
    y, pred = np.asarray(labels).astype(bool), np.asarray(probs) >= threshold
    return {
        "tp": int((y & pred).sum()),
        "fn": int((y & ~pred).sum()),
        "fp": int((~y & pred).sum()),
        "tn": int((~y & ~pred).sum()),
    }


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def at_threshold(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, Any]:
    """Every threshold-dependent metric, from the confusion counts (0 where a ratio has no denominator)."""
    c = confusion(labels, probs, threshold)
    tp, fn, fp, tn = c["tp"], c["fn"], c["fp"], c["tn"]
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    prec = _ratio(tp, tp + fp)
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return {
        "accuracy": (tp + tn) / (tp + tn + fp + fn),
        "balanced_accuracy": (sens + spec) / 2,
        "sensitivity": sens,
        "specificity": spec,
        "precision": prec,
        "f1": _ratio(2 * prec * sens, prec + sens),
        "mcc": _ratio(tp * tn - fp * fn, denom),
        "confusion": c,
    }


def brier(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(np.mean((np.asarray(probs, dtype=np.float64) - np.asarray(labels)) ** 2))


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width bins of P(malignant): mean predicted probability vs observed malignant fraction, and counts."""
    y, p = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    count = np.bincount(idx, minlength=bins)
    mean_p = np.bincount(idx, weights=p, minlength=bins) / np.maximum(count, 1)
    frac = np.bincount(idx, weights=y, minlength=bins) / np.maximum(count, 1)
    return {"bin": np.arange(bins), "mean_predicted": mean_p, "fraction_malignant": frac, "count": count}


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE: the count-weighted mean |observed malignant fraction - mean P(malignant)| over equal-width bins."""
    c = calibration(labels, probs, bins)
    return float(np.sum(c["count"] * np.abs(c["fraction_malignant"] - c["mean_predicted"])) / c["count"].sum())


def choose_threshold(
    labels: np.ndarray, probs: np.ndarray, rule: str, target: float, weights: np.ndarray | None = None
) -> float:
    """The decision threshold, from val only (one of `probs`; malignant when p >= threshold): Youden's J (max
    sensitivity + specificity - 1; Youden 1950), or the highest threshold whose sensitivity reaches `target`,
    over scikit-learn's ROC curve at every distinct score. Ties in J go to the higher threshold (fewer false
    alarms); J is compared in whole counts (TP x N - FP x P), because in floating point 0.8 - 0.2 comes out above
    0.6 - 0.0 and would break an exact tie towards a lower threshold. `weights`: (n,) integer counts per image (a
    bootstrap draw), None for one each. Raises MetricError (unknown rule, a class absent, bad probabilities)."""
    from sklearn.metrics import roc_curve

    y, p = _check(labels, probs, "val")
    w = np.ones(len(y), dtype=np.int64) if weights is None else np.asarray(weights, dtype=np.int64)
    n_pos, n_neg = int(w[y == 1].sum()), int(w[y == 0].sum())
    fpr, tpr, thr = roc_curve(y, p, sample_weight=None if weights is None else w, drop_intermediate=False)
    tp, fp, thr = np.rint(tpr[1:] * n_pos).astype(np.int64), np.rint(fpr[1:] * n_neg).astype(np.int64), thr[1:]
    if rule == "youden":
        return float(thr[int(np.argmax(tp * n_neg - fp * n_pos))])  # thresholds descend: the first is the highest
    if rule == "sensitivity":
        return float(thr[int(np.argmax(tp >= target * n_pos - 1e-9))])
    raise MetricError(f"unknown threshold rule {rule!r}; use youden or sensitivity")


def point_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float, where: str = "test") -> dict[str, Any]:
    y, p = _check(labels, probs, where)
    return {
        "n": int(len(y)),
        "n_malignant": int(y.sum()),
        "threshold": float(threshold),
        "auroc": auroc(y, p),
        "auprc": average_precision(y, p),
        **at_threshold(y, p, threshold),
        "brier": brier(y, p),
        "ece": expected_calibration_error(y, p),
    }

"""Classification metrics in plain numpy (no scikit-learn import: it costs each of the 30 training processes ~1 s).

Definitions follow the usual conventions (and give the same numbers as scikit-learn, which the tests check).
"""
from __future__ import annotations

import numpy as np


class MetricError(ValueError):
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

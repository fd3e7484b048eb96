"""Metric functions against hand-computed cases and scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from melanoma.evaluation.metrics import MetricError, auroc


def test_auroc_hand_computed_cases():
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0  # perfect
    assert auroc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0  # inverted
    assert auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts half
    # pairs (pos, neg): (0.4 > 0.1) (0.4 < 0.6) (0.6 = 0.6 half) (0.6 > 0.1) -> 2.5 / 4
    assert auroc([1, 0, 1, 0], [0.4, 0.1, 0.6, 0.6]) == 0.625


def test_auroc_equals_sklearn_with_many_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.random(500) + 0.3 * y, 1)  # rounding creates many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auroc_with_one_class_is_a_clear_error():
    with pytest.raises(MetricError, match="AUROC needs both classes; got 0 positive and 3 negative"):
        auroc([0, 0, 0], [0.1, 0.2, 0.3])

"""The seed x image bootstrap and the multiplicity correction, against hand-computed cases and a direct
recomputation (melanoma.evaluation.stats)."""

import numpy as np
import pytest

from melanoma.evaluation.metrics import MetricError, at_threshold, auroc
from melanoma.evaluation.stats import (
    auroc_difference,
    cell_intervals,
    draw,
    holm,
    per_seed_draws,
    seed_mean,
    two_sided_p,
)


def test_every_draw_equals_the_metric_recomputed_on_the_resampled_images():
    """The count-based AUROC (one matrix product per seed) is exact: draw by draw it equals AUROC, sensitivity
    and specificity computed from scratch on the images the draw picked (ties included)."""
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(12), np.zeros(20)].astype(int)
    p = np.round(rng.random((3, 32)), 1)  # rounded: many ties
    thr = np.array([0.3, 0.5, 0.7])
    d = draw(y, 3, 50, np.random.default_rng(1))
    got = per_seed_draws(d, y, p, thr)
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    for b in range(50):
        idx = np.r_[np.repeat(pos, d.pos[b]), np.repeat(neg, d.neg[b])]
        for s in range(3):
            assert got["auroc"][b, s] == pytest.approx(auroc(y[idx], p[s][idx]), abs=1e-12)
            m = at_threshold(y[idx], p[s][idx], thr[s])
            assert got["sensitivity"][b, s] == pytest.approx(m["sensitivity"])
            assert got["specificity"][b, s] == pytest.approx(m["specificity"])
    assert (d.seeds.sum(1) == 3).all() and (d.pos.sum(1) == 12).all() and (d.neg.sum(1) == 20).all()


def test_image_bootstrap_matches_the_hand_computed_distribution():
    """One malignant image scored 0.5 and two benign ones scored 0.2 and 0.8: a resample of the benign pair is
    (0.2, 0.2), one of each, or (0.8, 0.8) with probabilities 1/4, 1/2, 1/4, giving AUROC 1, 0.5 or 0."""
    y = np.array([1, 0, 0])
    p = np.array([[0.5, 0.2, 0.8]])
    d = draw(y, 1, 20_000, np.random.default_rng(0))
    values = seed_mean(d, per_seed_draws(d, y, p)["auroc"])
    for v, share in ((1.0, 0.25), (0.5, 0.5), (0.0, 0.25)):
        assert np.mean(values == v) == pytest.approx(share, abs=0.015)


def test_seed_part_of_the_bootstrap_matches_the_hand_computed_distribution():
    """Models whose AUROC no image resample can change (perfect, or perfectly inverted) isolate the seed part:
    per-seed differences (0, 1, 0) -> the mean of 3 seeds drawn with replacement is Binomial(3, 1/3) / 3, so
    P(difference* = 0) = 8/27, its variance is (2/9) / 3 = 2/27, the 95 % interval is [0, 1] (P(1) = 1/27 >
    2.5 %) and the two-sided p-value is about 2 x 8/27."""
    y = np.r_[np.ones(5), np.zeros(5)].astype(int)
    perfect, inverted = y.astype(float), 1.0 - y
    aug = np.stack([perfect, perfect, perfect])
    orig = np.stack([perfect, inverted, perfect])
    r = auroc_difference(y, [(aug, orig)], 20_000, seed=0)
    assert r["difference"] == pytest.approx(1 / 3)
    assert r["ci_low"] == 0 and r["ci_high"] == 1
    assert r["p_value"] == pytest.approx(16 / 27, abs=0.02)
    assert r["seed_sd"] == pytest.approx(np.std([0, 1, 0], ddof=1))
    d = draw(y, 3, 20_000, np.random.default_rng(0))
    values = seed_mean(d, per_seed_draws(d, y, aug)["auroc"] - per_seed_draws(d, y, orig)["auroc"])
    assert np.mean(values == 0) == pytest.approx(8 / 27, abs=0.01)
    assert values.var() == pytest.approx(2 / 27, abs=0.005)


def test_identical_models_differ_by_nothing_and_a_real_gain_is_found():
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(40), np.zeros(80)].astype(int)
    good = np.clip(y * 0.5 + rng.normal(0.25, 0.15, (3, 120)), 0, 1)
    weak = np.clip(y * 0.1 + rng.normal(0.45, 0.15, (3, 120)), 0, 1)
    same = auroc_difference(y, [(good, good)], 300, seed=0)
    assert same["difference"] == 0 and same["ci_low"] == 0 == same["ci_high"] and same["p_value"] == 1.0
    gain = auroc_difference(y, [(good, weak)], 1000, seed=0)
    assert gain["difference"] > 0.2 and gain["ci_low"] > 0 and gain["p_value"] == pytest.approx(2 / 1001)
    pooled = auroc_difference(y, [(good, weak), (good, weak)], 1000, seed=0)
    assert pooled["difference"] == pytest.approx(gain["difference"])  # the mean of two equal effects


def test_seed_variance_widens_the_interval():
    """The same mean difference with a spread over seeds gets a wider CI than without one: training variance
    is in the interval, not only test-image sampling."""
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(30), np.zeros(60)].astype(int)
    base = np.clip(y * 0.3 + rng.normal(0.35, 0.15, 90), 0, 1)
    steady = np.stack([base + 0.0 * k for k in range(3)])
    spread = np.stack([np.clip(base + (k - 1) * 0.15 * y, 0, 1) for k in range(3)])  # seeds differ in quality
    ref = np.stack([np.clip(base - 0.1 * y, 0, 1)] * 3)
    narrow = auroc_difference(y, [(steady, ref)], 2000, seed=0)
    wide = auroc_difference(y, [(spread, ref)], 2000, seed=0)
    assert wide["ci_high"] - wide["ci_low"] > 1.3 * (narrow["ci_high"] - narrow["ci_low"])
    assert wide["seed_sd"] > 0 == narrow["seed_sd"]


def test_cell_intervals_cover_the_seed_mean_and_are_reproducible():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(40), np.zeros(80)].astype(int)
    p = np.clip(np.r_[rng.normal(0.6, 0.2, (2, 40)).T, rng.normal(0.4, 0.2, (2, 80)).T].T, 0, 1)
    thr = np.array([0.5, 0.45])
    a, b = cell_intervals(y, p, thr, 300, seed=3), cell_intervals(y, p, thr, 300, seed=3)
    assert a == b and a != cell_intervals(y, p, thr, 300, seed=4)
    mean_auroc = np.mean([auroc(y, q) for q in p])
    lo, hi = a["auroc"]
    assert lo <= mean_auroc <= hi and hi - lo > 0.01
    assert set(a) == {"auroc", "sensitivity", "specificity", "balanced_accuracy"}


def test_holm_matches_the_hand_computed_step_down():
    """p = (0.01, 0.04, 0.03, 0.005): sorted 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 -> 0.06
    (monotone), back in the original order."""
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 0.5 x 2 = 1.0, then max(1.0, 0.9 x 1)
    assert holm([]) == []


def test_p_value_never_zero_and_one_sided_draws():
    assert two_sided_p(np.full(999, 0.1)) == pytest.approx(2 / 1000)
    assert two_sided_p(np.r_[np.full(500, -1.0), np.full(500, 1.0)]) == 1.0


def test_one_class_or_mismatched_shapes_are_metric_errors():
    with pytest.raises(MetricError, match="needs both classes"):
        draw(np.zeros(5, int), 2, 10, np.random.default_rng(0))
    y = np.r_[np.ones(3), np.zeros(3)].astype(int)
    with pytest.raises(MetricError, match="same seeds and images"):
        auroc_difference(y, [(np.zeros((2, 6)), np.zeros((3, 6)))], 10, seed=0)

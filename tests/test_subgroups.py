"""Subgroup evaluation (melanoma.evaluation.subgroups): counts, metrics equal to a direct computation, and a planted
subgroup effect found (with its Holm-adjusted p) where the average hides it, and nothing found where none is."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from melanoma.evaluation.subgroups import (
    UNKNOWN,
    correct,
    groups,
    subgroup_differences,
    subgroup_metrics,
    subgroup_value,
)


def scores(y: np.ndarray, signal: np.ndarray, seeds: int, rng: np.random.Generator) -> np.ndarray:
    """(seeds, n) P(malignant)-like scores: a logistic of label x signal plus fresh noise per seed."""
    return 1 / (1 + np.exp(-(y * signal - signal / 2 + rng.normal(0, 1, (seeds, len(y))))))


def planted(help_in_b: bool, rng: np.random.Generator):
    """600 test images in sites A, B, C (and a few unknown); Original sees B's lesions poorly (signal 0.4 vs 2.0
    elsewhere). With help_in_b, the augmented model sees B as well as the rest; without, it is Original's twin."""
    n = 600
    y = rng.permutation(np.r_[np.ones(n // 2, int), np.zeros(n // 2, int)])
    site = rng.choice(["A", "B", "C"], n).astype("<U16")
    site[:6] = UNKNOWN
    weak = np.where(site == "B", 0.4, 2.0)
    pairs = []
    for _arch in range(2):
        orig = scores(y, weak, 3, rng)
        aug = scores(y, np.full(n, 2.0) if help_in_b else weak, 3, rng)
        pairs.append((aug, orig))
    return y, {"site": site}, pairs


def test_groups_count_each_value_and_keep_unknown_last():
    y = np.array([1, 0, 1, 0, 1, 1, 0])
    rows = groups(y, np.array(["m", "f", UNKNOWN, "m", "f", "f", "f"]), min_per_class=2)
    assert [(r["value"], r["n"], r["n_malignant"], r["n_benign"], r["estimated"]) for r in rows] == [
        ("f", 4, 2, 2, True),
        ("m", 2, 1, 1, False),
        (UNKNOWN, 1, 1, 0, False),
    ]
    assert rows[0]["mask"].tolist() == [False, True, False, False, True, True, True]


def test_subgroup_metrics_equal_a_direct_computation_and_mark_the_worst_group():
    rng = np.random.default_rng(0)
    y, attrs, pairs = planted(help_in_b=False, rng=rng)
    attrs["sex"] = rng.choice(["female", "male"], len(y)).astype("<U16")
    attrs["sex"][:3] = "other"  # 3 images: listed, no estimate
    probs, thr = pairs[0][1], np.array([0.4, 0.5, 0.6])
    rows = subgroup_metrics(y, probs, thr, attrs, min_per_class=10, n_boot=200, seed=1)
    by = {(r["attribute"], r["value"]): r for r in rows}
    assert set(by) == {("site", v) for v in ("A", "B", "C", UNKNOWN)} | {
        ("sex", v) for v in ("female", "male", "other")
    }
    for (attr, value), r in by.items():
        m = attrs[attr] == value
        assert r["n"] == m.sum() and r["n_malignant"] == y[m].sum()
        if not r["estimated"]:
            assert "auroc" not in r and (value in (UNKNOWN, "other"))
            continue
        direct = np.mean([roc_auc_score(y[m], p[m]) for p in probs])
        sens = np.mean([(p[m][y[m] == 1] >= t).mean() for p, t in zip(probs, thr)])
        spec = np.mean([(p[m][y[m] == 0] < t).mean() for p, t in zip(probs, thr)])
        assert r["auroc"]["mean"] == pytest.approx(direct, abs=1e-12)
        assert r["sensitivity"]["mean"] == pytest.approx(sens) and r["specificity"]["mean"] == pytest.approx(spec)
        lo, hi = r["auroc"]["ci95"]
        assert lo < direct < hi and hi - lo < 0.3
    assert [v for (a, v), r in by.items() if r["worst"]] == [
        "B",
        "female" if by["sex", "female"]["auroc"]["mean"] < by["sex", "male"]["auroc"]["mean"] else "male",
    ]
    assert by["site", "B"]["auroc"]["mean"] < by["site", "A"]["auroc"]["mean"] - 0.2  # the planted weak group


def test_a_planted_help_in_one_subgroup_is_found_with_its_corrected_p_value():
    y, attrs, pairs = planted(help_in_b=True, rng=np.random.default_rng(2))
    rows = subgroup_differences(y, attrs, pairs, min_per_class=10, n_boot=2000, seed=3)
    correct(rows)
    by = {r["value"]: r for r in rows}
    assert set(by) == {"A", "B", "C", "worst group"}  # 6 unknown images: too few for an estimate, no row
    assert by["B"]["verdict"] == 1 and by["B"]["difference"] > 0.2 and by["B"]["p_holm"] < 0.01
    assert by["B"]["p_holm"] >= by["B"]["p_value"]
    assert by["A"]["verdict"] == 0 and by["C"]["verdict"] == 0
    w = by["worst group"]
    assert w["worst_original"] == "B" and w["verdict"] == 1 and w["ci_low"] > 0


def test_no_planted_effect_gives_no_evidence_anywhere():
    y, attrs, pairs = planted(help_in_b=False, rng=np.random.default_rng(4))
    rows = subgroup_differences(y, attrs, pairs, min_per_class=10, n_boot=2000, seed=5)
    correct(rows)
    assert len(rows) == 4 and all(r["verdict"] == 0 for r in rows), [(r["value"], r["p_holm"]) for r in rows]
    assert all(r["ci_low"] < 0 < r["ci_high"] for r in rows)


def test_a_single_pair_difference_equals_the_direct_auroc_difference():
    y, attrs, pairs = planted(help_in_b=True, rng=np.random.default_rng(6))
    (row, *_) = subgroup_differences(y, attrs, pairs[:1], min_per_class=10, n_boot=100, seed=0)
    m = attrs["site"] == "A"
    aug, orig = pairs[0]
    direct = np.mean([roc_auc_score(y[m], a[m]) - roc_auc_score(y[m], b[m]) for a, b in zip(aug, orig)])
    assert row["value"] == "A" and row["difference"] == pytest.approx(direct, abs=1e-12)


@pytest.mark.parametrize(
    "attribute, raw, expected",
    [
        ("sex", "female", "female"),
        ("sex", " Male ", "male"),
        ("sex", "", UNKNOWN),
        ("sex", "unknown", UNKNOWN),
        ("age", "35", "<40"),
        ("age", "40.0", "40-59"),
        ("age", "59", "40-59"),
        ("age", "85", "60+"),
        ("age", "", UNKNOWN),
        ("age", "-5", UNKNOWN),
        ("age", "85+", "60+"),  # top-coded ages
        ("age", ">=85", "60+"),
        ("age", "nan", UNKNOWN),
        ("site", "anterior torso", "torso"),  # ISIC 2019/archive
        ("site", "torso", "torso"),  # ISIC 2020 anatom_site_general_challenge
        ("site", "back", "torso"),  # HAM10000 localization
        ("site", "scalp", "head/neck"),
        ("site", "acral", "palms/soles"),
        ("site", "unknown", UNKNOWN),
        ("site", "", UNKNOWN),
        ("site", "Nail", "nail"),  # not on the scale: its own group, not merged by guess
        ("site", "lower_extremity", "lower extremity"),
        ("site", " Head/Neck ", "head/neck"),
        ("skin_type", "III", "III-IV"),
        ("skin_type", "4", "III-IV"),
        ("skin_type", "type vi", "V-VI"),
        ("skin_type", "I", "I-II"),
        ("skin_type", "7", UNKNOWN),
        ("skin_type", "4.0", "III-IV"),  # a numeric column read as floats
        ("skin_type", "", UNKNOWN),
    ],
)
def test_raw_metadata_becomes_a_subgroup_value_and_unknown_is_never_guessed(attribute, raw, expected):
    assert subgroup_value(attribute, raw, [40, 60]) == expected


def test_an_unknown_attribute_is_refused():
    with pytest.raises(KeyError, match="no subgroup attribute 'race'"):
        subgroup_value("race", "x", [40, 60])


@pytest.mark.parametrize("edges", [[60, 40], [40, 40], [0, 50], [40, 121]])
def test_age_edges_must_be_ascending_ages(edges):
    import yaml

    from melanoma.params import ParamsError, validate
    from tests.conftest import ROOT

    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["evaluate"]["subgroups"]["age_edges"] = edges
    with pytest.raises(ParamsError, match=r"^evaluate.subgroups.age_edges is .* ascending order"):
        validate(p)


def test_unknown_is_never_estimated_and_a_lone_group_has_no_worst_row():
    """'unknown' is listed with its counts however large it is; an attribute with one estimated group has no
    worst group to choose (no `worst` mark, no worst-group test that would repeat the group's own)."""
    rng = np.random.default_rng(3)
    y = rng.permutation(np.r_[np.ones(100, int), np.zeros(100, int)])
    site = np.where(np.arange(200) < 40, "torso", UNKNOWN)  # 160 unknown images
    p = scores(y, np.full(200, 1.0), 2, rng)
    rows = subgroup_metrics(y, p, np.array([0.5, 0.5]), {"site": site}, min_per_class=5, n_boot=50, seed=0)
    assert [(r["value"], r["estimated"], r["worst"]) for r in rows] == [("torso", True, False), (UNKNOWN, False, False)]
    diffs = subgroup_differences(y, {"site": site}, [(p, scores(y, np.full(200, 1.0), 2, rng))], 5, 50, 0)
    assert [r["value"] for r in diffs] == ["torso"]

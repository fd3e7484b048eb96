"""The verdict on a planted grid, end to end (train -> evaluate -> report), and its rules on fixed numbers.

The planted grid: every real malignant image (train, val, test) carries a weak, learnable sign (a dark spot on
70 % of them), so every cell learns something and its AUROC is stable across seeds. The held-out malignant
images also carry a red square that no real training image has. DCGAN's synthetic malignant images carry the
square too (a label-correlated artefact shared with test: that generator "helps"); DDPM's synthetic malignant
images are drawn like the real ones (more of the same: no new information). The verdict must say DCGAN helps
and find no evidence for DDPM.

Subgroups: the held-out images come from two body sites (three quarters from the back), and only the back's
malignant images carry the red square; the face's carry the weak sign alone. So DCGAN's artefact helps the back
and not the face: the subgroup verdict must find DCGAN helping the back (Holm-adjusted) and nothing for DDPM.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from melanoma.evaluation import verdict as vd
from melanoma.evaluation.report import build_report
from melanoma.io import read_csv
from tests.test_report import train_and_evaluate, write_context
from tests.tiny import tiny_params, write_pack_index

SIZE = 16


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.integers(60, 140, (n, SIZE, SIZE, 3)).astype(np.uint8)
    x[..., 0] = np.clip(x[..., 0].astype(int) + 30, 0, 255)
    return x


def _patch(
    rng: np.random.Generator, x: np.ndarray, side: int, colour: tuple[int, int, int], share: float = 1.0
) -> np.ndarray:
    """A `side` px square of `colour` at a random place on a random `share` of the images."""
    for im in x:
        if rng.random() < share:
            r, c = rng.integers(0, SIZE - side, 2)
            im[r : r + side, c : c + side] = colour
    return x


def _malignant(rng: np.random.Generator, n: int, square: bool) -> np.ndarray:
    x = _patch(rng, _noise(rng, n), 5, (35, 25, 20), share=0.7)  # the weak real sign
    return _patch(rng, x, 6, (220, 30, 40)) if square else x


def _write(folder: Path, parts: dict[str, list[tuple]]) -> None:
    """parts: split -> [(images, label, origin[, site])], written in build_dataset's layout."""
    folder.mkdir(parents=True)
    rows = []
    for split, groups in parts.items():
        np.save(folder / f"{split}.npy", np.concatenate([g[0] for g in groups]))
        labels = [(g[1], g[2], g[3] if len(g) > 3 else "") for g in groups for _ in range(len(g[0]))]
        rows += [
            {
                "split": split,
                "index": i,
                "id": f"{split}{i}",
                "label": label,
                "origin": origin,
                "upscaled": "no",
                "path": "",
                "md5": "",
                "meta_site": site,
            }
            for i, (label, origin, site) in enumerate(labels)
        ]
    write_pack_index(folder, rows, parts["train"][0][0].shape[1])


def planted_grid(root: Path) -> None:
    rng = np.random.default_rng(0)
    real_train = [(_noise(rng, 24), "benign", "real"), (_malignant(rng, 12, square=False), "malignant", "real")]
    held = {  # a quarter of each class from the face, the rest from the back; the square on the back's only
        s: [
            (_noise(rng, n), "benign", "real", "face"),
            (_noise(rng, 3 * n), "benign", "real", "back"),
            (_malignant(rng, n, square=False), "malignant", "real", "face"),
            (_malignant(rng, 3 * n, square=True), "malignant", "real", "back"),
        ]
        for s, n in (("val", 4), ("test", 12))
    }
    planted = (_malignant(rng, 12, square=True), "malignant", "dcgan")
    more_of_the_same = (_malignant(rng, 12, square=False), "malignant", "ddpm")
    for name, extra in (("Original", []), ("DCGAN", [planted]), ("DDPM", [more_of_the_same])):
        _write(root / "data/datasets" / name, {"train": real_train + extra, **held})


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("planted")
    planted_grid(root)
    p = tiny_params(
        **{
            "classifiers.archs": ["ResNet", "ViT"],
            "classifiers.datasets": ["Original", "DCGAN", "DDPM"],
            "classifiers.seeds": [0, 1, 2],
            "classifiers.train.steps": 30,
            "classifiers.train.patience": 100,
            "evaluate.bootstrap": 1000,
            "evaluate.gradcam_per_group": 0,
        }
    )
    train_and_evaluate(root, p, p["classifiers"]["archs"], p["classifiers"]["datasets"])
    write_context(root)
    r = build_report(
        p,
        root / "results/evaluation",
        root / "results",
        root / "data/synthetic",
        root / "data/datasets",
        root / "data/splits",
        root / "data/raw",
    )
    return root, r


def test_the_verdict_finds_the_planted_gain_and_no_evidence_for_the_empty_one(planted):
    root, r = planted
    pooled = {row["dataset"]: row for row in r["pooled"]}
    assert pooled["DCGAN"]["verdict"] == 1 and pooled["DCGAN"]["ci_low"] > 0 and pooled["DCGAN"]["p_holm"] < 0.05
    assert pooled["DDPM"]["verdict"] == 0 and pooled["DDPM"]["ci_low"] <= 0 <= pooled["DDPM"]["ci_high"]
    words = {s.split(" vs ")[0]: s for s in r["sentences"]}
    assert "it helps (mean AUROC change +" in words["DCGAN"]
    assert "it shows no evidence of a difference" in words["DDPM"]
    page = (root / "results/report.html").read_text()
    assert page.index(words["DCGAN"].split(" (")[0]) < page.index('id="grid"')  # the page opens with it
    metrics = json.loads((root / "results/verdict.json").read_text())
    assert metrics["pooled"]["DCGAN"]["test"]["verdict"] == 1 and metrics["pooled"]["DDPM"]["test"]["verdict"] == 0


def test_the_subgroup_verdict_finds_the_site_the_artefact_helps_and_nothing_where_none_is(planted):
    root, r = planted
    site = {(x["dataset"], x["value"]): x for x in r["subgroups"] if x["split"] == "test" and x["attribute"] == "site"}
    assert set(site) == {(d, v) for d in ("DCGAN", "DDPM") for v in ("head/neck", "torso", "worst group")}
    back, face = site["DCGAN", "torso"], site["DCGAN", "head/neck"]
    assert back["verdict"] == 1 and back["p_holm"] < 0.05 and back["ci_low"] > 0
    assert face["verdict"] == 0 and back["difference"] > face["difference"]
    assert all(x["verdict"] == 0 for x in r["subgroups"] if x["dataset"] == "DDPM")  # no planted effect: none found
    assert {x["attribute"] for x in r["subgroups"]} == {"site"}  # the other attributes are stated nowhere
    found = [t for t in r["subgroup_sentences"] if "DCGAN raises the AUROC of body site torso (72 images, 36 mal" in t]
    assert len(found) == 1 and f"Holm-adjusted p = {found[0].split('p = ')[1][:5]}" in found[0]
    assert "The source states no sex, age band, Fitzpatrick skin type band" in r["subgroup_sentences"][0]
    page = (root / "results/report.html").read_text()
    assert (
        page.index('id="subgroups"') < page.index('id="grid"') and "DCGAN raises the AUROC of body site torso" in page
    )
    row = json.loads((root / "results/subgroups/DCGAN_site.json").read_text())
    worst = site["DCGAN", "worst group"]
    assert row == {
        "groups": 2,
        "helped": 1,
        "hurt": 0,
        "worst_change": round(worst["difference"], 4),
        "worst_p_holm": round(worst["p_holm"], 4),
        "worst_verdict": worst["verdict"],
    }
    assert json.loads((root / "results/subgroups/DDPM_site.json").read_text())["helped"] == 0
    assert json.loads((root / "results/subgroups/DDPM_skin.json").read_text()) == {"groups": 0, "helped": 0, "hurt": 0}
    assert len(list((root / "results/subgroups").glob("*.json"))) == 2 * 4  # augmented datasets x attributes


def test_subgroup_metrics_equal_a_direct_computation_from_the_prediction_csvs(planted):
    root, _ = planted
    cell = root / "results/evaluation/ViT/ViT_DCGAN"
    m = json.loads((cell / "metrics.json").read_text())
    preds = [read_csv(cell / f"seed_{k}" / "predictions_test.csv") for k in m["seeds"]]
    for row in m["subgroups"]["test"]:
        if not row["estimated"]:
            continue
        per_seed = []
        for rows, k in zip(preds, m["seeds"]):
            own = [x for x in rows if x[row["attribute"]] == row["value"]]
            y = np.array([x["label"] == "malignant" for x in own])
            p = np.array([float(x["p_malignant"]) for x in own])
            thr = m["per_seed"][str(k)]["threshold"]
            per_seed.append((roc_auc_score(y, p), (p[y] >= thr).mean(), (p[~y] < thr).mean()))
            assert (len(own), int(y.sum())) == (row["n"], row["n_malignant"])
        for i, metric in enumerate(("auroc", "sensitivity", "specificity")):
            assert row[metric]["mean"] == pytest.approx(np.mean([s[i] for s in per_seed]), abs=1e-6)
            lo, hi = row[metric]["ci95"]
            assert lo <= row[metric]["mean"] + 1e-9 and row[metric]["mean"] <= hi + 1e-9


def test_augmented_and_original_cells_of_one_arch_ran_the_same_optimiser_steps(planted):
    root, _ = planted
    for arch in ("ResNet", "ViT"):
        runs = {
            d: json.loads((root / f"results/evaluation/{arch}/{arch}_{d}/metrics.json").read_text())["training"]
            for d in ("Original", "DCGAN", "DDPM")
        }
        steps = {(d, k): (t["steps_run"], t["images_seen"]) for d, seeds in runs.items() for k, t in seeds.items()}
        assert set(steps.values()) == {(30, 30 * 8)}, steps  # 36 vs 48 training images: the same budget


def _row(d: str, split: str, diff: float, lo: float, hi: float, p: float, verdict: int) -> dict:
    return {
        "arch": "pooled",
        "dataset": d,
        "split": split,
        "images": 90,
        "difference": diff,
        "ci_low": lo,
        "ci_high": hi,
        "p_value": p,
        "p_holm": p,
        "verdict": verdict,
    }


def test_sentences_and_limitations_say_what_the_numbers_say():
    pooled = [_row("DCGAN", "test", 0.05, 0.02, 0.08, 0.004, 1), _row("DDPM", "test", -0.01, -0.05, 0.03, 0.6, 0)]
    per_arch = [{**r, "arch": "ResNet"} for r in pooled]
    s = vd.sentences(pooled, per_arch)
    assert s[0].startswith(
        "DCGAN vs Original: on the internal test split (90 images) it helps (mean AUROC change "
        "+0.050 [95 % CI +0.020, +0.080], Holm-adjusted p = 0.004; 1 of 1 architectures gain"
    )
    assert "DDPM vs Original: on the internal test split (90 images) it shows no evidence of a difference" in s[1]
    twins = [
        {
            "pair": "DCGAN / DCGAN_Upscaled",
            "images": 156,
            "median_correlation": 0.998,
            "mean_abs_difference": 1.2,
            "near_identical": True,
        }
    ]
    lim = vd.limitations(
        per_arch,
        3,
        {"test": {"n": 90, "n_malignant": 30}},
        {"test": 0.8},
        {"test": {"auroc": 0.83, "cells": 30, "below": [f"C{i}" for i in range(21)]}},
        twins,
        "demo",
    )
    text = " ".join(lim)
    assert "3 seeds" in text and "fewer than 5 seeds" in text and "90 images (30 malignant)" in text
    assert "unadjusted 95 % intervals" in text and "fewer than 10 images of a class" not in text
    assert "no external test set" in text.lower() and "21 of 30 network cells (C0, C1," in text
    assert "C7 and 13 more) (seed means) score at or below it" in text and "Train longer" in text
    assert "DCGAN / DCGAN_Upscaled: the training sets are near-identical" in text and "simulator" in text
    one = " ".join(vd.limitations(per_arch, 1, {"test": {"n": 40, "n_malignant": 4}}, {}, {}, [], "local"))
    assert "ONE seed: the CIs cover test-image sampling only" in one and "include both" not in one
    assert "fewer than 10 images of a class" in one and "simulator" not in one


@pytest.mark.parametrize(
    "internal, external, source, says, never",
    [
        (0.783, 0.797, "same", "(higher there). Both come from the same source", "domain shift (site"),
        (0.850, 0.790, "same", "(lower there). Both come from the same source", "drop estimates the domain shift"),
        (
            0.850,
            0.790,
            "unknown",
            "(lower there). Whether the external set comes from another source",
            "drop estimates",
        ),
        (0.850, 0.790, "other", "): the drop estimates the domain shift (site, camera, population)", "same source"),
        (0.790, 0.850, "other", "no drop on the other source, so no sign of a domain shift", "drop estimates"),
        (0.8001, 0.7999, "same", "(the same on both)", "domain shift (site"),
    ],
)
def test_the_external_sentence_says_only_what_the_numbers_and_sources_support(internal, external, source, says, never):
    said = vd.external_sentence(internal, external, source, "how we know")
    assert says in said and never not in said, said
    assert f"{internal:.3f} on the internal test split and {external:.3f} on the external set" in said


def test_the_baseline_is_compared_on_every_held_out_split_and_cells_below_it_are_named():
    per_arch = [{"split": "test", "ci_low": 0.0, "ci_high": 0.1}]
    base = {
        "test": {"auroc": 0.885, "cells": 3, "below": ["ViT_Original", "ViT_DCGAN", "ResNet_Original"]},
        "external_test": {"auroc": 0.909, "cells": 3, "below": []},
    }
    text = vd.limitations(
        per_arch,
        3,
        {"test": {"n": 90, "n_malignant": 30}, "external_test": {"n": 50, "n_malignant": 20}},
        {"test": 0.8, "external_test": 0.7},
        base,
        [],
        "local",
        ("other", "external set from the isic2016 tables, training data from isic2019"),
    )
    internal = next(t for t in text if t.startswith("On the internal test split the colour/texture"))
    assert "reaches AUROC 0.885; all 3 network cells (seed means) score at or below it" in internal
    assert "classifiers.train.steps" in internal and "pretrained" in internal and "datasets.image_size" in internal
    external = next(t for t in text if t.startswith("On the external test set the colour/texture"))
    assert (
        "reaches AUROC 0.909; every one of the 3 network cells (seed means) scores above it."
        == external.split("baseline ")[1]
    )
    assert any("isic2019): the drop estimates the domain shift" in t for t in text)  # 0.7 < 0.8, other tables
    some = vd.baseline_sentence("test", {"auroc": 0.8, "cells": 3, "below": ["ViT_DCGAN"]})
    assert "1 of 3 network cells (ViT_DCGAN) (seed means) score at or below it" in some


def test_resamples_let_holm_reach_significance_for_a_large_family():
    """With B resamples the smallest p is 2 / (B + 1); over m tests Holm multiplies it by m. 1,000 resamples and
    48 comparisons could never go below 0.096, so the family gets enough resamples for 0.005."""
    assert vd.resamples_for(4, 1000) == 1600 and vd.resamples_for(48, 1000) == 19200
    b = vd.resamples_for(48, 1000)
    assert 48 * 2 / (b + 1) <= 0.005 and vd.resamples_for(1, 5000) == 5000


def test_upscaled_twins_at_the_input_size_are_flagged_near_identical(tmp_path):
    rng = np.random.default_rng(0)
    real = [(_noise(rng, 8), "benign", "real"), (_noise(rng, 8), "malignant", "real")]
    synth = _noise(rng, 6)
    blurred = np.clip(synth.astype(int) + rng.integers(-1, 2, synth.shape), 0, 255).astype(np.uint8)
    other = _noise(rng, 6)
    for name, x in (("DCGAN", synth), ("DCGAN_Upscaled", blurred), ("DDPM", synth), ("DDPM_Upscaled", other)):
        _write(tmp_path / name, {"train": real + [(x, "malignant", "synthetic")], "val": real})
    twins = {
        t["pair"]: t for t in vd.near_identical(tmp_path, ["DCGAN", "DCGAN_Upscaled", "DDPM", "DDPM_Upscaled"], 0.993)
    }
    assert twins["DCGAN / DCGAN_Upscaled"]["near_identical"] and twins["DCGAN / DCGAN_Upscaled"]["images"] == 6
    assert not twins["DDPM / DDPM_Upscaled"]["near_identical"]

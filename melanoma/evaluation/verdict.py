"""The answer to "does synthetic augmentation help?": every augmented dataset vs Original, per architecture and
pooled over architectures, on every held-out split, corrected for multiplicity, in plain words.

Inputs are the evaluate outputs (every seed's predictions). For each architecture x augmented dataset x held-out
split: the mean over seeds of AUROC(augmented) - AUROC(Original) on the same images, a 95 % CI and p-value from
the seed x image bootstrap (melanoma.evaluation.stats). Per dataset x split: the same difference averaged over
the architectures (a fixed effect: it speaks for these architectures, not for architectures in general).
Holm's correction runs over each family: all per-architecture comparisons, and separately all pooled effects.
A difference is called a gain (or a loss) when its Holm-adjusted p-value is below ALPHA; otherwise "no
evidence of a difference", which is not evidence of no difference: the CI says how large an effect could hide.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from melanoma.data.datasets import DatasetError, manifest
from melanoma.errors import MelanomaError
from melanoma.evaluation.stats import auroc_difference, holm
from melanoma.io import read_csv

ALPHA = 0.05
WORDS = {1: "helps", 0: "no evidence of a difference", -1: "hurts"}


class VerdictError(MelanomaError):
    """The evaluations do not line up (different images or seeds across cells); names the stage to rerun."""


def seed_probabilities(evaluation: Path, arch: str, dataset: str, split: str) -> tuple[list[str], np.ndarray,
                                                                                      np.ndarray]:
    """(ids, int labels (n,), float64 P(malignant) (S, n)) of every seed of a cell on one split, seeds in the
    order of the cell's metrics.json. Raises VerdictError when the seeds disagree on the images."""
    cell = evaluation / arch / f"{arch}_{dataset}"
    seeds = json.loads((cell / "metrics.json").read_text())["seeds"]
    ids, y, probs = None, None, []
    for k in seeds:
        rows = read_csv(cell / f"seed_{k}" / f"predictions_{split}.csv")
        these = [r["id"] for r in rows]
        if ids is not None and these != ids:
            raise VerdictError(f"{cell}: seeds {seeds[0]} and {k} scored different {split} images; rerun "
                               f"`dvc repro evaluate@{arch}`")
        ids, y = these, np.array([r["label"] == "malignant" for r in rows], dtype=int)
        probs.append([float(r["p_malignant"]) for r in rows])
    assert ids is not None and y is not None
    return ids, y, np.array(probs)


def compare(evaluation: Path, archs: list[str], datasets: list[str], splits: list[str], n_boot: int,
            seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-architecture comparisons, pooled effects): every augmented dataset vs Original on every split, with
    Holm-adjusted p-values (p_holm) and a verdict (1 helps, 0 no evidence, -1 hurts) each."""
    augmented = [d for d in datasets if d != "Original"]
    if "Original" not in datasets or not augmented:
        return [], []
    per_arch, pooled = [], []
    for split in splits:
        ref = {a: seed_probabilities(evaluation, a, "Original", split) for a in archs}
        for d in augmented:
            pairs = []
            for a in archs:
                ids, y, orig = ref[a]
                ids_d, _, aug = seed_probabilities(evaluation, a, d, split)
                if ids_d != ids or aug.shape != orig.shape:
                    raise VerdictError(f"{a}_{d} and {a}_Original were not scored on the same {split} images and "
                                       "seeds; rerun `dvc repro build_dataset evaluate`")
                pairs.append((aug, orig))
                r = auroc_difference(y, [(aug, orig)], n_boot, seed)
                per_arch.append({"arch": a, "dataset": d, "split": split, "archs": 1, "seeds": len(aug), "images": len(y),
                                 **r})
            y = ref[archs[0]][1]
            pooled.append({"arch": "pooled", "dataset": d, "split": split, "archs": len(archs),
                           "seeds": len(pairs[0][0]), "images": len(y),
                           **auroc_difference(y, pairs, n_boot, seed)})
    for family in (per_arch, pooled):
        for row, p in zip(family, holm([r["p_value"] for r in family])):
            row["p_holm"] = p
            row["verdict"] = int(np.sign(row["difference"])) if p < ALPHA else 0
    return per_arch, pooled


def _synthetic_rows(datasets_dir: Path, name: str) -> tuple[np.ndarray, list[int]]:
    """The train pack (memory-mapped: a study pack is a gigabyte) and the indices of its synthetic images."""
    folder = datasets_dir / name
    rows = [r for r in manifest(folder / "manifest.csv") if r["split"] == "train"]
    try:
        pack = np.load(folder / "train.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read {folder / 'train.npy'} ({type(e).__name__}); rerun `dvc repro "
                           f"build_dataset@{name}`") from None
    if pack.ndim != 4 or len(pack) != len(rows):
        raise DatasetError(f"{folder}: train.npy holds {pack.shape} but manifest.csv lists {len(rows)} train images; "
                           f"rerun `dvc repro build_dataset@{name}`")
    return pack, [i for i, r in enumerate(rows) if r["origin"] != "real"]


def training_set_similarity(datasets_dir: Path, a: str, b: str, chunk: int = 256) -> dict[str, float]:
    """How alike the synthetic training images of datasets `a` and `b` are at the classifier input size: the
    median over image pairs (matched in manifest order) of the Pearson correlation of their grey images, and
    the mean absolute grey difference (0-255). Read in chunks of `chunk` images. Raises DatasetError."""
    (xa, ia), (xb, ib) = _synthetic_rows(datasets_dir, a), _synthetic_rows(datasets_dir, b)
    n = min(len(ia), len(ib))
    if n == 0:
        return {"images": 0, "median_correlation": float("nan"), "mean_abs_difference": float("nan")}
    grey = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    corr, diff = [], 0.0
    for i in range(0, n, chunk):
        ga = (xa[ia[i:i + chunk]].astype(np.float32) @ grey).reshape(-1, xa.shape[1] * xa.shape[2])
        gb = (xb[ib[i:i + chunk]].astype(np.float32) @ grey).reshape(-1, xb.shape[1] * xb.shape[2])
        diff += float(np.abs(ga - gb).sum())
        ca, cb = ga - ga.mean(1, keepdims=True), gb - gb.mean(1, keepdims=True)
        corr.append((ca * cb).sum(1) / np.maximum(np.linalg.norm(ca, axis=1) * np.linalg.norm(cb, axis=1), 1e-12))
    return {"images": n, "median_correlation": float(np.median(np.concatenate(corr))),
            "mean_abs_difference": diff / (n * xa.shape[1] * xa.shape[2])}


def near_identical(datasets_dir: Path, datasets: list[str], min_corr: float) -> list[dict[str, Any]]:
    """Each plain/upscaled twin pair present (DCGAN and DCGAN_Upscaled, DDPM and DDPM_Upscaled) with its
    similarity and `near_identical`: median correlation >= min_corr (split.near_duplicate_corr), i.e. the two
    training sets are the same evidence twice at this input size."""
    out = []
    for plain in ("DCGAN", "DDPM"):
        twin = f"{plain}_Upscaled"
        if plain in datasets and twin in datasets:
            s = training_set_similarity(datasets_dir, plain, twin)
            out.append({"pair": f"{plain} / {twin}", **s,
                        "near_identical": bool(s["images"] and s["median_correlation"] >= min_corr)})
    return out


def _effect(r: dict[str, Any]) -> str:
    return (f"mean AUROC change {r['difference']:+.3f} [95 % CI {r['ci_low']:+.3f}, {r['ci_high']:+.3f}], "
            f"Holm-adjusted p = {_p(r['p_holm'])}")


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


SPLIT_NAMES = {"test": "the internal test split", "external_test": "the external test set"}


def sentences(pooled: list[dict[str, Any]], per_arch: list[dict[str, Any]]) -> list[str]:
    """One plain-words answer per augmented dataset: its pooled effect on each split, and how many single
    architectures showed a significant gain or loss there."""
    out = []
    for d in dict.fromkeys(r["dataset"] for r in pooled):
        parts = []
        for r in (r for r in pooled if r["dataset"] == d):
            arch_rows = [x for x in per_arch if x["dataset"] == d and x["split"] == r["split"]]
            gains = sum(x["verdict"] == 1 for x in arch_rows)
            losses = sum(x["verdict"] == -1 for x in arch_rows)
            parts.append(f"on {SPLIT_NAMES.get(r['split'], r['split'])} ({r['images']} images) it "
                         f"{WORDS[r['verdict']].replace('no evidence', 'shows no evidence')} ({_effect(r)}; "
                         f"{gains} of {len(arch_rows)} architectures gain, {losses} lose, after correction)")
        out.append(f"{d} vs Original: " + "; ".join(parts) + ".")
    return out


def limitations(per_arch: list[dict[str, Any]], seeds: int, counts: dict[str, Any],
                original_auroc: dict[str, float], baseline: dict[str, Any] | None, twins: list[dict[str, Any]],
                source: str) -> list[str]:
    """What the evidence can and cannot say, from the numbers themselves."""
    out = [f"Each cell was trained with {seeds} seed(s); the CIs include both training-seed and test-image "
           "variance (seed x image bootstrap)" + (". With fewer than 5 seeds the seed part of the variance is "
                                                  "poorly estimated" if seeds < 5 else "") + "."]
    for split, c in counts.items():
        widths = [r["ci_high"] - r["ci_low"] for r in per_arch if r["split"] == split]
        if widths:
            out.append(f"{SPLIT_NAMES.get(split, split).capitalize()} has {c['n']} images ({c['n_malignant']} "
                       f"malignant): a single architecture's CI spans about {np.median(widths):.3f} AUROC, so "
                       "smaller effects cannot be told from noise there.")
    if "external_test" in original_auroc:
        out.append(f"Original's mean AUROC is {original_auroc['test']:.3f} on the internal test split and "
                   f"{original_auroc['external_test']:.3f} on the external set: the gap measures the domain shift "
                   "(site, camera, population) the internal split cannot show.")
    else:
        out.append("There is no external test set: every result is on images from the same source as training "
                   "and says nothing about other sites or cameras.")
    if baseline is not None:
        out.append(f"The colour/texture + logistic regression baseline reaches test AUROC {baseline['auroc']:.3f}; "
                   f"{baseline['below']} of {baseline['cells']} network cells (seed means) score below it.")
    for t in twins:
        if t["near_identical"]:
            out.append(f"{t['pair']}: the training sets are near-identical at the classifier's input size (median "
                       f"correlation {t['median_correlation']:.4f} over {t['images']} synthetic images), so their "
                       "comparisons are the same evidence twice, not independent confirmation.")
    out.append("Pooled effects average the architectures shown (a fixed effect); they are not a prediction for "
               "other architectures.")
    if source == "demo":
        out.append("Data source: the embedded simulator. These numbers exercise the method; they say nothing "
                   "about melanoma.")
    return out

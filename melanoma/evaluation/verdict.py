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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from melanoma.data.datasets import DatasetError, manifest
from melanoma.errors import MelanomaError
from melanoma.evaluation.metrics import MetricError, auroc
from melanoma.evaluation.stats import ALPHA, auroc_difference, holm
from melanoma.evaluation.subgroups import ATTRIBUTES, UNKNOWN, correct, groups, subgroup_differences
from melanoma.io import read_csv
from melanoma.params import LABELS

MIN_CLASS = 10  # fewer malignant (or benign) images than this in a held-out split: its intervals are unreliable
WORDS = {1: "helps", 0: "no evidence of a difference", -1: "hurts"}


class VerdictError(MelanomaError):
    """The evaluations do not line up (different images or seeds across cells); names the stage to rerun."""


@dataclass(frozen=True)
class Scores:
    """One cell's predictions on one split: image ids, int labels (n,) with 1 = malignant, float64 P(malignant)
    (S, n) in [0, 1], the seeds (S) in the order of the rows of `probs`, and each image's subgroup per attribute
    ({attribute: str (n,)}, "unknown" where the predictions name none)."""

    ids: list[str]
    labels: np.ndarray
    probs: np.ndarray
    seeds: list[int]
    attributes: dict[str, np.ndarray]


def _read_predictions(path: Path, stage: str) -> list[dict[str, str]]:
    try:
        rows = read_csv(path)
    except (OSError, UnicodeDecodeError) as e:
        raise VerdictError(f"cannot read {path} ({type(e).__name__}); rerun `dvc repro {stage}`") from None
    if not rows or not {"id", "label", "p_malignant"} <= set(rows[0]):
        raise VerdictError(f"{path} has no id/label/p_malignant rows; rerun `dvc repro {stage}`")
    return rows


def seed_probabilities(evaluation: Path, arch: str, dataset: str, split: str, stage: str = "") -> Scores:
    """Every seed's predictions of a cell on one split, read from seed_<k>/predictions_<split>.csv, seeds in the
    order of the cell's metrics.json. Raises VerdictError (naming the file and the stage to rerun) when a file is
    missing or unreadable, a label is not benign/malignant, a probability is not a number in [0, 1], the seeds
    disagree on the images, or a seed's AUROC differs from the one metrics.json recorded (a stale or edited file)."""
    cell = evaluation / arch / f"{arch}_{dataset}"
    stage = stage or f"evaluate@{arch}"
    try:
        m = json.loads((cell / "metrics.json").read_text())
        seeds, recorded = list(m["seeds"]), {str(k): m["per_seed"][str(k)][split]["auroc"] for k in m["seeds"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise VerdictError(
            f"{cell / 'metrics.json'} is missing, unreadable or has no {split} results "
            f"({type(e).__name__}); rerun `dvc repro {stage}`"
        ) from None
    ids, y, probs = None, None, []
    for k in seeds:
        path = cell / f"seed_{k}" / f"predictions_{split}.csv"
        rows = _read_predictions(path, stage)
        bad = [r["label"] for r in rows if r["label"] not in LABELS]
        if bad:
            raise VerdictError(f"{path}: label {bad[0]!r} is neither benign nor malignant; rerun `dvc repro {stage}`")
        try:
            p = np.array([float(r["p_malignant"]) for r in rows])
        except (TypeError, ValueError):
            p = np.array([np.nan])
        if not np.isfinite(p).all() or (p < 0).any() or (p > 1).any():
            raise VerdictError(f"{path}: p_malignant must be numbers in [0, 1]; rerun `dvc repro {stage}`")
        these = [r["id"] for r in rows]
        if ids is not None and these != ids:
            raise VerdictError(
                f"{cell}: seeds {seeds[0]} and {k} scored different {split} images; rerun `dvc repro {stage}`"
            )
        ids, y = these, np.array([r["label"] == LABELS[1] for r in rows], dtype=int)
        attributes = {a: np.array([r.get(a) or UNKNOWN for r in rows], dtype=str) for a in ATTRIBUTES}
        try:
            same = abs(auroc(y, p) - recorded[str(k)]) < 1e-9
        except MetricError:
            raise VerdictError(f"{path}: {split} has only one class, so AUROC is undefined; check the split") from None
        if not same:
            raise VerdictError(
                f"{path} does not give the AUROC {cell / 'metrics.json'} recorded for seed {k}: a stale "
                f"or edited file; rerun `dvc repro {stage}`"
            )
        probs.append(p)
    assert ids is not None and y is not None
    return Scores(ids, y, np.array(probs), seeds, attributes)


def _check_pair(ref: Scores, other: Scores, what: str, ref_name: str, split: str, arch: str) -> None:
    if other.ids != ref.ids or not np.array_equal(other.labels, ref.labels):
        raise VerdictError(
            f"{what} and {ref_name} were not scored on the same {split} images (ids or labels "
            f"differ); rerun `dvc repro evaluate@{arch}` (and build_dataset if the datasets changed)"
        )
    if other.seeds != ref.seeds:
        raise VerdictError(
            f"{what} was evaluated with seeds {other.seeds} but {ref_name} with {ref.seeds}: seeds "
            f"are paired by value; rerun `dvc repro train_classifier evaluate@{arch}`"
        )


def resamples_for(tests: int, n_boot: int, alpha: float = ALPHA) -> int:
    """Bootstrap resamples for a family of `tests`: at least `n_boot`, and enough that the smallest attainable
    p-value (2 / (B + 1)) times `tests` (Holm's first step) is below alpha / 10, so that a clear effect can still
    be called one after the correction."""
    return max(n_boot, math.ceil(20 * tests / alpha))


def compare(
    evaluation: Path, archs: list[str], datasets: list[str], splits: list[str], n_boot: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(per-architecture comparisons, pooled effects): every augmented dataset vs Original on every split, with
    Holm-adjusted p-values (p_holm) and a verdict (1 helps, 0 no evidence, -1 hurts) each. Every comparison uses
    `resamples_for(family size, n_boot)` resamples (recorded as `resamples`). Raises VerdictError when cells were
    not scored on the same images (across datasets and across architectures) or with the same seeds."""
    augmented = [d for d in datasets if d != "Original"]
    if "Original" not in datasets or not augmented:
        return [], []
    b_arch = resamples_for(len(archs) * len(augmented) * len(splits), n_boot)
    b_pool = resamples_for(len(augmented) * len(splits), n_boot)
    per_arch, pooled = [], []
    for split in splits:
        ref = {a: seed_probabilities(evaluation, a, "Original", split) for a in archs}
        first = ref[archs[0]]
        for a in archs[1:]:  # the pooled effect pairs images across architectures by position
            if ref[a].ids != first.ids or not np.array_equal(ref[a].labels, first.labels):
                raise VerdictError(
                    f"{a}_Original and {archs[0]}_Original were not scored on the same {split} images "
                    f"in the same order; rerun `dvc repro evaluate@{a}`"
                )
        for d in augmented:
            pairs = []
            for a in archs:
                other = seed_probabilities(evaluation, a, d, split)
                _check_pair(ref[a], other, f"{a}_{d}", f"{a}_Original", split, a)
                pairs.append((other.probs, ref[a].probs))
                r = auroc_difference(first.labels, [(other.probs, ref[a].probs)], b_arch, seed)
                per_arch.append(
                    {
                        "arch": a,
                        "dataset": d,
                        "split": split,
                        "archs": 1,
                        "seeds": len(other.seeds),
                        "images": len(first.ids),
                        "resamples": b_arch,
                        **r,
                    }
                )
            r = auroc_difference(first.labels, pairs, b_pool, seed)
            pooled.append(
                {
                    "arch": "pooled",
                    "dataset": d,
                    "split": split,
                    "archs": len(archs),
                    "seeds": len(first.seeds),
                    "images": len(first.ids),
                    "resamples": b_pool,
                    **r,
                    "seed_sd": None,
                }
            )
    for family in (per_arch, pooled):
        for row, p in zip(family, holm([r["p_value"] for r in family])):
            row["p_holm"] = p
            row["verdict"] = int(np.sign(row["difference"])) if p < ALPHA else 0
    return per_arch, pooled


def compare_subgroups(
    evaluation: Path,
    archs: list[str],
    datasets: list[str],
    splits: list[str],
    min_per_class: int,
    n_boot: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Every augmented dataset vs Original within every subgroup with at least `min_per_class` images of each
    class, and in each attribute's worst group, pooled over `archs` (melanoma.evaluation.subgroups
    .subgroup_differences), on every split: one family for Holm's correction (p_holm, verdict), apart from the
    main verdict's. Rows carry dataset, split, archs and resamples (`resamples_for` the family's size). Raises
    VerdictError as `compare` does."""
    augmented = [d for d in datasets if d != "Original"]
    if "Original" not in datasets or not augmented:
        return []
    refs = {s: {a: seed_probabilities(evaluation, a, "Original", s) for a in archs} for s in splits}
    tests = 0
    for s in splits:
        first = refs[s][archs[0]]
        for a in archs[1:]:  # pooling pairs images across architectures by position
            _check_pair(first, refs[s][a], f"{a}_Original", f"{archs[0]}_Original", s, a)
        for values in first.attributes.values():
            est = [g["value"] for g in groups(first.labels, values, min_per_class) if g["estimated"]]
            tests += len(est) + (len(est) >= 2)  # the groups, and the worst-group row where there is a choice
    b = resamples_for(tests * len(augmented), n_boot)
    rows = []
    for s in splits:
        first = refs[s][archs[0]]
        for d in augmented:
            pairs = []
            for a in archs:
                other = seed_probabilities(evaluation, a, d, s)
                _check_pair(refs[s][a], other, f"{a}_{d}", f"{a}_Original", s, a)
                pairs.append((other.probs, refs[s][a].probs))
            found = subgroup_differences(first.labels, first.attributes, pairs, min_per_class, b, seed)
            rows += [{"dataset": d, "split": s, "archs": len(archs), "resamples": b, **r} for r in found]
    correct(rows, ALPHA)
    return rows


def _synthetic_rows(datasets_dir: Path, name: str) -> tuple[np.ndarray, list[int]]:
    """The train pack (memory-mapped: a study pack is a gigabyte) and the indices of its synthetic images."""
    folder = datasets_dir / name
    rows = [r for r in manifest(folder / "manifest.csv") if r["split"] == "train"]
    try:
        pack = np.load(folder / "train.npy", mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DatasetError(
            f"cannot read {folder / 'train.npy'} ({type(e).__name__}); rerun `dvc repro build_dataset@{name}`"
        ) from None
    if pack.ndim != 4 or len(pack) != len(rows):
        raise DatasetError(
            f"{folder}: train.npy holds {pack.shape} but manifest.csv lists {len(rows)} train images; "
            f"rerun `dvc repro build_dataset@{name}`"
        )
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
        ga = (xa[ia[i : i + chunk]].astype(np.float32) @ grey).reshape(-1, xa.shape[1] * xa.shape[2])
        gb = (xb[ib[i : i + chunk]].astype(np.float32) @ grey).reshape(-1, xb.shape[1] * xb.shape[2])
        diff += float(np.abs(ga - gb).sum())
        ca, cb = ga - ga.mean(1, keepdims=True), gb - gb.mean(1, keepdims=True)
        corr.append((ca * cb).sum(1) / np.maximum(np.linalg.norm(ca, axis=1) * np.linalg.norm(cb, axis=1), 1e-12))
    return {
        "images": n,
        "median_correlation": float(np.median(np.concatenate(corr))),
        "mean_abs_difference": diff / (n * xa.shape[1] * xa.shape[2]),
    }


def near_identical(datasets_dir: Path, datasets: list[str], min_corr: float) -> list[dict[str, Any]]:
    """Each plain/upscaled twin pair present (DCGAN and DCGAN_Upscaled, DDPM and DDPM_Upscaled) with its
    similarity and `near_identical`: median correlation >= min_corr (split.near_duplicate_corr), i.e. the two
    training sets are the same evidence twice at this input size."""
    out = []
    for plain in ("DCGAN", "DDPM"):
        twin = f"{plain}_Upscaled"
        if plain in datasets and twin in datasets:
            s = training_set_similarity(datasets_dir, plain, twin)
            out.append(
                {
                    "pair": f"{plain} / {twin}",
                    **s,
                    "near_identical": bool(s["images"] and s["median_correlation"] >= min_corr),
                }
            )
    return out


def _effect(r: dict[str, Any]) -> str:
    return (
        f"mean AUROC change {r['difference']:+.3f} [95 % CI {r['ci_low']:+.3f}, {r['ci_high']:+.3f}], "
        f"Holm-adjusted p = {_p(r['p_holm'])}"
    )


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
            parts.append(
                f"on {SPLIT_NAMES.get(r['split'], r['split'])} ({r['images']} images) it "
                f"{WORDS[r['verdict']].replace('no evidence', 'shows no evidence')} ({_effect(r)}; "
                f"{gains} of {len(arch_rows)} architectures gain, {losses} lose, after correction)"
            )
        out.append(f"{d} vs Original: " + "; ".join(parts) + ".")
    return out


def limitations(
    per_arch: list[dict[str, Any]],
    seeds: int,
    counts: dict[str, Any],
    original_auroc: dict[str, float],
    baseline: dict[str, dict[str, Any]],
    twins: list[dict[str, Any]],
    source: str,
    external: tuple[str, str] = ("unknown", ""),
) -> list[str]:
    """What the evidence can and cannot say, from the numbers themselves.

    `counts`: per held-out split {"n", "n_malignant"}; `original_auroc`: Original's mean AUROC per held-out split;
    `baseline`: per held-out split {"auroc": the colour/texture baseline's, "cells": network cells, "below": the
    names of the cells whose seed-mean AUROC does not beat it}; `external`: whether the external test set comes
    from another source than the training data ("other", "same" or "unknown") and how we know
    (melanoma.evaluation.report.external_source)."""
    if seeds == 1:
        out = [
            "Each cell was trained with ONE seed: the CIs cover test-image sampling only. Training variance "
            "(another seed, another model) is not measured at all, so a 'helps' or 'hurts' can be one lucky or "
            "unlucky run; use at least 3 seeds (classifiers.seeds; the study profile uses 5)."
        ]
    else:
        out = [
            f"Each cell was trained with {seeds} seeds; the CIs include both training-seed and test-image "
            "variance (seed x image bootstrap)"
            + (
                ". With fewer than 5 seeds the seed part of the variance is "
                "poorly estimated and the CIs run somewhat narrow"
                if seeds < 5
                else ""
            )
            + "."
        ]
    out.append(
        "CIs are unadjusted 95 % intervals; a verdict needs the Holm-adjusted p below 0.05 within its family "
        "(per-architecture comparisons; pooled effects), so an interval that excludes 0 can still read 'no "
        "evidence'."
    )
    for split, c in counts.items():
        widths = [r["ci_high"] - r["ci_low"] for r in per_arch if r["split"] == split]
        if widths:
            out.append(
                f"{SPLIT_NAMES.get(split, split).capitalize()} has {c['n']} images ({c['n_malignant']} "
                f"malignant): a single architecture's CI spans about {np.median(widths):.3f} AUROC, so "
                "smaller effects cannot be told from noise there."
            )
        if min(c["n_malignant"], c["n"] - c["n_malignant"]) < MIN_CLASS:
            out.append(
                f"{SPLIT_NAMES.get(split, split).capitalize()} has fewer than {MIN_CLASS} images of a class: "
                "its bootstrap intervals are unreliable (a perfect ranking of 2 malignant images gives a "
                "zero-width interval); treat its verdicts as anecdotes."
            )
    if "external_test" not in counts:
        out.append(
            "There is no external test set: every result is on images from the same source as training "
            "and says nothing about other sites or cameras."
        )
    elif {"test", "external_test"} <= set(original_auroc):
        out.append(external_sentence(original_auroc["test"], original_auroc["external_test"], *external))
    out += [baseline_sentence(split, b) for split, b in baseline.items()]
    for t in twins:
        if t["near_identical"]:
            out.append(
                f"{t['pair']}: the training sets are near-identical at the classifier's input size (median "
                f"correlation {t['median_correlation']:.4f} over {t['images']} synthetic images), so their "
                "comparisons are the same evidence twice, not independent confirmation."
            )
    out.append(
        "Pooled effects average the architectures shown (a fixed effect); they are not a prediction for "
        "other architectures."
    )
    if source == "demo":
        out.append(
            "Data source: the embedded simulator. These numbers exercise the method; they say nothing about melanoma."
        )
    return out


def external_sentence(internal: float, external: float, source: str, how: str) -> str:
    """Original's mean AUROC on the internal test split vs the external test set, in words that the two numbers
    and the sets' sources support: a domain shift is named only when the external score is lower and the
    external set comes from another source (`source` "other"; "same" or "unknown" otherwise; `how` says why)."""
    said = f"Original's mean AUROC is {internal:.3f} on the internal test split and {external:.3f} on the external set"
    lower, higher = round(external, 3) < round(internal, 3), round(external, 3) > round(internal, 3)
    order = "lower there" if lower else "higher there" if higher else "the same on both"
    if source == "other":
        if lower:
            return (
                f"{said} ({how}): the drop estimates the domain shift (site, camera, population) between them, "
                "which the internal split cannot show."
            )
        return (
            f"{said} ({how}): no drop on the other source, so no sign of a domain shift between them at this "
            "sample size."
        )
    if source == "same":
        return (
            f"{said} ({order}). Both come from the same source ({how}), so the difference is not a domain "
            "shift: it reflects how the two parts were drawn (case mix, size) and chance, and neither set says "
            "how the models do at other sites or cameras."
        )
    return (
        f"{said} ({order}). Whether the external set comes from another source than the training images is "
        f"not known ({how}), so the difference cannot be read as a domain shift: it may only reflect how the "
        "two parts were drawn (case mix, size) and chance."
    )


def baseline_sentence(split: str, b: dict[str, Any], listed: int = 8) -> str:
    """How the network cells compare with the colour/texture baseline on one held-out split; when some do not beat
    it (seed-mean AUROC at or below it), names them (the first `listed`) and what to change."""
    where, below = SPLIT_NAMES.get(split, split), b["below"]
    said = f"On {where} the colour/texture + logistic regression baseline reaches AUROC {b['auroc']:.3f}"
    if not below:
        return f"{said}; every one of the {b['cells']} network cells (seed means) scores above it."
    names = ", ".join(below[:listed]) + (f" and {len(below) - listed} more" if len(below) > listed else "")
    which = (
        f"all {b['cells']} network cells"
        if len(below) == b["cells"]
        else f"{len(below)} of {b['cells']} network cells ({names})"
    )
    return (
        f"{said}; {which} (seed means) score at or below it: those networks learned less from the images than "
        "hand-made colour and texture features, so their comparisons test under-trained models. Train longer "
        "(classifiers.train.steps, or steps: auto with more passes), start from pretrained weights "
        "(classifiers.models.<Arch>.pretrained, as the study profile does) or use a larger input "
        "(datasets.image_size) before reading their verdicts."
    )

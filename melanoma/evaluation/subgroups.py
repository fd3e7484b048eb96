"""Who does augmentation help? Metrics and the augmented-minus-Original AUROC difference within subgroups of the
test images (sex, age band, body site, Fitzpatrick skin type band), and each cell's worst group.

A subgroup is one value of one attribute ("site" = "head/neck"). "unknown" is a value of its own, never guessed
and never pooled into another group. A group gets estimates only when it holds at least `min_per_class` images of
**each** class (AUROC needs both, and a handful of malignant images gives an interval too wide to read); smaller
groups are listed with their counts and no estimate. The worst group of an attribute is its estimated group,
"unknown" aside, with the lowest seed-mean AUROC.

Uncertainty is the grid's own (melanoma.evaluation.stats): the seed x image bootstrap, here with the image draw
stratified by group and class, so that every draw keeps each group's class counts. The difference within a group
pairs seed k of the augmented cell with seed k of Original on the same image draw, pooled over architectures as
the main verdict pools them. The worst-group difference is the change in the worst group's AUROC, the minimum
taken in every draw (the worst group may change between datasets and draws), which is the worst-group measure of
distributionally robust evaluation (Sagawa et al. 2020, "Distributionally Robust Neural Networks", ICLR). The
subgroup tests form a family of their own for Holm's correction (`correct`), apart from the main verdict's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from melanoma.data.datasets import SUBGROUP_ATTRIBUTES
from melanoma.evaluation.metrics import auroc
from melanoma.evaluation.stats import (
    ALPHA,
    Draws,
    cell_intervals,
    draw,
    holm,
    interval,
    per_seed_draws,
    seed_mean,
    two_sided_p,
)

UNKNOWN = "unknown"
WORST = "worst group"  # the `value` of the worst-group row of subgroup_differences
ATTRIBUTES = SUBGROUP_ATTRIBUTES  # the manifests' meta_<name> columns they are read from
AGE_EDGES = [40, 60]  # age bands "<40", "40-59", "60+"

# Body sites on the ISIC challenges' general-site scale (anatom_site_general[_challenge]); HAM10000's finer
# `localization` values folded onto it. A value not listed keeps its own (lower-cased) name: never merged by guess.
SITES = {
    **{v: "torso" for v in ("torso", "anterior torso", "posterior torso", "lateral torso")},
    **{v: "torso" for v in ("abdomen", "back", "chest", "trunk")},
    **{v: "head/neck" for v in ("head/neck", "face", "scalp", "ear", "neck")},
    **{v: "upper extremity" for v in ("upper extremity", "hand")},
    **{v: "lower extremity" for v in ("lower extremity", "foot")},
    **{v: "palms/soles" for v in ("palms/soles", "acral")},
    **{v: "oral/genital" for v in ("oral/genital", "genital")},
}
ROMAN = ("I", "II", "III", "IV", "V", "VI")
# Fitzpatrick types in the three bands the Diverse Dermatology Images benchmark reports (Daneshjou et al. 2022,
# "Disparities in dermatology AI performance on a diverse, curated clinical image set", Sci. Adv. 8:eabq6147):
# single types are too rare in dermoscopy releases to estimate an AUROC each
SKIN_BANDS = {"I": "I-II", "II": "I-II", "III": "III-IV", "IV": "III-IV", "V": "V-VI", "VI": "V-VI"}


def age_band(age: str, edges: list[int]) -> str:
    """A release's age (ISIC's age_approx, in years, a multiple of 5) as a band between ascending `edges`: with
    [40, 60], "<40", "40-59" or "60+". Empty, unparsable or outside 0-120: "unknown"."""
    try:  # "85+" or ">=85": the releases' top-coded ages
        years = float(age.strip().removesuffix("+").removeprefix(">=").removeprefix("≥"))
    except ValueError:
        return UNKNOWN
    if not 0 <= years <= 120:
        return UNKNOWN
    lower = [e for e in edges if e <= years]
    if not lower:
        return f"<{edges[0]}"
    i = edges.index(lower[-1])
    return f"{edges[i]}+" if i == len(edges) - 1 else f"{edges[i]}-{edges[i + 1] - 1}"


def subgroup_value(attribute: str, raw: str, age_edges: list[int]) -> str:
    """One image's subgroup for `attribute` from its release's raw metadata value: sex "female"/"male"; age band
    (age_band); body site on the ISIC general-site scale (SITES); Fitzpatrick skin type band "I-II", "III-IV" or
    "V-VI" (SKIN_BANDS; from roman numerals or 1-6). Anything absent or unreadable is "unknown", never guessed.
    Raises KeyError for an attribute not in ATTRIBUTES."""
    v = " ".join(raw.strip().lower().replace("_", " ").split())  # "lower_extremity", doubled spaces
    if attribute == "sex":
        return {"female": "female", "f": "female", "male": "male", "m": "male"}.get(v, UNKNOWN)
    if attribute == "age":
        return age_band(v, age_edges)
    if attribute == "site":
        return SITES.get(v, v) if v and v not in (UNKNOWN, "na", "nan", "none") else UNKNOWN
    if attribute == "skin_type":
        v = v.removeprefix("type").removeprefix("fst").strip().upper()
        number = v.removesuffix(".0")  # "4.0": a numeric column read as floats
        v = ROMAN[int(number) - 1] if number in ("1", "2", "3", "4", "5", "6") else v
        return SKIN_BANDS.get(v, UNKNOWN)
    raise KeyError(f"no subgroup attribute {attribute!r}; known: {', '.join(ATTRIBUTES)}")


def split_attributes(rows: list[dict[str, str]], age_edges: list[int]) -> dict[str, np.ndarray]:
    """Each image's subgroup per attribute, {attribute: str (n,)} in row order, from pack manifest rows (their
    meta_<attribute> columns; a manifest without one gives "unknown" for every image)."""
    return {
        a: np.array([subgroup_value(a, r.get(f"meta_{a}") or "", age_edges) for r in rows], dtype=str)
        for a in ATTRIBUTES
    }


def groups(labels: np.ndarray, values: np.ndarray, min_per_class: int) -> list[dict[str, Any]]:
    """One attribute's subgroups: [{value, mask (bool (n,)), n, n_malignant, n_benign, estimated}] in value order,
    "unknown" last. labels: int (n,), 1 = malignant; values: str (n,) the attribute per image. An attribute the
    source never states (every value "unknown") gets no estimate: its one group is the whole split.
    "unknown" is listed with its counts and never estimated: it is not a group of patients but the images a
    source left unlabelled, often most of the split."""
    y = np.asarray(labels).astype(bool)
    values = np.asarray(values, dtype=str)
    stated = bool((values != UNKNOWN).any())
    out = []
    for v in sorted(set(values), key=lambda v: (v == UNKNOWN, v)):
        mask = values == v
        pos, neg = int(y[mask].sum()), int((~y[mask]).sum())
        out.append(
            {
                "value": v,
                "mask": mask,
                "n": pos + neg,
                "n_malignant": pos,
                "n_benign": neg,
                "estimated": stated and v != UNKNOWN and min(pos, neg) >= min_per_class,
            }
        )
    return out


def _worst(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The estimated group with the lowest AUROC, where there are at least two to choose from."""
    known = [r for r in rows if r["estimated"]]
    return min(known, key=lambda r: r["auroc"]["mean"]) if len(known) >= 2 else None


def subgroup_metrics(
    labels: np.ndarray,
    probs: np.ndarray,
    thresholds: np.ndarray,
    attributes: dict[str, np.ndarray],
    min_per_class: int,
    n_boot: int,
    seed: int,
) -> list[dict[str, Any]]:
    """One cell's metrics per subgroup: AUROC, and sensitivity and specificity at each seed's own threshold (chosen
    on val), each as the mean over seeds with a 95 % seed x image bootstrap CI (`ci95`).

    labels: int (n,); probs: float (S, n) P(malignant) of S seeds; thresholds: (S,); attributes: {name: str (n,)}.
    Returns one row per (attribute, value): attribute, value, n, n_malignant, n_benign, estimated, and for
    estimated groups auroc/sensitivity/specificity {mean, ci95}; `worst` is True on each attribute's worst group.
    """
    y = np.asarray(labels).astype(int)
    p = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    t = np.asarray(thresholds, dtype=np.float64)
    out = []
    for name, values in attributes.items():
        rows = []
        for g in groups(y, values, min_per_class):
            mask = g.pop("mask")
            row = {"attribute": name, **g, "worst": False}
            if g["estimated"]:
                yg, pg = y[mask], p[:, mask]
                ci = cell_intervals(yg, pg, t, n_boot, seed)
                pos, neg = yg == 1, yg == 0
                means = {
                    "auroc": np.mean([auroc(yg, s) for s in pg]),
                    "sensitivity": np.mean([(s[pos] >= k).mean() for s, k in zip(pg, t)]),
                    "specificity": np.mean([(s[neg] < k).mean() for s, k in zip(pg, t)]),
                }
                row.update({m: {"mean": float(v), "ci95": ci[m]} for m, v in means.items()})
            rows.append(row)
        worst = _worst(rows)
        if worst is not None:
            worst["worst"] = True
        out += rows
    return out


def _group_auroc_draws(
    y: np.ndarray, mask: np.ndarray, images: Draws, seeds: np.ndarray, probs: np.ndarray
) -> np.ndarray:
    """(B,) seed-mean AUROC of one model on one group's image draw and the given seed draw."""
    d = Draws(seeds, images.pos, images.neg)
    return seed_mean(d, per_seed_draws(d, y[mask], probs[:, mask])["auroc"])


def subgroup_differences(
    labels: np.ndarray,
    attributes: dict[str, np.ndarray],
    pairs: list[tuple[np.ndarray, np.ndarray]],
    min_per_class: int,
    n_boot: int,
    seed: int,
) -> list[dict[str, Any]]:
    """The augmented-minus-Original AUROC difference in every estimated subgroup and in each attribute's worst
    group, averaged over the (augmented, Original) pairs given (one per architecture, seed k paired with seed k).

    labels: int (n,); attributes: {name: str (n,)}; pairs: [(probs_aug (S, n), probs_orig (S, n))]. Rows:
    attribute, value ("worst group" for the worst-group row, with `worst_original` and `worst_augmented` naming the
    group that is worst by the point estimate), n, n_malignant, n_benign, auroc_augmented and auroc_original (a
    group's AUROC, mean over pairs and seeds, with its 95 % CI: [point, low, high]), difference, ci_low, ci_high
    (95 %), p_value (two-sided, unadjusted: `correct` adjusts a family). Groups without enough images get no row."""
    y = np.asarray(labels).astype(int)
    rng = np.random.default_rng(seed)
    seed_draws = [draw(y, len(np.atleast_2d(a)), n_boot, rng).seeds for a, _ in pairs]  # per architecture
    out = []
    for name, values in attributes.items():
        est = [g for g in groups(y, values, min_per_class) if g["estimated"]]
        if not est:
            continue
        images = {g["value"]: draw(y[g["mask"]], 1, n_boot, rng) for g in est}  # stratified by group and class
        curves: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}  # value -> per pair (aug, orig) (B,) draws
        points: dict[str, list[tuple[float, float]]] = {}
        for g in est:
            m, d = g["mask"], images[g["value"]]
            curves[g["value"]] = [
                (_group_auroc_draws(y, m, d, s, np.atleast_2d(a)), _group_auroc_draws(y, m, d, s, np.atleast_2d(b)))
                for (a, b), s in zip(pairs, seed_draws)
            ]
            points[g["value"]] = [
                (
                    float(np.mean([auroc(y[m], row) for row in np.atleast_2d(a)[:, m]])),
                    float(np.mean([auroc(y[m], row) for row in np.atleast_2d(b)[:, m]])),
                )
                for a, b in pairs
            ]
            diffs = np.mean([a - b for a, b in curves[g["value"]]], axis=0)
            counts = {k: g[k] for k in ("n", "n_malignant", "n_benign")}
            out.append(
                {
                    "attribute": name,
                    "value": g["value"],
                    **counts,
                    **{
                        f"auroc_{which}": [
                            float(np.mean([pt[i] for pt in points[g["value"]]])),
                            *interval(np.mean([c[i] for c in curves[g["value"]]], axis=0)),
                        ]
                        for i, which in enumerate(("augmented", "original"))
                    },
                    **_summary(float(np.mean([a - b for a, b in points[g["value"]]])), diffs),
                }
            )
        if len(est) >= 2:
            out.append(_worst_row(name, [g["value"] for g in est], curves, points, len(pairs)))
    return out


def _summary(point: float, diffs: np.ndarray) -> dict[str, float]:
    lo, hi = interval(diffs)
    return {"difference": point, "ci_low": lo, "ci_high": hi, "p_value": two_sided_p(diffs)}


def _worst_row(
    name: str,
    known: list[str],
    curves: dict[str, list[tuple[np.ndarray, np.ndarray]]],
    points: dict[str, list[tuple[float, float]]],
    n_pairs: int,
) -> dict[str, Any]:
    """The change in the worst group's AUROC: per architecture min over groups (augmented) minus min over groups
    (Original), in every draw and for the point estimate, averaged over architectures."""
    diffs = np.mean(
        [
            np.min([curves[v][i][0] for v in known], axis=0) - np.min([curves[v][i][1] for v in known], axis=0)
            for i in range(n_pairs)
        ],
        axis=0,
    )
    mean_aug = {v: np.mean([a for a, _ in points[v]]) for v in known}
    mean_orig = {v: np.mean([b for _, b in points[v]]) for v in known}
    point = np.mean([min(points[v][i][0] for v in known) - min(points[v][i][1] for v in known) for i in range(n_pairs)])
    return {
        "attribute": name,
        "value": WORST,
        "worst_original": min(mean_orig, key=mean_orig.get),
        "worst_augmented": min(mean_aug, key=mean_aug.get),
        **_summary(float(point), diffs),
    }


def correct(family: list[dict[str, Any]], alpha: float = ALPHA) -> None:
    """Holm-adjust a family of subgroup_differences rows (each with `p_value` and `difference`) in place: add
    `p_holm`, and `verdict` 1 (helps), -1 (hurts) or 0 (no evidence) at family-wise level `alpha`."""
    for row, p in zip(family, holm([r["p_value"] for r in family], alpha)):
        row["p_holm"] = p
        row["verdict"] = int(np.sign(row["difference"])) if p < alpha else 0


# ------------------------------------------------------------------------------------------ the report's words

NAMES = {"sex": "sex", "age": "age band", "site": "body site", "skin_type": "Fitzpatrick skin type band"}
WHERE = {"test": "On test", "external_test": "On the external test set"}
VERDICT_WORDS = {1: "helps", 0: "no evidence of a difference", -1: "hurts"}


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _ci(v: list[float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def worst_groups(rows: list[dict[str, Any]], split: str) -> dict[str, dict[str, Any]]:
    """Per attribute, Original's worst group on `split`: of the groups compare_subgroups estimated (at least
    min_per_class images of each class, "unknown" never), the one with the lowest AUROC pooled over
    architectures, where there are at least two. Returns {attribute: that group's row} (the rows of the first
    augmented dataset listed, whose auroc_original every dataset shares)."""
    first = next((r["dataset"] for r in rows if r["split"] == split), None)
    own = [r for r in rows if r["split"] == split and r["dataset"] == first and r["value"] != WORST]
    out: dict[str, dict[str, Any]] = {}
    for a in dict.fromkeys(r["attribute"] for r in own):
        mine = [r for r in own if r["attribute"] == a]
        if len(mine) >= 2:
            out[a] = min(mine, key=lambda r: r["auroc_original"][0])
    return out


def _finding(r: dict[str, Any], average: dict[str, Any] | None) -> str:
    """One sentence for a subgroup row with a verdict: the group, its size, both AUROCs, the change with its
    unadjusted CI and the Holm-adjusted p, and what the whole split shows beside it."""
    change = (
        f"AUROC change {r['difference']:+.3f} [unadjusted 95 % CI {r['ci_low']:+.3f}, {r['ci_high']:+.3f}], "
        f"Holm-adjusted p = {_p(r['p_holm'])}"
    )
    verb = "raises" if r["verdict"] > 0 else "lowers"
    if r["value"] == WORST:
        what = (
            f"{verb} the AUROC of the worst-off group by {NAMES[r['attribute']]} ({r['worst_original']} with "
            f"Original, {r['worst_augmented']} with {r['dataset']})"
        )
    else:
        what = (
            f"{verb} the AUROC of {NAMES[r['attribute']]} {r['value']} ({r['n']} images, {r['n_malignant']} "
            f"malignant) from {r['auroc_original'][0]:.3f} to {r['auroc_augmented'][0]:.3f}"
        )
    whole = (
        f"; over all images: {average['difference']:+.3f}, {VERDICT_WORDS[average['verdict']]}"
        if average is not None
        else ""
    )
    return f"{WHERE.get(r['split'], r['split'])}, {r['dataset']} {what}: {change}{whole}."


def sentences(
    rows: list[dict[str, Any]],
    pooled: list[dict[str, Any]],
    cell: dict[str, list[dict[str, Any]]],
    min_per_class: int,
    compared: bool,
) -> list[str]:
    """The report's plain words on subgroups, from compare_subgroups' `rows`: the attributes the source never
    states, Original's worst group per attribute, every group (and worst-off group) whose AUROC an augmented
    dataset raises or lowers after Holm's correction, with what the whole split shows beside it (`pooled`:
    verdict.compare's pooled rows), or, with no such finding, the widest interval; then the groups too small to
    estimate. `cell`: one cell's metrics.json `subgroups` ({split: subgroup_metrics rows}, which list every
    group); `compared`: whether there is an Original and an augmented dataset to compare."""
    every = [g for split_rows in cell.values() for g in split_rows]
    stated = {g["attribute"] for g in every if g["value"] != UNKNOWN}
    unstated = [NAMES[a] for a in dict.fromkeys(g["attribute"] for g in every) if a not in stated]
    out = [f"The source states no {', '.join(unstated)} for these images."] if unstated else []
    if not compared:
        out.append("There is no augmented dataset and Original pair in classifiers.datasets to compare.")
    elif not rows:
        out.append(f"No subgroup has {min_per_class} images of each class (evaluate.subgroups.min_per_class).")
    for split in dict.fromkeys(r["split"] for r in rows):
        worst = worst_groups(rows, split)
        if worst:
            out.append(
                f"{WHERE.get(split, split)}, Original's lowest AUROC (pooled over architectures, 95 % CI) among "
                f"the groups with at least {min_per_class} images of each class: "
                + "; ".join(f"{NAMES[a]} {r['value']}: {_ci(r['auroc_original'])}" for a, r in worst.items())
                + "."
            )
    average = {(r["dataset"], r["split"]): r for r in pooled}
    found = [r for r in rows if r["verdict"] != 0]
    out += [_finding(r, average.get((r["dataset"], r["split"]))) for r in found]
    if found:
        out.append(
            "A change found in one group and not in another is not by itself evidence that the groups differ: "
            "no test of the difference between groups is made."
        )
    elif rows:
        wide = max(rows, key=lambda r: r["ci_high"] - r["ci_low"])
        where = (
            f"the worst-off group by {NAMES[wide['attribute']]}"
            if wide["value"] == WORST
            else f"{NAMES[wide['attribute']]} {wide['value']}"
        )
        out.append(
            f"No subgroup shows evidence that an augmented dataset raises or lowers its AUROC ({len(rows)} tests, "
            f"Holm-corrected): the evidence cannot tell. The widest unadjusted interval, {wide['dataset']} for "
            f"{where}, [{wide['ci_low']:+.3f}, {wide['ci_high']:+.3f}], says how large an effect these images "
            "could hide."
        )
    small = [(s, g) for s, split_rows in cell.items() for g in split_rows if g["attribute"] in stated]
    small = [(s, g) for s, g in small if not g["estimated"] and g["value"] != UNKNOWN]
    if small:
        out.append(
            f"Too few images to estimate (fewer than {min_per_class} of a class), so never the worst group and "
            "never tested: "
            + "; ".join(
                f"{NAMES[g['attribute']]} {g['value']}{'' if s == 'test' else ' (external)'} "
                f"({g['n_malignant']} malignant, {g['n_benign']} benign)"
                for s, g in small
            )
            + "."
        )
    return out

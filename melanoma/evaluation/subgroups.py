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
from melanoma.evaluation.stats import Draws, cell_intervals, draw, interval, per_seed_draws, seed_mean, two_sided_p

UNKNOWN = "unknown"
ALPHA = 0.05
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
    try:
        years = float(age)
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
    v = raw.strip().lower()
    if attribute == "sex":
        return {"female": "female", "f": "female", "male": "male", "m": "male"}.get(v, UNKNOWN)
    if attribute == "age":
        return age_band(v, age_edges)
    if attribute == "site":
        return SITES.get(v, v) if v and v not in (UNKNOWN, "na", "nan", "none") else UNKNOWN
    if attribute == "skin_type":
        v = v.removeprefix("type").removeprefix("fst").strip().upper()
        v = ROMAN[int(v) - 1] if v in ("1", "2", "3", "4", "5", "6") else v
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
    source never states (every value "unknown") gets no estimate: its one group is the whole split."""
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
                "estimated": stated and min(pos, neg) >= min_per_class,
            }
        )
    return out


def _worst(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    known = [r for r in rows if r["estimated"] and r["value"] != UNKNOWN]
    return min(known, key=lambda r: r["auroc"]["mean"]) if known else None


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
        known = [g["value"] for g in est if g["value"] != UNKNOWN]
        if known:
            out.append(_worst_row(name, known, curves, points, len(pairs)))
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
        "value": "worst group",
        "worst_original": min(mean_orig, key=mean_orig.get),
        "worst_augmented": min(mean_aug, key=mean_aug.get),
        **_summary(float(point), diffs),
    }


def correct(family: list[dict[str, Any]], alpha: float = ALPHA) -> None:
    """Holm-adjust a family of subgroup rows in place: `p_holm`, and `verdict` 1 (helps), -1 (hurts) or 0 (no
    evidence) at family-wise level `alpha`."""
    from melanoma.evaluation.stats import holm

    for row, p in zip(family, holm([r["p_value"] for r in family], alpha)):
        row["p_holm"] = p
        row["verdict"] = int(np.sign(row["difference"])) if p < alpha else 0


# ------------------------------------------------------------------------------------------ the report's words

NAMES = {"sex": "sex", "age": "age band", "site": "body site", "skin_type": "Fitzpatrick skin types"}
WHERE = {"test": "On test", "external_test": "On the external test set"}


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _ci(v: list[float]) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def worst_groups(rows: list[dict[str, Any]], split: str) -> dict[str, dict[str, Any]]:
    """Per attribute, Original's worst subgroup on `split` (lowest AUROC pooled over architectures, "unknown"
    aside) as the compare_subgroups row of its group: {attribute: row}."""
    first = next((r["dataset"] for r in rows if r["split"] == split), None)
    own = [
        r for r in rows if r["split"] == split and r["dataset"] == first and r["value"] not in ("worst group", UNKNOWN)
    ]
    out: dict[str, dict[str, Any]] = {}
    for r in own:
        if r["attribute"] not in out or r["auroc_original"][0] < out[r["attribute"]]["auroc_original"][0]:
            out[r["attribute"]] = r
    return out


def sentences(
    rows: list[dict[str, Any]], pooled: list[dict[str, Any]], cell_rows: list[dict[str, Any]], min_per_class: int
) -> list[str]:
    """The report's plain words on subgroups: the attributes the source never states, Original's worst group
    per attribute, every subgroup (and worst group) where an augmented dataset helps or hurts after Holm's
    correction, set against what the average over all images says (`pooled`: verdict.compare's pooled rows), or,
    with no such finding, how large an effect the widest interval could hide; and the groups too small to
    estimate (from `cell_rows`: one cell's subgroup_metrics rows on test, which list every group)."""
    stated = {g["attribute"] for g in cell_rows if g["value"] != UNKNOWN}
    unstated = [NAMES[a] for a in dict.fromkeys(g["attribute"] for g in cell_rows) if a not in stated]
    out = [f"The source states no {', '.join(unstated)} for these images."] if unstated else []
    unestimated = [g for g in cell_rows if g["attribute"] in stated and not g["estimated"]]
    if not rows:
        out.append("No subgroup has enough images of both classes to compare (evaluate.subgroups.min_per_class).")
    for split in dict.fromkeys(r["split"] for r in rows):
        worst = worst_groups(rows, split)
        if worst:
            out.append(
                f"{WHERE.get(split, split)}, Original's worst group (AUROC pooled over architectures, 95 % CI) "
                "per attribute: "
                + "; ".join(f"{NAMES[a]} {r['value']}: {_ci(r['auroc_original'])}" for a, r in worst.items())
                + "."
            )
    average = {(r["dataset"], r["split"]): r for r in pooled}
    found = [r for r in rows if r["verdict"] != 0]
    for r in found:
        change = (
            f"AUROC change {r['difference']:+.3f} [95 % CI {r['ci_low']:+.3f}, {r['ci_high']:+.3f}], "
            f"Holm-adjusted p = {_p(r['p_holm'])}"
        )
        if r["value"] == "worst group":
            what = f"{'raises' if r['verdict'] > 0 else 'lowers'} the worst {NAMES[r['attribute']]} group's AUROC"
        else:
            what = f"{'helps' if r['verdict'] > 0 else 'hurts'} {NAMES[r['attribute']]} {r['value']}"
        a = average.get((r["dataset"], r["split"]))
        hidden = (
            f"; the average over all images ({a['difference']:+.3f}, "
            f"{'no evidence of a difference' if a['verdict'] == 0 else 'helps' if a['verdict'] > 0 else 'hurts'})"
            " does not show this"
            if a is not None and a["verdict"] != r["verdict"]
            else ""
        )
        out.append(f"{WHERE.get(r['split'], r['split'])}, {r['dataset']} {what}: {change}{hidden}.")
    if rows and not found:
        wide = max(rows, key=lambda r: r["ci_high"] - r["ci_low"])
        name = "its worst group" if wide["value"] == "worst group" else wide["value"]
        out.append(
            f"No subgroup shows evidence that an augmented dataset helps or hurts it ({len(rows)} tests, "
            f"Holm-corrected): the evidence cannot tell. The widest interval, {wide['dataset']} in "
            f"{NAMES[wide['attribute']]} {name} [{wide['ci_low']:+.3f}, {wide['ci_high']:+.3f}], says how "
            "large an effect these images could hide."
        )
    if unestimated:
        out.append(
            f"Too few images to estimate (fewer than {min_per_class} of a class): "
            + "; ".join(
                f"{NAMES[g['attribute']]} {g['value']} ({g['n_malignant']} malignant, {g['n_benign']} benign)"
                for g in unestimated
            )
            + "."
        )
    return out

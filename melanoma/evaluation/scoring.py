"""Scoring any model that gives P(malignant) per seed: thresholds on val, metrics, summaries over seeds and the
files an evaluated cell holds (predictions, curves, confusion matrices, classification reports).

Used by `evaluate` (the networks) and `baseline` (the colour/texture model); it imports no torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from melanoma.data.datasets import load_split
from melanoma.evaluation.metrics import (
    SEED_METRICS,
    calibration,
    choose_threshold,
    point_metrics,
    pr_points,
    roc_points,
)
from melanoma.evaluation.stats import cell_intervals
from melanoma.evaluation.subgroups import ATTRIBUTES, split_attributes, subgroup_metrics
from melanoma.io import read_csv, write_csv
from melanoma.params import LABELS

EVAL_SPLITS = ("test", "external_test")


def split_index(
    data_dir: Path, splits: list[str], age_edges: list[int]
) -> tuple[dict[str, list[str]], dict[str, dict[str, np.ndarray]]]:
    """Per split of a dataset folder, in pack order: the image ids, and each image's subgroup per attribute
    ({split: {attribute: str (n,)}}, melanoma.evaluation.subgroups.split_attributes)."""
    rows = read_csv(data_dir / "manifest.csv")
    ids = {s: [r["id"] for r in rows if r["split"] == s] for s in splits}
    return ids, {s: split_attributes([r for r in rows if r["split"] == s], age_edges) for s in splits}


def _confusion_png(c: dict[str, int], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
    fig, ax = plt.subplots(figsize=(3.4, 3.0), dpi=100)
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set_xticks([0, 1], ["benign", "malignant"])
    ax.set_yticks([0, 1], ["benign", "malignant"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def classification_report(m: dict[str, Any]) -> str:
    """Per-class precision/recall/F1/support at the chosen threshold, in scikit-learn's familiar layout."""
    c = m["confusion"]
    rows = {
        "benign": (c["tn"], c["fn"], c["fp"], c["tn"] + c["fp"]),
        "malignant": (c["tp"], c["fp"], c["fn"], c["tp"] + c["fn"]),
    }
    lines = [f"{'':>14}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}", ""]
    scores = {}
    for name, (tp, fp, fn, support) in rows.items():
        prec = tp / (tp + fp) if tp + fp else 0.0
        rec = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        scores[name] = (prec, rec, f1, support)
        lines.append(f"{name:>14}{prec:>10.4f}{rec:>10.4f}{f1:>10.4f}{support:>10d}")
    n = sum(s[3] for s in scores.values())
    lines += ["", f"{'accuracy':>14}{'':>10}{'':>10}{m['accuracy']:>10.4f}{n:>10d}"]
    for label, w in (("macro avg", lambda s: 1 / 2), ("weighted avg", lambda s: s[3] / n)):
        avg = [sum(w(s) * s[k] for s in scores.values()) for k in range(3)]
        lines.append(f"{label:>14}{avg[0]:>10.4f}{avg[1]:>10.4f}{avg[2]:>10.4f}{n:>10d}")
    lines.append(f"\nthreshold on P(malignant): {m['threshold']:.6f} (chosen on val)")
    return "\n".join(lines) + "\n"


def _curves(tmp: Path, s: str, y: np.ndarray, p: np.ndarray, bins: int) -> None:
    """ROC, precision-recall and calibration CSVs of one held-out split (what dvc.yaml's plots render)."""
    roc, pr = roc_points(y, p), pr_points(y, p)
    write_csv(tmp / f"roc_{s}.csv", [{"fpr": f, "tpr": t} for f, t in zip(roc["fpr"], roc["tpr"])], ["fpr", "tpr"])
    write_csv(
        tmp / f"pr_{s}.csv",
        [{"recall": r, "precision": q} for r, q in zip(pr["recall"], pr["precision"])],
        ["recall", "precision"],
    )
    cal = calibration(y, p, bins)
    write_csv(
        tmp / f"calibration_{s}.csv",
        [
            {"mean_predicted": a, "fraction_malignant": b, "count": int(n)}
            for a, b, n in zip(cal["mean_predicted"], cal["fraction_malignant"], cal["count"])
            if n
        ],
        ["mean_predicted", "fraction_malignant", "count"],
    )


def _predictions_csv(
    path: Path, ids: list[str], y: np.ndarray, p: np.ndarray, thr: float, attributes: dict[str, np.ndarray]
) -> None:
    """One seed's predictions on one split, with each image's subgroups (columns ATTRIBUTES)."""
    write_csv(
        path,
        [
            {
                "id": i,
                "label": LABELS[int(t)],
                "p_malignant": f"{q:.8f}",
                "predicted": LABELS[int(q >= thr)],
                **{a: attributes[a][n] for a in ATTRIBUTES},
            }
            for n, (i, t, q) in enumerate(zip(ids, y, p))
        ],
        ["id", "label", "p_malignant", "predicted", *ATTRIBUTES],
    )


def _packaged_outputs(
    tmp: Path, cell: str, s: str, y: np.ndarray, p: np.ndarray, m: dict[str, Any], ep: dict[str, Any]
) -> None:
    """The packaged seed's curves, confusion matrix and classification report of one held-out split."""
    _curves(tmp, s, y, p, ep["calibration_bins"])
    _confusion_png(m["confusion"], f"{cell} {s} (thr {m['threshold']:.3f})", tmp / f"confusion_{s}.png")
    (tmp / f"classification_report_{s}.txt").write_text(classification_report(m))


def score_seeds(
    tmp: Path,
    cell: str,
    labels: dict[str, np.ndarray],
    ids: dict[str, list[str]],
    attributes: dict[str, dict[str, np.ndarray]],
    probs: dict[int, dict[str, np.ndarray]],
    packaged: int,
    ep: dict[str, Any],
) -> dict[str, Any]:
    """Thresholds, metrics and summaries of every seed of one cell (or of any scorer with per-seed probabilities).

    labels/ids/attributes: per split ("val" required; attributes as split_index gives them); probs: {seed:
    {split: float64 (n,) P(malignant)}}. Writes seed_<k>/predictions_<split>.csv for every seed and the packaged
    seed's curves, confusion PNGs and reports into `tmp`. Returns the metrics.json body: the packaged seed's
    threshold and per-split metrics at the top (what its package reports; held-out splits with an
    image-bootstrap ci95), `per_seed`, `over_seeds`: per held-out split, each metric's mean and sd over seeds
    plus seed x image bootstrap CIs, and `subgroups`: per held-out split, subgroup_metrics' rows (every subgroup
    with at least evaluate.subgroups.min_per_class images of each class estimated)."""
    seeds = list(probs)
    thr = {
        k: choose_threshold(labels["val"], probs[k]["val"], ep["threshold"], ep["target_sensitivity"]) for k in seeds
    }
    per_seed: dict[str, Any] = {}
    for k in seeds:
        (tmp / f"seed_{k}").mkdir()
        per_seed[str(k)] = {"threshold": thr[k]}
        for s, y in labels.items():
            path = tmp / f"seed_{k}" / f"predictions_{s}.csv"
            _predictions_csv(path, ids[s], y, probs[k][s], thr[k], attributes[s])
            per_seed[str(k)][s] = point_metrics(y, probs[k][s], thr[k], where=f"{cell} seed {k} {s}")
    rule = ep["threshold"] + (f" {ep['target_sensitivity']}" if ep["threshold"] == "sensitivity" else "")
    result: dict[str, Any] = {
        "threshold_rule": rule,
        "bootstrap": {
            "resamples": ep["bootstrap"],
            "seed": ep["seed"],
            "level": 0.95,
            "stratified": True,
            "over": "seeds x images" if len(seeds) > 1 else "images (one seed or a deterministic model)",
        },
        "seeds": seeds,
        "seed": packaged,
        **per_seed[str(packaged)],
        "per_seed": per_seed,
        "over_seeds": {},
        "subgroups": {},
    }
    for s, y in labels.items():
        if s == "val":
            continue
        result[s] = {
            **result[s],
            "ci95": cell_intervals(y, probs[packaged][s][None], np.array([thr[packaged]]), ep["bootstrap"], ep["seed"]),
        }
        _packaged_outputs(tmp, cell, s, y, probs[packaged][s], result[s], ep)
        values = {m: np.array([per_seed[str(k)][s][m] for k in seeds]) for m in SEED_METRICS}
        stacked, thresholds = np.stack([probs[k][s] for k in seeds]), np.array([thr[k] for k in seeds])
        ci = cell_intervals(y, stacked, thresholds, ep["bootstrap"], ep["seed"])
        result["over_seeds"][s] = {
            m: {
                "mean": float(v.mean()),
                "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                **({"ci95": ci[m]} if m in ci else {}),
            }
            for m, v in values.items()
        }
        minimum = ep["subgroups"]["min_per_class"]
        result["subgroups"][s] = subgroup_metrics(
            y, stacked, thresholds, attributes[s], minimum, ep["bootstrap"], ep["seed"]
        )
    return result


def eval_splits(data_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """val and every held-out split the dataset has, as (uint8 images, int labels)."""
    splits = {"val": load_split(data_dir, "val")}
    for s in EVAL_SPLITS:
        if (data_dir / f"{s}.npy").is_file():
            splits[s] = load_split(data_dir, s)
    return splits

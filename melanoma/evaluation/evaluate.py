"""The `evaluate` stage for one grid cell: predictions on val and the real test split(s), metrics, plots, GradCAM.

The decision threshold is chosen on **val** (Youden's J, or a target sensitivity) and applied unchanged to test
and external test. Metrics on test carry a seeded, stratified 95 % bootstrap CI. Curve data (ROC, PR,
calibration) are CSVs that dvc.yaml's top-level `plots:` renders; the confusion matrices are PNGs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melanoma.classifiers.inference import load_classifier, probabilities, standardise
from melanoma.data.datasets import DatasetError, load_split
from melanoma.engine import Runtime
from melanoma.evaluation.metrics import (bootstrap_ci, calibration, choose_threshold, point_metrics, pr_points,
                                 roc_points)
from melanoma.io import atomic_dir, read_csv, write_csv
from melanoma.params import LABELS

EVAL_SPLITS = ("test", "external_test")


def _ids(data_dir: Path, split: str) -> list[str]:
    return [r["id"] for r in read_csv(data_dir / "manifest.csv") if r["split"] == split]


def _norm(cfg: dict[str, Any], rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell's normalisation mean and std as (1, 3, 1, 1) float32 tensors on the runtime's device."""
    norm = cfg["normalisation"]
    return (torch.tensor(norm["mean"], device=rt.device).view(1, 3, 1, 1),
            torch.tensor(norm["std"], device=rt.device).view(1, 3, 1, 1))


def _predict(model: torch.nn.Module, cfg: dict[str, Any], images: np.ndarray, batch: int, rt: Runtime) -> np.ndarray:
    """P(malignant) float64 (N,) for uint8 (N, H, W, 3) images, the pack moved to the device once."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(rt.device)
    mean, std = _norm(cfg, rt)
    return probabilities(model, x, mean, std, batch, rt).numpy().astype(np.float64)


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
    rows = {"benign": (c["tn"], c["fn"], c["fp"], c["tn"] + c["fp"]),
            "malignant": (c["tp"], c["fp"], c["fn"], c["tp"] + c["fn"])}
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
    write_csv(tmp / f"pr_{s}.csv", [{"recall": r, "precision": q} for r, q in zip(pr["recall"], pr["precision"])],
              ["recall", "precision"])
    cal = calibration(y, p, bins)
    write_csv(tmp / f"calibration_{s}.csv",
              [{"mean_predicted": a, "fraction_malignant": b, "count": int(n)}
               for a, b, n in zip(cal["mean_predicted"], cal["fraction_malignant"], cal["count"]) if n],
              ["mean_predicted", "fraction_malignant", "count"])


def _split_outputs(tmp: Path, cell: str, s: str, ids: list[str], y: np.ndarray, p: np.ndarray, thr: float,
                   ep: dict[str, Any], where: str) -> dict[str, Any]:
    """Predictions and metrics of one split; for held-out splits also CIs, curves, confusion matrix, report."""
    write_csv(tmp / f"predictions_{s}.csv",
              [{"id": i, "label": LABELS[int(t)], "p_malignant": f"{q:.8f}", "predicted": LABELS[int(q >= thr)]}
               for i, t, q in zip(ids, y, p)], ["id", "label", "p_malignant", "predicted"])
    m = point_metrics(y, p, thr, where=where)
    if s != "val":
        m["ci95"] = bootstrap_ci(y, p, thr, ep["bootstrap"], ep["seed"])
        _curves(tmp, s, y, p, ep["calibration_bins"])
        _confusion_png(m["confusion"], f"{cell} {s} (thr {thr:.3f})", tmp / f"confusion_{s}.png")
        (tmp / f"classification_report_{s}.txt").write_text(classification_report(m))
    return m


def _gradcam_overlays(folder: Path, arch: str, model: torch.nn.Module, cfg: dict[str, Any], x: np.ndarray,
                      y: np.ndarray, p: np.ndarray, thr: float, ids: list[str], ep: dict[str, Any],
                      rt: Runtime) -> None:
    """GradCAM on a seeded choice of real test images per outcome (TP, FN, FP, TN), for their true label,
    computed on the runtime's device in float32."""
    from PIL import Image

    from melanoma.evaluation import gradcam

    chosen = gradcam.pick(y, (p >= thr).astype(int), ep["gradcam_per_group"], ep["seed"])
    folder.mkdir()
    rows = []
    idx = [i for g in chosen.values() for i in g]
    if idx:
        mean, std = _norm(cfg, rt)
        xt = standardise(torch.from_numpy(x[idx]).permute(0, 3, 1, 2).to(rt.device), mean, std)
        heat = iter(gradcam.cams(arch, model, xt, [int(y[i]) for i in idx]))
        for group, members in chosen.items():
            for i in members:
                name = f"{group}_{ids[i]}.png"
                Image.fromarray(gradcam.overlay(x[i], next(heat))).save(folder / name)
                rows.append({"file": name, "group": group, "id": ids[i], "label": LABELS[int(y[i])],
                             "p_malignant": f"{p[i]:.6f}"})
    write_csv(folder / "index.csv", rows, ["file", "group", "id", "label", "p_malignant"])


def evaluate_cell(arch: str, dataset: str, params: dict[str, Any], model_dir: Path, data_dir: Path,
                  out: Path, rt: Runtime = Runtime()) -> dict[str, Any]:
    """Evaluate one trained cell on val (threshold), test and external test; write everything to `out`.
    Inference and GradCAM run on `rt`'s device (under its autocast, if any); metrics on the host.

    Outputs: predictions_<split>.csv, metrics.json (point metrics, bootstrap 95 % CIs), ROC/PR/calibration CSVs,
    confusion PNGs, classification reports, gradcam/. Raises DatasetError (no trained model), MetricError.
    """
    ep = params["evaluate"]
    if not (model_dir / "model_config.json").is_file():
        raise DatasetError(f"no trained model in {model_dir}; run `dvc repro train_classifier@{arch}-{dataset}`")
    model, cfg = load_classifier(model_dir)
    model = rt.prepare(model)
    batch = params["classifiers"]["train"]["eval_batch_size"]
    splits = {"val": load_split(data_dir, "val")}
    for s in EVAL_SPLITS:
        if (data_dir / f"{s}.npy").is_file():
            splits[s] = load_split(data_dir, s)
    probs = {s: _predict(model, cfg, x, batch, rt) for s, (x, _) in splits.items()}
    thr = choose_threshold(splits["val"][1], probs["val"], ep["threshold"], ep["target_sensitivity"])
    built = cfg["model"] + (" " + json.dumps(cfg["kwargs"], separators=(",", ":")) if cfg["kwargs"] else "")
    result: dict[str, Any] = {"arch": arch, "dataset": dataset, "model": built, "parameters": cfg["parameters"],
                              "threshold_rule": ep["threshold"] + (f" {ep['target_sensitivity']}"
                                                                  if ep["threshold"] == "sensitivity" else ""),
                              "threshold": thr, "bootstrap": {"resamples": ep["bootstrap"], "seed": ep["seed"],
                                                              "level": 0.95, "stratified": True}}
    with atomic_dir(out) as tmp:
        for s, (_, y) in splits.items():
            result[s] = _split_outputs(tmp, f"{arch}_{dataset}", s, _ids(data_dir, s), y, probs[s], thr, ep,
                                       where=f"{s} ({data_dir})")
        x, y = splits["test"]
        _gradcam_overlays(tmp / "gradcam", arch, model, cfg, x, y, probs["test"], thr, _ids(data_dir, "test"), ep,
                          rt)
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result

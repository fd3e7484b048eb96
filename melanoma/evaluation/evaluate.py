"""The `evaluate` stage for one grid cell: every seed's predictions on val and the real test split(s), metrics,
the cell's mean and spread over seeds, plots and GradCAM of the packaged seed.

Each seed's decision threshold is chosen on **val** (Youden's J, or a target sensitivity) and applied unchanged
to test and external test. Per held-out split the cell reports each metric's mean and sd over seeds and, for
AUROC, sensitivity, specificity and balanced accuracy, a 95 % CI from the seed x image bootstrap
(melanoma.evaluation.stats). The *packaged* seed is the one with the best val AUROC (never test): `export`
packages it, and its curves (ROC, PR, calibration CSVs that dvc.yaml's `plots:` render), confusion matrices,
classification reports and GradCAM overlays sit at the top of the cell's folder. Every seed is scored with the
weights it stores: float32 for the packaged seed, bfloat16 (upcast on loading) for the others.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from melanoma.classifiers.inference import load_classifier, packaged_seed, probabilities, read_config, standardise
from melanoma.data.datasets import DatasetError
from melanoma.engine import Runtime
from melanoma.evaluation.scoring import eval_splits, score_seeds, split_index
from melanoma.io import atomic_dir, write_csv
from melanoma.params import LABELS


def _norm(cfg: dict[str, Any], rt: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """The cell's normalisation mean and std as (1, 3, 1, 1) float32 tensors on the runtime's device."""
    norm = cfg["normalisation"]
    return (
        torch.tensor(norm["mean"], device=rt.device).view(1, 3, 1, 1),
        torch.tensor(norm["std"], device=rt.device).view(1, 3, 1, 1),
    )


def _predict(model: torch.nn.Module, cfg: dict[str, Any], images: np.ndarray, batch: int, rt: Runtime) -> np.ndarray:
    """P(malignant) float64 (N,) for uint8 (N, H, W, 3) images, the pack moved to the device once."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(rt.device)
    mean, std = _norm(cfg, rt)
    return probabilities(model, x, mean, std, batch, rt).numpy().astype(np.float64)


OUTCOME = {"true_positive": "TP", "false_negative": "FN", "false_positive": "FP", "true_negative": "TN"}


def _gradcam_overlays(
    folder: Path,
    arch: str,
    model: torch.nn.Module,
    cfg: dict[str, Any],
    x: np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    thr: float,
    ids: list[str],
    ep: dict[str, Any],
    rt: Runtime,
) -> None:
    """GradCAM on a seeded choice of real test images per outcome (TP, FN, FP, TN), for their true label,
    computed on the runtime's device in float32. Each overlay carries its outcome and P(malignant); index.csv
    names the layer explained (gradcam.target: the deepest with a map of >= 4 x 4 cells)."""
    from PIL import Image

    from melanoma.evaluation import gradcam

    chosen = gradcam.pick(y, (p >= thr).astype(int), ep["gradcam_per_group"], ep["seed"])
    folder.mkdir()
    rows = []
    idx = [i for g in chosen.values() for i in g]
    if idx:
        mean, std = _norm(cfg, rt)
        xt = standardise(torch.from_numpy(x[idx]).permute(0, 3, 1, 2).to(rt.device), mean, std)
        at = gradcam.target(arch, model, x.shape[1])
        heat = iter(gradcam.cams(arch, model, xt, [int(y[i]) for i in idx], at))
        for group, members in chosen.items():
            for i in members:
                name = f"{group}_{ids[i]}.png"
                caption = f"{OUTCOME[group]}  P={p[i]:.2f}"
                Image.fromarray(gradcam.overlay(x[i], next(heat), caption=caption)).save(folder / name)
                rows.append(
                    {
                        "file": name,
                        "group": group,
                        "id": ids[i],
                        "label": LABELS[int(y[i])],
                        "p_malignant": f"{p[i]:.6f}",
                        "layer": at.describe(x.shape[1]),
                    }
                )
    write_csv(folder / "index.csv", rows, ["file", "group", "id", "label", "p_malignant", "layer"])


def evaluate_cell(
    arch: str, dataset: str, params: dict[str, Any], model_dir: Path, data_dir: Path, out: Path, rt: Runtime = Runtime()
) -> dict[str, Any]:
    """Evaluate every seed of one trained cell (model_dir/seed_<k>/) on val (thresholds), test and external
    test; write everything to `out`. Inference and GradCAM run on `rt`'s device; metrics on the host.

    Outputs: seed_<k>/predictions_<split>.csv, metrics.json (see score_seeds; `seed` names the packaged seed, the
    best val AUROC), the packaged seed's ROC/PR/calibration CSVs, confusion PNGs, classification reports and
    gradcam/. Raises DatasetError (a seed's model missing), MetricError.
    """
    ep, seeds = params["evaluate"], params["classifiers"]["seeds"]
    folders = {k: model_dir / f"seed_{k}" for k in seeds}
    missing = [k for k, f in folders.items() if not (f / "model_config.json").is_file()]
    if missing:
        raise DatasetError(
            f"no trained model in {folders[missing[0]]}; run `dvc repro train_classifier@{arch}-"
            f"{dataset}` (classifiers.seeds changed since it ran?)"
        )
    batch = params["classifiers"]["train"]["eval_batch_size"]
    splits = eval_splits(data_dir)
    cfg = {k: read_config(folders[k] / "model_config.json") for k in seeds}
    packaged = packaged_seed({k: cfg[k]["val_auroc"] for k in seeds}, seeds)  # the seed train kept in float32
    probs = {}
    for k in seeds:  # one model on the device at a time; the packaged one is kept for GradCAM
        model, cfg[k] = load_classifier(folders[k])
        model = rt.prepare(model)
        probs[k] = {s: _predict(model, cfg[k], x, batch, rt) for s, (x, _) in splits.items()}
        if k == packaged:
            kept = model
    c = cfg[packaged]
    built = c["model"] + (" " + json.dumps(c["kwargs"], separators=(",", ":")) if c["kwargs"] else "")
    result: dict[str, Any] = {
        "arch": arch,
        "dataset": dataset,
        "model": built,
        "parameters": c["parameters"],
        "training": {
            str(k): {
                f: cfg[k][f]
                for f in (
                    "steps",
                    "steps_run",
                    "batch_size",
                    "images_seen",
                    "epochs_equivalent",
                    "imbalance",
                    "val_auroc",
                    "best_step",
                )
            }
            for k in seeds
        },
    }
    ids, attributes = split_index(data_dir, list(splits), ep["subgroups"]["age_edges"])
    labels = {s: y for s, (_, y) in splits.items()}
    with atomic_dir(out) as tmp:
        result.update(score_seeds(tmp, f"{arch}_{dataset}", labels, ids, attributes, probs, packaged, ep))
        x, y = splits["test"]
        _gradcam_overlays(
            tmp / "gradcam", arch, kept, c, x, y, probs[packaged]["test"], result["threshold"], ids["test"], ep, rt
        )
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result

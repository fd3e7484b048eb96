"""A non-trivial baseline for the grid: hand-made colour and texture features + logistic regression.

A deep classifier that cannot beat this has learnt little beyond colour statistics, which is what a reviewer
checks first. It is trained on Original's train split (real images only, at the classifier input size), its
threshold chosen on val by the same rule as every cell, and it is scored on the same held-out splits.
scikit-learn's StandardScaler + LogisticRegression (L2, class_weight="balanced": both classes weigh the same,
as balanced sampling makes them for the networks). Deterministic: one "seed".
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from melanoma.data.datasets import load_split
from melanoma.evaluation.scoring import eval_splits, score_seeds, split_index
from melanoma.io import atomic_dir
from melanoma.paths import BASELINE

MODEL = "colour + texture features (47) + logistic regression (scikit-learn)"


def _hsv(x: np.ndarray) -> np.ndarray:
    """float (N, H, W, 3) RGB in [0, 1] -> HSV in [0, 1] (matplotlib's vectorised conversion)."""
    from matplotlib.colors import rgb_to_hsv

    return rgb_to_hsv(x)


def features(images: np.ndarray) -> np.ndarray:
    """float64 (N, 47) features of uint8 (N, H, W, 3) images (H, W >= 8).

    Colour: per RGB channel the mean, sd and 10/50/90th percentiles (15); per HSV channel mean and sd (6); a
    hue histogram (8 bins) and saturation and value histograms (4 bins each) as fractions (16). Texture on the
    grey image: mean and sd of the gradient magnitude (2), mean absolute difference between pixels 1, 2 and 4 px
    apart (3), and mean absolute difference to the left-right and top-bottom mirror image (asymmetry, 2).
    Plus the grey mean and sd, and the fraction of dark pixels (grey < 0.3) (3). Units: intensities in [0, 1].
    """
    x = images.astype(np.float64) / 255
    n = len(x)
    flat = x.reshape(n, -1, 3)
    cols = [flat.mean(1), flat.std(1), *np.percentile(flat, [10, 50, 90], axis=1)]
    hsv = _hsv(x).reshape(n, -1, 3)
    cols += [hsv.mean(1), hsv.std(1)]
    for ch, bins in ((0, 8), (1, 4), (2, 4)):
        idx = np.minimum((hsv[:, :, ch] * bins).astype(int), bins - 1)
        cols.append(np.stack([(idx == b).mean(1) for b in range(bins)], 1))
    grey = x @ np.array([0.299, 0.587, 0.114])
    gy, gx = np.gradient(grey, axis=(1, 2))
    mag = np.hypot(gx, gy).reshape(n, -1)
    cols.append(np.stack([mag.mean(1), mag.std(1)], 1))
    cols.append(
        np.stack(
            [
                (
                    np.abs(grey[:, :, d:] - grey[:, :, :-d]).mean((1, 2))
                    + np.abs(grey[:, d:, :] - grey[:, :-d, :]).mean((1, 2))
                )
                / 2
                for d in (1, 2, 4)
            ],
            1,
        )
    )
    cols.append(
        np.stack([np.abs(grey - grey[:, :, ::-1]).mean((1, 2)), np.abs(grey - grey[:, ::-1, :]).mean((1, 2))], 1)
    )
    g = grey.reshape(n, -1)
    cols.append(np.stack([g.mean(1), g.std(1), (g < 0.3).mean(1)], 1))
    return np.concatenate(cols, axis=1)


def fit_baseline(images: np.ndarray, labels: np.ndarray) -> Any:
    """The fitted scikit-learn pipeline (StandardScaler, LogisticRegression) on `features(images)`."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, class_weight="balanced", max_iter=5000))
    return model.fit(features(images), labels)


def run_baseline(params: dict[str, Any], data_dir: Path, out: Path) -> dict[str, Any]:
    """Train on `data_dir`'s train split, choose the threshold on val, score test (and external test); write
    the same files as an evaluated cell (seed_0/predictions_<split>.csv, metrics.json, curves, confusion PNGs,
    reports) to `out`. Raises DatasetError (unreadable packs), MetricError (a split with one class)."""
    x_train, y_train = load_split(data_dir, "train")
    model = fit_baseline(x_train, y_train)
    splits = eval_splits(data_dir)
    probs = {0: {s: model.predict_proba(features(x))[:, 1].astype(np.float64) for s, (x, _) in splits.items()}}
    ep = params["evaluate"]
    result: dict[str, Any] = {
        "arch": BASELINE,
        "dataset": data_dir.name,
        "model": MODEL,
        "parameters": int(model[-1].coef_.size + model[-1].intercept_.size),
    }
    with atomic_dir(out) as tmp:
        result.update(
            score_seeds(
                tmp,
                f"{BASELINE}_{data_dir.name}",
                {s: y for s, (_, y) in splits.items()},
                *split_index(data_dir, list(splits), ep["subgroups"]["age_edges"]),
                probs,
                0,
                ep,
            )
        )
        (tmp / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    return result

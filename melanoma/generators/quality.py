"""Measured generator quality: is a generator's output distinguishable from, copied from, or narrower than
the real training images of its class?

- C2ST: AUROC of a small CNN trained to tell synthetic from real on one half of each, scored on the other half
  (0.5: indistinguishable, 1.0: trivially told apart). Needs nothing from outside.
- Memorisation: for each synthetic image, distance to its nearest real training image over the distance to the
  second nearest, in the feature space of 16x16 RGB pixels scaled to [0, 1]; a ratio below the threshold means
  the image sits much closer to one training image than to any other (a likely copy).
- Diversity: mean pairwise distance in the same space, synthetic vs real.
- FID/KID: Inception-v3 pool features (torch-fidelity's 2015-12-05 FID network) when its weights file is
  present locally; otherwise null with the reason, never an invented number.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import linalg
from sklearn.metrics import roc_auc_score
from torch import nn

from melanoma.data.images import labelled
from melanoma.engine import Runtime, TrainingPlan, fit

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"


def pixel_features(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float (N, 768): 16x16 RGB, box-downsampled, in [0, 1]."""
    t = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return nn.functional.adaptive_avg_pool2d(t, 16).flatten(1).numpy().astype(np.float64)


def _pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d2 = (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2, 0))


def nearest_ratio(fake: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d1/d2 per synthetic image, index of its nearest real image)."""
    if len(real) < 2:
        raise ValueError("memorisation needs at least two real images")
    d = _pairwise(fake, real)
    order = np.argsort(d, axis=1)[:, :2]
    d1 = np.take_along_axis(d, order[:, :1], 1)[:, 0]
    d2 = np.take_along_axis(d, order[:, 1:2], 1)[:, 0]
    return d1 / np.maximum(d2, 1e-12), order[:, 0]


def mean_pairwise_distance(x: np.ndarray) -> float:
    d = _pairwise(x, x)
    n = len(x)
    return float(d.sum() / (n * (n - 1))) if n > 1 else 0.0


class _C2STNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


class C2STTask:
    """The critic's step as an engine Task: epochs of shuffled mini-batches (32) of the training halves, BCE on
    real (0) vs synthetic (1). The shuffles come from a generator on the runtime's device seeded by `seed`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, train_idx: np.ndarray, seed: int, rt: Runtime) -> None:
        self.rt, self.name, self.advice = rt, "c2st", "the C2ST critic diverged; change synthesize.seed"
        torch.manual_seed(seed)
        self.net = rt.prepare(_C2STNet())
        self.opt = torch.optim.Adam(self.net.parameters(), 1e-3)
        self.x, self.y = x.to(rt.device), y.to(rt.device)
        self.train_idx = torch.from_numpy(train_idx).to(rt.device)
        self.g = rt.generator(seed)
        self.per_epoch = -(-len(train_idx) // C2ST_BATCH)

    def step(self, step: int) -> dict[str, torch.Tensor]:
        i = step % self.per_epoch
        if i == 0:
            perm = torch.randperm(len(self.train_idx), generator=self.g, device=self.rt.device)
            self.order = self.train_idx[perm].split(C2ST_BATCH)
        b = self.order[i]
        with self.rt.autocast():
            logits = self.net(self.x[b])
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), self.y[b])
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"net": self.net.state_dict(), "opt": self.opt.state_dict(), "g": self.g.get_state()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.net.load_state_dict(s["net"])
        self.opt.load_state_dict(s["opt"])
        self.g.set_state(s["g"])


C2ST_BATCH = 32


def c2st_auc(
    real: np.ndarray, fake: np.ndarray, seed: int, epochs: int = 20, rt: Runtime = Runtime()
) -> dict[str, Any]:
    """Classifier two-sample test (Lopez-Paz & Oquab, 2017) on equal numbers n of real and synthetic uint8
    (N, H, W, 3) images: a small CNN trains on half of each for `epochs` epochs and is scored by AUROC on the
    other halves. Returns {"c2st_auc": float in [0, 1], "c2st_n_per_class": n}; ValueError if n < 8."""
    n = min(len(real), len(fake))
    if n < 8:
        raise ValueError(f"C2ST needs at least 8 images of each kind, got {len(real)} real and {len(fake)} synthetic")
    rng = np.random.default_rng(seed)
    r, f = real[rng.permutation(len(real))[:n]], fake[rng.permutation(len(fake))[:n]]
    x = torch.from_numpy(np.concatenate([r, f])).permute(0, 3, 1, 2).float() / 127.5 - 1
    y = torch.cat([torch.zeros(n), torch.ones(n)])
    half = n // 2
    train_idx = np.concatenate([np.arange(half), n + np.arange(half)])
    test_idx = np.concatenate([np.arange(half, n), n + np.arange(half, n)])
    task = C2STTask(x, y, train_idx, seed, rt)
    fit(task, TrainingPlan(steps=epochs * task.per_epoch, seed=seed, period=task.per_epoch), rt, log=lambda _: None)
    with torch.no_grad(), rt.autocast():
        scores = task.net.eval()(task.x[torch.from_numpy(test_idx).to(rt.device)]).float().cpu().numpy()
    return {"c2st_auc": float(roc_auc_score(y[test_idx].numpy(), scores)), "c2st_n_per_class": n}


NOTES = {
    "c2st_auc": "AUROC of a 3-layer CNN trained 20 epochs on half of the real and half of the synthetic images, "
    "scored on the other halves; 0.5 = indistinguishable, 1.0 = trivially told apart",
    "memorised_fraction": "share of synthetic images whose nearest real train image is closer than "
    "memorisation_threshold x the second nearest, in 16x16 RGB pixel space ([0, 1], L2)",
    "diversity_ratio": "mean pairwise distance of synthetic images / that of real ones, same space",
}


def inception_weights(search: Path | None = None) -> tuple[Path | None, str]:
    """(path, "") of verified local FID Inception weights, or (None, why not)."""
    folder = search or Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / INCEPTION_FILE
    if not path.is_file():
        return None, (
            f"Inception weights {INCEPTION_FILE} not found in {folder} (torch-fidelity would download "
            "them; the pipeline does not use the network): copy them there to get FID/KID"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(INCEPTION_SHA256_PREFIX):
        return (
            None,
            f"{path} does not have the published checksum (sha256 {digest[:8]}... != {INCEPTION_SHA256_PREFIX}...)",
        )
    try:
        torch.load(path, map_location="cpu", weights_only=True)  # refuse a file that is more than tensors
    except Exception as e:  # any failure to read it safely means: do not trust it
        return None, f"{path} is not a plain weights file ({type(e).__name__})"
    return path, ""


def inception_features(images: np.ndarray, weights: Path, rt: Runtime = Runtime()) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float64 (N, 2048) Inception-v3 pool features (torch-fidelity), on `rt`'s device
    in float32 (FID is sensitive to feature precision: no autocast)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    # torch-fidelity reads the file with weights_only=False; inception_weights() has already proved it loads
    # with weights_only=True and carries the published checksum, so nothing but tensors is unpickled
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    net = net.to(rt.device)
    feats = []
    with torch.no_grad():
        for b in torch.from_numpy(images).permute(0, 3, 1, 2).split(32):
            feats.append(net(b.contiguous().to(rt.device))[0].double())
    return torch.cat(feats).cpu().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean.real))


def kernel_inception_distance(
    a: np.ndarray, b: np.ndarray, subsets: int = 10, subset_size: int = 100, seed: int = 0
) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel, averaged over random subsets (Binkowski et al., 2018)."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    d = a.shape[1]
    vals = []
    for _ in range(subsets):
        x, y = a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        vals.append(
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
        )
    return float(np.mean(vals))


def quality(
    real: np.ndarray,
    fake: np.ndarray,
    seed: int,
    memorisation_ratio: float,
    weights_dir: Path | None = None,
    rt: Runtime = Runtime(),
) -> tuple[dict[str, Any], dict[str, str], list[tuple[int, int]]]:
    """Numeric metrics (for `dvc metrics`), notes in words, and the (synthetic, real) pairs most like copies.
    The C2ST critic and the Inception features run on `rt`'s device; the pixel-space metrics on the host."""
    out: dict[str, Any] = {"n_real": len(real), "n_synthetic": len(fake)}
    notes = dict(NOTES)
    out.update(c2st_auc(real, fake, seed, rt=rt))
    fr, ff = pixel_features(real), pixel_features(fake)
    ratio, nearest = nearest_ratio(ff, fr)
    out["memorisation_threshold"] = memorisation_ratio
    out["memorised_fraction"] = float((ratio < memorisation_ratio).mean())
    out["nn_ratio_min"] = float(ratio.min())
    out["nn_ratio_median"] = float(np.median(ratio))
    out["diversity_synthetic"] = mean_pairwise_distance(ff)
    out["diversity_real"] = mean_pairwise_distance(fr)
    out["diversity_ratio"] = out["diversity_synthetic"] / max(out["diversity_real"], 1e-12)
    weights, why = inception_weights(weights_dir)
    if weights is None:
        out.update({"fid": None, "kid": None})
        notes["fid_unavailable"] = why
    else:
        ia, ib = inception_features(real, weights, rt), inception_features(fake, weights, rt)
        out.update({"fid": frechet_distance(ia, ib), "kid": kernel_inception_distance(ia, ib, seed=seed)})
        notes["fid"] = (
            f"Inception-v3 (torch-fidelity) on {len(real)} real vs {len(fake)} synthetic images upsampled "
            "from the generator resolution: compare only within this study"
        )
    worst = np.argsort(ratio)[:8]
    return out, notes, [(int(i), int(nearest[i])) for i in worst]


def pairs_sheet(fake: np.ndarray, real: np.ndarray, pairs: list[tuple[int, int]], scale: int = 2) -> Image.Image:
    """Side by side, labelled: each synthetic image (left) next to its nearest real training image (right)."""
    h, w = fake.shape[1:3]
    canvas = np.full((len(pairs) * (h + 2), 2 * w + 2, 3), 255, np.uint8)
    for k, (i, j) in enumerate(pairs):
        canvas[k * (h + 2) : k * (h + 2) + h, :w] = fake[i]
        canvas[k * (h + 2) : k * (h + 2) + h, w + 2 :] = real[j]
    im = Image.fromarray(canvas)
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    return labelled(im, cols=["synthetic", "nearest real"])

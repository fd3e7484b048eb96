"""GradCAM (Selvaraju et al., 2017) for every classifier family, on real test images with their *true* labels.

Computed here in a few lines of torch rather than through pytorch-grad-cam: the library pulled scikit-learn,
SciPy and OpenCV into every `evaluate` process (about 3 s of imports), for a channel-weighted sum. tests/test_gradcam.py checks these maps against pytorch-grad-cam's GradCAM on every family.

The classifier registry (`melanoma.classifiers.FAMILIES`) names each family's layer whose activations are
explained and, for token-based models, how to fold tokens back into a (B, C, H, W) map: ViT/BioViT drop the
class token and reshape the patch grid; timm's Swin blocks already return (B, H, W, C). The map is as coarse as that layer: at the demo's 32 px that is 4 x 4 for the
ViTs, 1 x 1 to 2 x 2 for Swin, MedViT and the CNNs' last stage, so demo overlays are blocky by construction.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from melanoma.classifiers import family


def _minmax(cam: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] on its own (an all-zero map stays zero)."""
    flat = cam.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    return (flat / (1e-7 + flat.max(dim=1, keepdim=True).values)).view_as(cam)


def cams(arch: str, model: nn.Module, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    """(N, H, W) heatmaps in [0, 1] for normalised inputs x (N, 3, H, W), each for the given class index.

    The layer's activations A, weighted per channel by the spatial mean of d(logit of the class)/dA, summed over
    channels, ReLU, scaled to [0, 1] per image, upsampled bilinearly to the input size and scaled again.
    """
    layer, reshape = family(arch).gradcam(model)
    fold = reshape or (lambda t: t)
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: seen.append(output))
    model.eval()
    try:
        with torch.enable_grad():
            logits = model(x.detach().requires_grad_(True))
            score = logits[torch.arange(len(classes)), torch.as_tensor(classes)].sum()
            (grad,) = torch.autograd.grad(score, seen[-1])
    finally:
        handle.remove()
    acts, grads = fold(seen[-1].detach()).float(), fold(grad).float()
    cam = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1, keepdim=True))
    cam = F.interpolate(_minmax(cam), size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
    return _minmax(cam)[:, 0].cpu().numpy().astype(np.float32)


def _jet(v: np.ndarray) -> np.ndarray:
    """The classic jet colour map (blue -> cyan -> yellow -> red) for values in [0, 1], as RGB floats."""
    return np.clip(1.5 - np.abs(4 * v[..., None] - np.array([3.0, 2.0, 1.0])), 0, 1)


def overlay(image: np.ndarray, heat: np.ndarray, scale: int = 4) -> np.ndarray:
    """The uint8 image and its heatmap blended (jet colour map), enlarged `scale` times for viewing."""
    heat_rgb = _jet(np.uint8(255 * heat) / 255.0)
    blended = 0.4 * heat_rgb + 0.6 * image.astype(np.float32) / 255
    blended = np.uint8(255 * blended / blended.max())
    return np.kron(blended, np.ones((scale, scale, 1), np.uint8)) if scale > 1 else blended


def pick(labels: np.ndarray, pred: np.ndarray, per_group: int, seed: int) -> dict[str, list[int]]:
    """A fixed, seeded choice of test indices per outcome: true/false positives and negatives."""
    rng = np.random.default_rng(seed)
    groups = {"true_positive": (labels == 1) & (pred == 1), "false_negative": (labels == 1) & (pred == 0),
              "false_positive": (labels == 0) & (pred == 1), "true_negative": (labels == 0) & (pred == 0)}
    out = {}
    for name, mask in groups.items():
        idx = np.flatnonzero(mask)
        out[name] = sorted(rng.choice(idx, min(per_group, len(idx)), replace=False).tolist()) if len(idx) else []
    return out

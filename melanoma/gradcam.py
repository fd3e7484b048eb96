"""GradCAM for every classifier family (pytorch-grad-cam), on real test images with their *true* labels.

Each family names the layer whose activations are explained and, for token-based models, how to fold tokens
back into a (B, C, H, W) map: ViT/BioViT drop the class token and reshape the patch grid; timm's Swin blocks
already return (B, H, W, C). The map is as coarse as that layer: at the demo's 32 px that is 4 x 4 for the
ViTs, 1 x 1 to 2 x 2 for Swin, MedViT and the CNNs' last stage, so demo overlays are blocky by construction.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn


def _vit_tokens(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    prefix = getattr(model, "num_prefix_tokens", 1)
    gh, gw = model.patch_embed.grid_size

    def fold(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:, :].reshape(t.shape[0], gh, gw, t.shape[-1]).permute(0, 3, 1, 2)

    return fold


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def target(arch: str, model: nn.Module) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor] | None]:
    """The layer GradCAM explains for this family, and the reshape that makes its output (B, C, H, W)."""
    if arch == "ResNet":
        return model.layer4[-1], None
    if arch == "DenseNet":
        return model.features.norm5, None
    if arch in ("ViT", "BioViT"):
        return model.blocks[-1].norm1, _vit_tokens(model)
    if arch == "Swin":
        return model.layers[-1].blocks[-1].norm1, _nhwc
    if arch == "MedViT":
        return model.gradcam_layer, None
    raise ValueError(f"no GradCAM target for arch {arch!r}")


def cams(arch: str, model: nn.Module, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    """(N, H, W) heatmaps in [0, 1] for normalised inputs x (N, 3, H, W), each for the given class index."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer, reshape = target(arch, model)
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])


def overlay(image: np.ndarray, heat: np.ndarray, scale: int = 4) -> np.ndarray:
    """The uint8 image and its heatmap blended (jet colour map), enlarged `scale` times for viewing."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    blended = show_cam_on_image(image.astype(np.float32) / 255, heat, use_rgb=True, image_weight=0.6)
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

"""GradCAM (Selvaraju et al., 2017) for every classifier family, on real test images with their *true* labels.

Computed here in a few lines of torch rather than through pytorch-grad-cam: the library pulled scikit-learn,
SciPy and OpenCV into every `evaluate` process (about 3 s of imports), for a channel-weighted sum.
tests/test_gradcam.py checks these maps against pytorch-grad-cam's GradCAM on every family.

The classifier registry (`melanoma.classifiers.registry.FAMILIES`) names, per family, the layers whose
activations may be explained (deepest first) and, for token-based models, how to fold tokens back into a
(B, C, H, W) map: ViT/BioViT
drop the class token and reshape the patch grid; timm's Swin blocks already return (B, H, W, C). A map is as coarse
as its layer: the last stage of the CNNs, Swin and MedViT is input/32, i.e. 1 x 1 at the demo's 32 px (a uniform
wash that explains nothing). `target` therefore explains the deepest layer whose map has at least MIN_CELLS x
MIN_CELLS cells at the input size (at 32 px: the stride-8 stage; at 224 px: the last one, 7 x 7) and names it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from melanoma.classifiers.registry import Fold, family
from melanoma.data.images import font

MIN_CELLS = 4  # a map coarser than 4 x 4 cannot say where in the lesion the evidence is


@dataclass(frozen=True)
class Target:
    """The layer GradCAM explains: its dotted module name, the module, the fold of its output to (B, C, H, W),
    its map size (h, w) at the input size, and the family's last layer with its map size (to say why a
    shallower one was chosen)."""

    name: str
    layer: nn.Module
    fold: Fold | None
    cells: tuple[int, int]
    last: str
    last_cells: tuple[int, int]

    def describe(self, size: int) -> str:
        """One line for a report or a log, e.g. 'layer2 (4 x 4 cells at 32 px; the last layer, layer4, is 1 x 1)'."""
        text = f"{self.name} ({self.cells[0]} x {self.cells[1]} cells at {size} px"
        if self.name != self.last:
            text += f"; the last layer, {self.last}, is {self.last_cells[0]} x {self.last_cells[1]}"
        return text + ")"


def target(arch: str, model: nn.Module, size: int) -> Target:
    """The deepest of the family's GradCAM layers whose map has >= MIN_CELLS cells each way for `size` px
    inputs (one forward pass of a zero image, in eval mode, on the model's device); the finest one when none
    does. Raises ParamsError for an unknown arch."""
    candidates = family(arch).gradcam(model)
    seen: dict[str, tuple[int, int]] = {}

    def hook(name: str, fold: Fold | None):
        return lambda module, inputs, output: seen.__setitem__(name, tuple((fold or (lambda t: t))(output).shape[-2:]))

    handles = [layer.register_forward_hook(hook(n, f)) for n, layer, f in candidates]
    p = next(model.parameters())
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
    fine_enough = [c for c in candidates if min(seen[c[0]]) >= MIN_CELLS]
    name, layer, fold = fine_enough[0] if fine_enough else candidates[-1]
    return Target(name, layer, fold, seen[name], candidates[0][0], seen[candidates[0][0]])


def _minmax(cam: torch.Tensor) -> torch.Tensor:
    """Each map scaled to [0, 1] on its own (an all-zero map stays zero)."""
    flat = cam.flatten(1)
    flat = flat - flat.min(dim=1, keepdim=True).values
    return (flat / (1e-7 + flat.max(dim=1, keepdim=True).values)).view_as(cam)


def cams(arch: str, model: nn.Module, x: torch.Tensor, classes: list[int], at: Target | None = None) -> np.ndarray:
    """(N, H, W) float32 heatmaps in [0, 1] for normalised float inputs x (N, 3, H, W), each for the given
    class index, explaining layer `at` (default: `target(arch, model, H)`).

    The layer's activations A, weighted per channel by the spatial mean of d(logit of the class)/dA, summed over
    channels, ReLU, scaled to [0, 1] per image, upsampled bilinearly to the input size and scaled again.
    """
    at = at or target(arch, model, x.shape[-1])
    layer, fold = at.layer, at.fold or (lambda t: t)
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


def blend(image: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) image and float (H, W) heatmap in [0, 1] -> uint8 (H, W, 3): 40 % jet colour map,
    60 % image, rescaled to the full range (pytorch-grad-cam's show_cam_on_image with image_weight 0.6)."""
    heat_rgb = _jet(np.uint8(255 * heat) / 255.0)
    blended = 0.4 * heat_rgb + 0.6 * image.astype(np.float32) / 255
    return np.uint8(255 * blended / blended.max())


VIEW_PX = 256  # overlays are enlarged (nearest) to about this side: a 32 px demo image x8, a 224 px one x1


def view_scale(size: int) -> int:
    """The whole-number enlargement that shows a `size` px image at about VIEW_PX (1 at 224 px and above): the
    study's overlays stay their input size (a 4x overlay of 224 px was 896 px and 1 MB as PNG)."""
    return max(1, VIEW_PX // size)


def overlay(image: np.ndarray, heat: np.ndarray, scale: int | None = None, caption: str = "") -> np.ndarray:
    """The blend enlarged `scale` times (nearest; None: view_scale of its height), with a jet colour bar on the
    right (0 at the bottom, 1 at the top: the map's share of its own maximum) and, when given, a caption strip on
    top (outcome and P). An all-zero map (no positive evidence for the class at that layer: GradCAM's ReLU removed
    it all) says "empty map" in the caption, since its overlay is the plain colour of 0. Returns uint8 (caption
    strip + H * scale, W * scale + bar, 3)."""
    from PIL import Image, ImageDraw

    scale = view_scale(image.shape[0]) if scale is None else scale
    big = np.kron(blend(image, heat), np.ones((scale, scale, 1), np.uint8))
    h, w = big.shape[:2]
    bar = np.full((h, 34, 3), 255, np.uint8)
    ramp = np.uint8(255 * _jet(np.linspace(1, 0, h - 12)))  # top row = 1
    bar[6 : h - 6, 4:12] = ramp[:, None, :]
    if caption and not heat.max() > 0:
        caption += "  empty map"
    strip = 14 if caption else 0
    canvas = Image.new("RGB", (w + bar.shape[1], h + strip), "white")
    canvas.paste(Image.fromarray(big), (0, strip))
    canvas.paste(Image.fromarray(bar), (w, strip))
    draw, f = ImageDraw.Draw(canvas), font()
    draw.text((w + 14, strip + 2), "1", fill="black", font=f)
    draw.text((w + 14, strip + h - 14), "0", fill="black", font=f)
    if caption:
        draw.text((2, 1), caption, fill="black", font=f)
    return np.asarray(canvas)


def pick(labels: np.ndarray, pred: np.ndarray, per_group: int, seed: int) -> dict[str, list[int]]:
    """A fixed, seeded choice of test indices per outcome: true/false positives and negatives."""
    rng = np.random.default_rng(seed)
    groups = {
        "true_positive": (labels == 1) & (pred == 1),
        "false_negative": (labels == 1) & (pred == 0),
        "false_positive": (labels == 0) & (pred == 1),
        "true_negative": (labels == 0) & (pred == 0),
    }
    out = {}
    for name, mask in groups.items():
        idx = np.flatnonzero(mask)
        out[name] = sorted(rng.choice(idx, min(per_group, len(idx)), replace=False).tolist()) if len(idx) else []
    return out

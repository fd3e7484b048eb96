"""Super-resolving synthetic images: the `train_upscaler` and `upscale` stages.

`upscale.method` picks how the *_Upscaled datasets get their larger synthetic images:
  bicubic / lanczos  plain resizing, the baseline;
  sr                 an ESPCN-style network (Shi et al., 2016) that adds a learned residual to the bicubic
                     upscale, trained here on real *train* images (their downscaled copies as input) and scored
                     by PSNR/SSIM against bicubic on real *val* images;
  hub                a pretrained diffusers super-resolution pipeline, only if its weights are available.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from melanoma.data.images import grid, labelled, md5_bytes
from melanoma.engine import Runtime, TrainingPlan, discard, fit, runtime
from melanoma.errors import MelanomaError, first_line
from melanoma.generators.data import load_train_images
from melanoma.imports import code_files
from melanoma.io import atomic_dir, staged_files, write_csv
from melanoma.params import LABELS


class UpscaleError(MelanomaError):
    """The upscaler cannot run as configured; the message says what to change."""


class ESPCN(nn.Module):
    """Feature extraction at low resolution, sub-pixel convolution to `factor` x, added to the bicubic upscale."""

    def __init__(self, factor: int, channels: int = 32) -> None:
        super().__init__()
        self.factor = factor
        self.body = nn.Sequential(
            nn.Conv2d(3, channels * 2, 5, padding=2),
            nn.Tanh(),
            nn.Conv2d(channels * 2, channels, 3, padding=1),
            nn.Tanh(),
            nn.Conv2d(channels, 3 * factor**2, 3, padding=1),
            nn.PixelShuffle(factor),
        )

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """(N, 3, h, w) in [0, 1] -> (N, 3, h*f, w*f) in [0, 1]."""
        return (bicubic(lr, self.factor) + self.body(lr)).clamp(0, 1)


def bicubic(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bicubic", align_corners=False).clamp(0, 1)


def downscale(hr: torch.Tensor, factor: int) -> torch.Tensor:
    """The degradation the SR model learns to undo: antialiased bicubic downscaling."""
    return F.interpolate(hr, scale_factor=1 / factor, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return float((10 * torch.log10(1 / mse)).mean())


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (Wang et al., 2004: 11x11 Gaussian window, sigma 1.5, per channel) of images in [0, 1]."""
    k = torch.exp(-((torch.arange(11, device=a.device) - 5.0) ** 2) / (2 * 1.5**2))
    k = (k / k.sum())[:, None] * (k / k.sum())[None, :]
    w = k.expand(3, 1, 11, 11).to(a.dtype)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, groups=3)

    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def _as_unit(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def _as_uint8(x: torch.Tensor) -> np.ndarray:
    return (x.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _real(splits: Path, raw: Path, split: str, size: int) -> np.ndarray:
    """All real images of one split (both classes) at size x size; val is read only for scoring."""
    parts = [load_train_images(splits, raw, label, size, split=split)[0] for label in LABELS]
    return np.concatenate(parts)


class SRTask:
    """The SR model's step as an engine Task: a random batch of real train crops (with random flips), its
    antialiased bicubic downscale as input, L1 loss against the original. Random draws come from a generator on
    the runtime's device seeded by upscale.seed."""

    def __init__(self, cfg: dict[str, Any], factor: int, train_hr: torch.Tensor, seed: int, rt: Runtime) -> None:
        self.cfg, self.factor, self.rt, self.name = cfg, factor, rt, "upscaler"
        self.advice = "lower upscale.sr.lr"
        torch.manual_seed(seed)
        self.model = rt.prepare(ESPCN(factor, cfg["channels"]))
        self.opt = torch.optim.Adam(self.model.parameters(), cfg["lr"])
        self.data = train_hr.to(rt.device)
        self.g = rt.generator(seed)

    def step(self, step: int) -> dict[str, torch.Tensor]:
        n, dev = self.cfg["batch_size"], self.rt.device
        hr = self.data[torch.randint(0, len(self.data), (n,), generator=self.g, device=dev)]
        hr = torch.where(torch.rand(n, 1, 1, 1, generator=self.g, device=dev) < 0.5, hr.flip(3), hr)
        with self.rt.autocast():
            sr = self.model(downscale(hr, self.factor))
        loss = F.l1_loss(sr.float(), hr)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return {"loss": loss.detach()}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(), "g": self.g.get_state()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["opt"])
        self.g.set_state(s["g"])


SR_PERIOD = 50  # steps between reads of the loss (NaN check, dvclive)
CODE = code_files(__name__)


def train_upscaler(
    params: dict[str, Any],
    splits: Path,
    raw: Path,
    out: Path,
    metrics_path: Path,
    ckpt_dir: Path,
    rt: Runtime | None = None,
    log=print,
) -> dict[str, Any]:
    """Train the SR model on real train images, score it against bicubic on real val images.

    Writes `out` (model.safetensors, config.json) atomically and `metrics_path` (PSNR/SSIM of SR and bicubic),
    then deletes the checkpoints. Training and scoring run on `rt`'s device (default: `runtime()`), scoring in
    float32. Raises Diverged (NaN loss), CheckpointError.
    """
    rt = rt or runtime()
    u, size = params["upscale"], params["generators"]["image_size"]
    cfg, factor = u["sr"], u["factor"]
    hr_size = size * factor
    train_hr = _as_unit(_real(splits, raw, "train", hr_size))
    task = SRTask(cfg, factor, train_hr, u["seed"], rt)
    config = {
        "upscale": {k: v for k, v in u.items() if k != "method"},
        "image_size": size,
        "data": hashlib.sha256(train_hr.numpy().tobytes()).hexdigest()[:16],
    }
    fit(
        task,
        TrainingPlan(
            steps=cfg["steps"],
            seed=u["seed"],
            period=SR_PERIOD,
            config=config,
            code=CODE,
            folder=ckpt_dir,
            checkpoint_minutes=params["checkpoint_minutes"],
            keep=1,
        ),
        rt,
        log=log,
    )
    model = task.model.eval()
    val_hr = _as_unit(_real(splits, raw, "val", hr_size)).to(rt.device)
    with torch.no_grad():
        lr = downscale(val_hr, factor)
        sr, bic = model(lr), bicubic(lr, factor)
    m = {
        "factor": factor,
        "from_px": size,
        "to_px": hr_size,
        "n_val": len(val_hr),
        "psnr_sr": psnr(sr, val_hr),
        "psnr_bicubic": psnr(bic, val_hr),
        "ssim_sr": ssim(sr, val_hr),
        "ssim_bicubic": ssim(bic, val_hr),
    }
    m["beats_bicubic"] = bool(m["psnr_sr"] > m["psnr_bicubic"] and m["ssim_sr"] > m["ssim_bicubic"])
    with atomic_dir(out) as tmp:
        save_file({k: v.cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(
            json.dumps(
                {
                    "architecture": "melanoma.generators.upscale.ESPCN",
                    "kwargs": {"factor": factor, "channels": cfg["channels"]},
                    "trained_on": "real train images, input = antialiased bicubic downscale",
                    "params": u,
                },
                indent=2,
            )
            + "\n"
        )
        shutil.copytree(ckpt_dir / "live", tmp / "curves")
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(m, indent=2) + "\n")
    discard(ckpt_dir)
    if not m["beats_bicubic"]:
        log(
            f"train_upscaler: WARNING: the SR model does NOT beat bicubic on real val images "
            f"(PSNR {m['psnr_sr']:.2f} vs {m['psnr_bicubic']:.2f} dB, SSIM {m['ssim_sr']:.4f} vs "
            f"{m['ssim_bicubic']:.4f}); train longer (upscale.sr.steps) or use upscale.method: bicubic"
        )
    return m


def load_upscaler(folder: Path, rt: Runtime = Runtime()) -> ESPCN:
    """The trained SR model from its folder (strict safetensors load), on `rt`'s device, in eval mode."""
    c = json.loads((folder / "config.json").read_text())
    model = ESPCN(**c["kwargs"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return rt.prepare(model).eval()


def _hub_upscale(images: np.ndarray, model_id: str, factor: int) -> np.ndarray:
    if factor != 4:
        raise UpscaleError(
            f"upscale.method=hub: the diffusers super-resolution pipelines upscale 4x; upscale.factor is {factor}"
        )
    # imported from its module: the package-level name is gated on `transformers`, which this pipeline does not use
    from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion_superresolution import (
        LDMSuperResolutionPipeline,
    )

    try:
        pipe = LDMSuperResolutionPipeline.from_pretrained(model_id)
    except (OSError, ValueError) as e:
        raise UpscaleError(
            f"upscale.method=hub: cannot load '{model_id}' ({first_line(e)}); pre-fill the Hugging "
            "Face cache (`huggingface-cli download MODEL` on a machine with network, copy ~/.cache/huggingface), "
            "or use upscale.method: sr"
        ) from None
    out = [np.asarray(pipe(Image.fromarray(im), num_inference_steps=50).images[0].convert("RGB")) for im in images]
    return np.stack(out)


UPSCALE_BATCH = 256  # images per forward pass of the SR model (bounds device memory at study size)


def upscale_images(
    images: np.ndarray,
    method: str,
    factor: int,
    model: ESPCN | None = None,
    hub_model: str = "",
    rt: Runtime = Runtime(),
) -> np.ndarray:
    """uint8 (N, s, s, 3) -> uint8 (N, s*f, s*f, 3) by the chosen method; bicubic and sr run on `rt`'s device
    in float32, in batches of UPSCALE_BATCH."""
    if len(images) == 0:
        return np.empty((0, images.shape[1] * factor, images.shape[2] * factor, 3), np.uint8)
    if method == "lanczos":
        return np.stack(
            [
                np.asarray(Image.fromarray(im).resize((im.shape[1] * factor, im.shape[0] * factor), Image.LANCZOS))
                for im in images
            ]
        )
    if method == "hub":
        return _hub_upscale(images, hub_model, factor)
    out = []
    with torch.no_grad():
        for i in range(0, len(images), UPSCALE_BATCH):
            x = _as_unit(images[i : i + UPSCALE_BATCH]).to(rt.device)
            out.append(_as_uint8(model(x) if method == "sr" else bicubic(x, factor)))
    return np.concatenate(out)


def upscale(
    gen: str,
    params: dict[str, Any],
    synthetic: Path,
    upscaler: Path,
    out: Path,
    sheet: Path,
    rt: Runtime = Runtime(),
    log=print,
) -> dict[str, Any]:
    """data/synthetic/<gen>/ -> data/synthetic/<gen>_upscaled/ (same ids, larger images) + a labelled comparison
    sheet (per class: as generated, bicubic, the method); the SR model (or bicubic) runs on `rt`'s device.
    A class with no synthetic images gets an empty shard; both outputs are written whole or not at all."""
    u = params["upscale"]
    method, factor = u["method"], u["factor"]
    model = load_upscaler(upscaler, rt) if method == "sr" else None
    rows = []
    counts = {}
    sheet_rows, row_labels = [], []
    sheet.parent.mkdir(parents=True, exist_ok=True)
    with staged_files() as staged, atomic_dir(out) as tmp:  # the sheet is renamed after `out` is committed
        for label in LABELS:
            src = np.load(synthetic / f"{label}.npy")
            up = upscale_images(src, method, factor, model, u["hub"]["model"], rt)
            np.save(tmp / f"{label}.npy", up)
            counts[label] = len(up)
            for i, im in enumerate(up):
                rows.append(
                    {
                        "id": f"{gen}_{label}_{i:06d}_up",
                        "source_id": f"{gen}_{label}_{i:06d}",
                        "generator": gen,
                        "class": label,
                        "method": method,
                        "factor": factor,
                        "path": f"{label}.npy#{i}",
                        "md5": md5_bytes(im.tobytes()),
                    }
                )
            if len(src):
                k = min(8, len(src))
                nearest = np.repeat(np.repeat(src[:k], factor, 1), factor, 2)  # rows: as generated, bicubic, method
                side = [nearest, upscale_images(src[:k], "bicubic", factor, rt=rt), up[:k]]
                sheet_rows.append(np.concatenate(side, axis=0))
                row_labels += [f"{label}: as generated", f"{label}: bicubic x{factor}", f"{label}: {method} x{factor}"]
        write_csv(tmp / "manifest.csv", rows, MANIFEST)
        tmp_sheet = staged.path(sheet)
        if sheet_rows:
            k = min(len(r) // 3 for r in sheet_rows)
            imgs = np.concatenate([_first(r, k) for r in sheet_rows], axis=0)  # classes may have fewer than 8
            labelled(grid(imgs, cols=k), rows=row_labels).save(tmp_sheet, format="PNG")
        else:
            labelled(Image.new("RGB", (240, 20), "white"), rows=[f"no synthetic {gen} images to upscale"]).save(
                tmp_sheet, format="PNG"
            )
    return {"method": method, "factor": factor, "counts": counts}


MANIFEST = ["id", "source_id", "generator", "class", "method", "factor", "path", "md5"]


def _first(triple: np.ndarray, k: int) -> np.ndarray:
    """The first k images of each of the three rows (as generated, bicubic, method) of one class's sheet rows."""
    n = len(triple) // 3
    return np.concatenate([triple[i * n : i * n + k] for i in range(3)])

"""A trained generator loaded to sample: weights and config from its folder, on any device.

from melanoma.generators.loaded import load_generator
gen = load_generator("models/generators/ddpm/ddpm_malignant")   # rt=runtime() to sample on a GPU
images = gen.sample(16, seed=0)          # uint8 array (16, S, S, 3)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from melanoma.engine import Runtime
from melanoma.errors import MelanomaError
from melanoma.generators import dcgan, ddpm
from melanoma.generators.data import to_uint8

TASKS = {"dcgan": dcgan.DCGANTask, "ddpm": ddpm.DDPMTask}  # generator family -> its training task (engine.Task)


class NonFiniteSamples(MelanomaError):
    """A generator produced NaN/Inf pixels: it diverged, and its images must not reach any dataset."""


@dataclass
class LoadedGenerator:
    """A trained generator ready to sample on `rt`'s device: `sample(n, seed)` gives uint8 (n, S, S, 3) on the
    host; the same seed gives the same images on the same device. Noise is drawn on the device."""

    kind: str
    label: str
    image_size: int
    model: torch.nn.Module
    rt: Runtime
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    nz: int = 0
    scheduler: Any = None
    sampler: str = "dpmsolver++"
    sampling_steps: int = 20

    def sample(self, n: int, seed: int = 0, batch_size: int = 64) -> np.ndarray:
        if n == 0:
            return np.empty((0, self.image_size, self.image_size, 3), np.uint8)
        g, dev = self.rt.generator(seed), self.rt.device
        if self.kind == "dcgan":
            with torch.no_grad(), self.rt.autocast():
                x = torch.cat(
                    [
                        self.model(torch.randn(min(batch_size, n - s), self.nz, generator=g, device=dev)).float()
                        for s in range(0, n, batch_size)
                    ]
                )
        else:
            x = ddpm.sample(self.model, self.scheduler, self.sampler, self.sampling_steps, n, g, batch_size, self.rt)
        x = x.float().cpu()  # one copy to the host per call
        if not torch.isfinite(x).all():
            raise NonFiniteSamples(
                f"the {self.kind} {self.label} generator produced NaN/Inf pixels (it diverged); "
                "retrain it (lower its lr or change generators.seed)"
            )
        return to_uint8(x * torch.tensor(self.std)[:, None, None] + torch.tensor(self.mean)[:, None, None])


def load_generator(
    folder: str | Path, rt: Runtime = Runtime(), sampler: str | None = None, sampling_steps: int | None = None
) -> LoadedGenerator:
    """Rebuild a trained generator from its folder (config.json + safetensors weights, strict loading) on `rt`'s
    device (default: the CPU). Raises FileNotFoundError naming the folder when it is not a generator folder."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(
            f"{cfg_path} not found: is {folder} a trained generator folder? "
            "(run `dvc repro train_generator` or `dvc pull`)"
        )
    c = json.loads(cfg_path.read_text())
    if c["generator"] == "dcgan":
        model = dcgan.Generator(**c["architecture"]["kwargs"])
        model.load_state_dict(load_file(str(folder / "generator.safetensors")), strict=True)
        return LoadedGenerator("dcgan", c["class"], c["image_size"], rt.prepare(model).eval(), rt, nz=c["params"]["nz"])
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True, low_cpu_mem_usage=False).eval()
    sched = DDPMScheduler.from_pretrained(folder / "scheduler")
    norm = c["normalisation"]
    return LoadedGenerator(
        "ddpm",
        c["class"],
        c["image_size"],
        rt.prepare(unet),
        rt,
        tuple(norm["mean"]),
        tuple(norm["std"]),
        scheduler=sched,
        sampler=sampler or c["params"]["sampler"],
        sampling_steps=sampling_steps or c["params"]["sampling_steps"],
    )

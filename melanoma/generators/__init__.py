"""Per-class image generators (DCGAN, DDPM): training on the train split only, and loading to sample.

    from melanoma.generators import load_generator
    gen = load_generator("models/generators/ddpm/ddpm_malignant")   # rt=runtime() to sample on a GPU
    images = gen.sample(16, seed=0)          # uint8 array (16, S, S, 3)
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from melanoma.data.images import grid
from melanoma.engine import Plan, Runtime, discard, fit, runtime
from melanoma.errors import MelanomaError
from melanoma.generators import dcgan, ddpm
from melanoma.io import atomic_dir, read_csv
from melanoma.params import GENERATORS, LABELS, ParamsError

TASKS = {"dcgan": dcgan.DCGANTask, "ddpm": ddpm.DDPMTask}
LOG_EVERY = 25  # steps between reads of the training scalars (NaN check, dvclive curves)
# the code that shapes a trained generator: a checkpoint made by other code is not resumed (DVC reruns the stage
# when this code changes; resuming the old code's checkpoint would silently keep most of the old result)
CODE = [Path(__file__).parent / f for f in ("__init__.py", "dcgan.py", "ddpm.py")] + [Path(__file__).parents[1] /
                                                                                  "engine.py"]


class NonFiniteSamples(MelanomaError):
    """A generator produced NaN/Inf pixels: it diverged, and its images must not reach any dataset."""


class GeneratorDataError(MelanomaError):
    """The training images for a generator are missing or empty."""


def load_train_images(splits: Path, raw: Path, label: str, size: int, split: str = "train") -> tuple[np.ndarray, str]:
    """The train-split images of one class, resized to size x size, as uint8 (N, S, S, 3), and their data hash.

    Generators call it with the default split: only `train.csv` is opened, so val and test images cannot reach
    them. (The upscaler reads val too, but only to score itself.)
    """
    csv_path = splits / f"{split}.csv"
    if not csv_path.is_file():
        raise GeneratorDataError(f"{csv_path} not found; run `dvc repro split` first")
    rows = [r for r in read_csv(csv_path) if r["label"] == label]
    if not rows:
        raise GeneratorDataError(f"{splits / f'{split}.csv'} has no {label} images; a {label} model needs some")
    out = np.empty((len(rows), size, size, 3), np.uint8)
    for i, r in enumerate(rows):
        with Image.open(raw / r["path"]) as im:
            out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.LANCZOS, reducing_gap=3.0))
    digest = hashlib.sha256("".join(sorted(r["md5"] for r in rows)).encode()).hexdigest()[:16]
    return out, digest


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, S, S, 3) -> float32 (N, 3, S, S) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] (any device) -> uint8 (N, H, W, 3) on the CPU."""
    return ((x.float().cpu().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def train_generator(gen: str, label: str, params: dict[str, Any], splits: Path, raw: Path, out: Path,
                    ckpt_dir: Path, rt: Runtime | None = None, log=print) -> dict[str, Any]:
    """Train one generator on the train-split images of `label` and write its folder: weights, config.json,
    samples.png, curves (dvclive). Resumes from `ckpt_dir` when its checkpoint matches.

    Everything runs on `rt`'s device (default: `runtime()`); under torchrun (DDPM only) each rank takes an equal
    share of every batch and rank 0 writes. Checkpoints are deleted once the folder is written.
    Raises GeneratorDataError (no images of the class), Diverged, CheckpointError, PretrainedUnavailable.
    """
    if gen not in GENERATORS or label not in LABELS:
        raise ParamsError(f"unknown generator/class {gen}/{label}; expected one of {', '.join(GENERATORS)} and one "
                          f"of {', '.join(LABELS)}")
    rt = rt or runtime()
    p = params["generators"]
    cfg, size, seed = p[gen], p["image_size"], p["seed"]
    images, data_hash = load_train_images(splits, raw, label, size)
    torch.set_num_threads(p["threads"] or torch.get_num_threads())
    x = to_tensor(images)
    mean, std, clip = ddpm.standardisation(x) if gen == "ddpm" else ([0.0] * 3, [1.0] * 3, 1.0)
    x = (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    task = TASKS[gen](cfg, x, size, seed, rt, clip)
    if gen == "ddpm" and rt.world > 1:
        task.distribute()
    config = {"generator": gen, "class": label, "image_size": size, "seed": seed, "params": cfg,
              "data_hash": data_hash, "n_train_images": len(images), "processes": rt.world,
              "normalisation": {"mean": mean, "std": std, "note": "model space = (pixel / 127.5 - 1 - mean) / std"}}
    t0 = time.perf_counter()
    plan = Plan(steps=cfg["steps"], seed=seed, period=LOG_EVERY, config=config, code=CODE, folder=ckpt_dir,
                checkpoint_every=p["checkpoint_every"], keep=1)
    fitted = fit(task, plan, rt, log=log)
    run = {"steps": cfg["steps"], "resumed_from": fitted.resumed_from, "final": fitted.last,
           "device": str(rt.device), "processes": rt.world,
           "precision": "float32" if rt.amp is None else "bfloat16 autocast"}
    record = {**config, "architecture": _architecture(gen, cfg, size), "training": run}  # no wall-clock time: the
    # same run gives the same bytes, so DVC sees an unchanged output
    if rt.main:
        with atomic_dir(out) as tmp:
            (tmp / "config.json").write_text(json.dumps(record, indent=2) + "\n")
            task.save(tmp)
            grid(load_generator(tmp, rt).sample(64, seed=seed)).save(tmp / "samples.png")  # via the public loader
            shutil.copytree(ckpt_dir / "live", tmp / "curves")
        discard(ckpt_dir)
    return {**record, "seconds": round(time.perf_counter() - t0, 1)}


def _architecture(gen: str, cfg: dict[str, Any], size: int) -> dict[str, Any]:
    if gen == "dcgan":
        return {"class": "melanoma.generators.dcgan.Generator",
                "kwargs": {"nz": cfg["nz"], "ngf": cfg["ngf"], "nc": 3, "image_size": size},
                "weights": "generator.safetensors (EMA of G)"}
    return {"class": "diffusers.UNet2DModel", "weights": "unet/ (EMA, safetensors)", "scheduler": "scheduler/",
            "kwargs": ddpm.unet_config(size, cfg["block_out_channels"], cfg["layers_per_block"], cfg["attention"]),
            "pretrained": cfg["pretrained"] or None}


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
                x = torch.cat([self.model(torch.randn(min(batch_size, n - s), self.nz, generator=g, device=dev)).float()
                               for s in range(0, n, batch_size)])
        else:
            x = ddpm.sample(self.model, self.scheduler, self.sampler, self.sampling_steps, n, g, batch_size, self.rt)
        x = x.float().cpu()  # one copy to the host per call
        if not torch.isfinite(x).all():
            raise NonFiniteSamples(f"the {self.kind} {self.label} generator produced NaN/Inf pixels (it diverged); "
                                   "retrain it (lower its lr or change generators.seed)")
        return to_uint8(x * torch.tensor(self.std)[:, None, None] + torch.tensor(self.mean)[:, None, None])


def load_generator(folder: str | Path, rt: Runtime = Runtime(), sampler: str | None = None,
                   sampling_steps: int | None = None) -> LoadedGenerator:
    """Rebuild a trained generator from its folder (config.json + safetensors weights, strict loading) on `rt`'s
    device (default: the CPU). Raises FileNotFoundError naming the folder when it is not a generator folder."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} not found: is {folder} a trained generator folder? "
                                "(run `dvc repro train_generator` or `dvc pull`)")
    c = json.loads(cfg_path.read_text())
    if c["generator"] == "dcgan":
        model = dcgan.Generator(**c["architecture"]["kwargs"])
        model.load_state_dict(load_file(str(folder / "generator.safetensors")), strict=True)
        return LoadedGenerator("dcgan", c["class"], c["image_size"], rt.prepare(model).eval(), rt, nz=c["params"]["nz"])
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel.from_pretrained(folder / "unet", use_safetensors=True, low_cpu_mem_usage=False).eval()
    sched = DDPMScheduler.from_pretrained(folder / "scheduler")
    norm = c["normalisation"]
    return LoadedGenerator("ddpm", c["class"], c["image_size"], rt.prepare(unet), rt, tuple(norm["mean"]),
                           tuple(norm["std"]),
                           scheduler=sched,
                           sampler=sampler or c["params"]["sampler"],
                           sampling_steps=sampling_steps or c["params"]["sampling_steps"])

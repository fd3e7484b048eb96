"""Training one per-class generator (DCGAN or DDPM) on the train split only, through the one training engine.

from melanoma.generators.train import train_generator   # what `dvc repro train_generator` runs
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from melanoma.data.images import grid
from melanoma.engine import Runtime, TrainingPlan, discard, fit, runtime
from melanoma.generators import ddpm
from melanoma.generators.data import load_train_images, to_tensor
from melanoma.generators.loaded import TASKS, load_generator
from melanoma.imports import code_files
from melanoma.io import atomic_dir
from melanoma.params import GENERATORS, LABELS, ParamsError

LOG_EVERY = 25  # steps between reads of the training scalars (NaN check, dvclive curves)
# the code that shapes a trained generator: a checkpoint made by other code is not resumed (DVC reruns the stage
# when this code changes; resuming the old code's checkpoint would silently keep most of the old result)
CODE = code_files(__name__)


def train_generator(
    gen: str,
    label: str,
    params: dict[str, Any],
    splits: Path,
    raw: Path,
    out: Path,
    ckpt_dir: Path,
    rt: Runtime | None = None,
    log=print,
) -> dict[str, Any]:
    """Train one generator on the train-split images of `label` and write its folder: weights, config.json,
    samples.png, curves (dvclive). Resumes from `ckpt_dir` when its checkpoint matches.

    Everything runs on `rt`'s device (default: `runtime()`); under torchrun (DDPM only) each rank takes an equal
    share of every batch and rank 0 writes. Checkpoints are deleted once the folder is written.
    Raises GeneratorDataError (no images of the class), Diverged, CheckpointError, PretrainedUnavailable.
    """
    if gen not in GENERATORS or label not in LABELS:
        raise ParamsError(
            f"unknown generator/class {gen}/{label}; expected one of {', '.join(GENERATORS)} and one "
            f"of {', '.join(LABELS)}"
        )
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
    config = {
        "generator": gen,
        "class": label,
        "image_size": size,
        "seed": seed,
        "params": cfg,
        "data_hash": data_hash,
        "n_train_images": len(images),
        "processes": rt.world,
        "normalisation": {"mean": mean, "std": std, "note": "model space = (pixel / 127.5 - 1 - mean) / std"},
    }
    t0 = time.perf_counter()
    plan = TrainingPlan(
        steps=cfg["steps"],
        seed=seed,
        period=LOG_EVERY,
        config=config,
        code=CODE,
        folder=ckpt_dir,
        checkpoint_minutes=params["checkpoint_minutes"],
        keep=1,
    )
    fitted = fit(task, plan, rt, log=log)
    run = {
        "steps": cfg["steps"],
        "resumed_from": fitted.resumed_from,
        "final": fitted.last,
        "device": str(rt.device),
        "processes": rt.world,
        "precision": "float32" if rt.amp is None else "bfloat16 autocast",
    }
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
        return {
            "class": "melanoma.generators.dcgan.Generator",
            "kwargs": {"nz": cfg["nz"], "ngf": cfg["ngf"], "nc": 3, "image_size": size},
            "weights": "generator.safetensors (EMA of G)",
        }
    return {
        "class": "diffusers.UNet2DModel",
        "weights": "unet/ (EMA, safetensors)",
        "scheduler": "scheduler/",
        "kwargs": ddpm.params_unet_config(size, cfg),
        "pretrained": cfg["pretrained"] or None,
    }

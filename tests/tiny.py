"""A tiny project (params.yaml + demo data + splits) in a temp folder, for stage-level tests that must be fast."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import yaml

from melanoma.data.datasets import COLUMNS
from melanoma.data.fetch import from_demo, write_raw
from melanoma.data.split import split
from melanoma.io import write_csv
from melanoma.params import validate
from tests.conftest import ROOT

TINY_MODELS = {  # the smallest members that still exercise each family's code path
    "BioViT": {
        "model": "vit_tiny_patch16_224",
        "pretrained": False,
        "lr": 1e-3,
        "kwargs": {"patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2},
    },
    "DenseNet": {
        "model": "densenet121",
        "pretrained": False,
        "lr": 1e-3,
        "kwargs": {"growth_rate": 8, "block_config": [1, 1, 1, 1]},
    },
    "ResNet": {"model": "resnet18", "pretrained": False, "lr": 1e-3, "kwargs": {"layers": [1, 1, 1, 1]}},
    "Swin": {
        "model": "swin_tiny_patch4_window7_224",
        "pretrained": False,
        "lr": 1e-3,
        "kwargs": {"embed_dim": 16, "depths": [1, 1, 1, 1], "num_heads": [1, 1, 2, 2], "window_size": 2},
    },
    "ViT": {
        "model": "vit_tiny_patch16_224",
        "pretrained": False,
        "lr": 1e-3,
        "kwargs": {"patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2},
    },
    "MedViT": {"model": "medvit_tiny", "pretrained": False, "lr": 1e-3, "kwargs": {"depths": [1, 1, 5, 1]}},
}


def tiny_params(**overrides) -> dict:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["data"]["demo"].update(n_benign=24, n_malignant=12, image_size=32)
    g = p["generators"]
    g.update(image_size=16, threads=1)
    p["checkpoint_minutes"] = 0  # a checkpoint at every period end: the kill-and-resume tests need them
    g["dcgan"].update(ngf=8, ndf=8, nz=16, steps=6, batch_size=8, diff_augment=True)  # exercise DiffAugment
    g["ddpm"].update(
        block_out_channels=[8, 16], steps=4, batch_size=4, warmup_steps=1, sampler="ddim", sampling_steps=3
    )
    p["synthesize"].update(quality_samples=16, batch_size=16)
    p["datasets"]["per_class"] = 20  # both classes get synthetic images (train holds ~17 benign, ~8 malignant)
    p["upscale"]["sr"].update(steps=5, batch_size=8, channels=8)
    c = p["classifiers"]
    c.update(archs=["ResNet", "ViT"], datasets=["Original", "DCGAN"], seeds=[0, 1])
    c["train"].update(steps=8, eval_every=4, batch_size=8, eval_batch_size=16, threads=1, warmup_steps=2, patience=5)
    c["models"].update(TINY_MODELS)
    p["evaluate"].update(bootstrap=50, gradcam_per_group=1)
    for dotted, value in overrides.items():
        node = p
        *parents, leaf = dotted.split(".")
        for k in parents:
            node = node[k]
        node[leaf] = value
    return validate(copy.deepcopy(p))


def workspace(folder: Path, params: dict) -> Path:
    """A folder a stage script can run in, as DVC runs it: params.yaml and this checkout's dvc.yaml (a stage reads
    only the params its dvc.yaml stage declares)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return folder


def make_project(folder: Path, params: dict) -> Path:
    """params.yaml, dvc.yaml, data/raw and data/splits, laid out as the stages expect (paths relative to
    `folder`)."""
    workspace(folder, params)
    write_raw(from_demo(params["data"]["demo"]), folder / "data/raw", 1024, 0.0, workers=1)
    s = params["split"]
    split(
        folder / "data/raw",
        folder / "data/splits",
        s["seed"],
        s["val_fraction"],
        s["test_fraction"],
        s["near_duplicate_corr"],
    )
    return folder


def run_stage(folder: Path, script: str, *args: str, check: bool = True, **popen) -> subprocess.CompletedProcess:
    """Run stages/<script> with `folder` as the working directory, as DVC would."""
    cmd = [sys.executable, str(ROOT / "stages" / script), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, **popen)
    if check and p.returncode != 0:
        raise AssertionError(f"{script} {args} failed:\n{p.stdout}\n{p.stderr}")
    return p


def with_dcgan_synthetic(folder: Path, params: dict) -> Path:
    """Train both tiny DCGANs in `folder` and synthesize their images (data/synthetic/dcgan)."""
    from melanoma.generators.synthesize import synthesize
    from melanoma.generators.train import train_generator

    for label in ("benign", "malignant"):
        out = folder / f"models/generators/dcgan/dcgan_{label}"
        train_generator(
            "dcgan",
            label,
            params,
            folder / "data/splits",
            folder / "data/raw",
            out,
            folder / "models/.checkpoints" / out.name,
            log=lambda *_: None,
        )
    synthesize(
        "dcgan",
        params,
        folder / "data/splits",
        folder / "data/raw",
        folder / "models/generators",
        folder / "data/synthetic/dcgan",
        folder / "results/generators/dcgan",
        log=lambda *_: None,
    )
    return folder


def make_pack(
    folder: Path,
    n_train: tuple[int, int] = (24, 12),
    n_val: tuple[int, int] = (8, 8),
    size: int = 16,
    seed: int = 0,
    n_test: tuple[int, int] = (10, 6),
    n_external: tuple[int, int] = (0, 0),
    n_synthetic: tuple[int, int] = (0, 0),
) -> Path:
    """A dataset folder in build_dataset's layout (packs, manifest.csv, stats.json) whose classes a small network
    can tell apart after a few steps: malignant images carry a red blob at a random place on brown noise. An
    external test part if n_external; the last n_synthetic train images of each class marked as DCGAN's."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    parts = [("train", n_train), ("val", n_val), ("test", n_test)] + [("external_test", n_external)] * any(n_external)
    for part, (nb, nm) in parts:
        labels = ["benign"] * nb + ["malignant"] * nm
        pack = rng.integers(60, 140, (len(labels), size, size, 3)).astype(np.uint8)
        pack[..., 0] = np.clip(pack[..., 0].astype(int) + 30, 0, 255)
        for i, label in enumerate(labels):
            if label == "malignant":
                y, x = rng.integers(0, size // 2, 2)
                pack[i, y : y + size // 2, x : x + size // 2] = (220, 30, 40)
        np.save(folder / f"{part}.npy", pack)
        made = {"benign": range(nb - n_synthetic[0], nb), "malignant": range(nb + nm - n_synthetic[1], nb + nm)}
        rows += [
            {
                "split": part,
                "index": i,
                "id": f"{part}{i}",
                "label": label,
                "upscaled": "no",
                "path": "",
                "md5": "",
                "origin": "dcgan" if part == "train" and i in made[label] else "real",
            }
            for i, label in enumerate(labels)
        ]
    write_pack_index(folder, rows, size)
    return folder


def write_pack_index(folder: Path, rows: list[dict], size: int) -> None:
    """manifest.csv and stats.json (counts per split and label/origin, as build_dataset writes them)."""
    write_csv(folder / "manifest.csv", rows, COLUMNS)  # meta_* columns: empty unless the rows carry them
    counts = Counter((r["split"], f"{r['label']}/{r['origin']}") for r in rows)
    (folder / "stats.json").write_text(
        json.dumps(
            {
                "dataset": folder.name,
                "image_size": size,
                "counts": {
                    part: {k: n for (s, k), n in sorted(counts.items()) if s == part}
                    for part in dict.fromkeys(r["split"] for r in rows)
                },
            }
        )
    )

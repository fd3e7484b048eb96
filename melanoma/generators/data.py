"""A generator's training images: the train split of one class, resized, as uint8 arrays and model tensors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from melanoma.errors import MelanomaError
from melanoma.io import read_csv


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

"""Shared fixtures: the project's paths, the real ISIC sample beside the checkout, and odd image files."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# the real ISIC sample: beside the checkout in CI, or wherever MELANOMA_ISIC_SAMPLE points
SHARED = Path(os.environ.get("MELANOMA_ISIC_SAMPLE") or ROOT.parent / "shared" / "data" / "isic-sample")


@pytest.fixture
def isic_sample() -> Path:
    if not (SHARED / "folder").is_dir():
        pytest.skip(
            f"real ISIC sample not found at {SHARED} (it lies beside the checkout in CI; set "
            "MELANOMA_ISIC_SAMPLE to its folder elsewhere)"
        )
    return SHARED


@pytest.fixture
def label_map() -> dict[str, str]:
    return {"melanoma": "malignant", "nevus": "benign", "seborrheic_keratosis": "benign"}


def lesion_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A small RGB image with structure (so thumbnails of different seeds differ)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    return Image.fromarray(base).resize(size, Image.BICUBIC)


def jpeg_bytes(im: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def make_class_folders(root: Path, n_benign: int = 4, n_malignant: int = 3, seed: int = 0) -> Path:
    for label, n, off in (("benign", n_benign, 0), ("malignant", n_malignant, 1000)):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            lesion_image(seed + off + i).save(root / label / f"img_{i}.jpg", quality=95)
    return root


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@contextmanager
def mounted(folder: Path, options: str) -> Iterator[Path]:
    """A tmpfs at `folder` (e.g. size=8k, or ro): a real full or read-only file system. Needs root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited or read-only tmpfs needs root (CI runs as root)")
    folder.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)

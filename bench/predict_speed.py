"""`melanoma predict`'s preprocessing on full-resolution ISIC JPEGs: images/s and pixel agreement of the fast
path (draft-mode decode, no re-encode) against the path fetch + build_dataset take (full decode, cap at max_side,
JPEG quality 95, decode again, resize).

    .venv/bin/python bench/predict_speed.py [--images ../shared/data/isic-sample/archive/images] [--model DIR]

Prints, per classifier input size, each path's images/s on one thread (and the predict path with predict's decode
threads: run it on an otherwise idle machine) and the mean / max absolute pixel
difference (0-255) after the final resize; with --model (a package folder), the largest |P(malignant)|
difference between the two paths on those images.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def stored_path(path: Path, size: int, max_side: int) -> np.ndarray:
    """What training saw: fetch's stored image (capped, re-encoded), decoded again and resized."""
    from PIL import Image

    from melanoma.data.datasets import resize
    from melanoma.data.images import decode_image

    stored = decode_image(path, max_side)
    with Image.open(io.BytesIO(stored.data)) as im:
        return resize(np.asarray(im.convert("RGB")), size)


def timed(fn, files: list[Path]) -> tuple[float, list[np.ndarray]]:
    t0 = time.perf_counter()
    out = [fn(f) for f in files]
    return len(files) / (time.perf_counter() - t0), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, default=ROOT.parent / "shared/data/isic-sample/archive/images")
    ap.add_argument("--model", type=Path, help="a package folder (models/export/<Arch>/<Arch>_<Dataset>)")
    ap.add_argument("--max-side", type=int, default=1024)
    a = ap.parse_args()
    from melanoma.serving.package import prepare
    from melanoma.serving.predict import DECODE_THREADS

    files = sorted(f for f in a.images.iterdir() if f.suffix.lower() in (".jpg", ".jpeg"))
    if not files:
        raise SystemExit(f"no JPEGs in {a.images}")
    print(f"{len(files)} JPEGs from {a.images} (median {np.median([f.stat().st_size for f in files]) / 1e6:.1f} MB)")
    for size in (32, 224):
        slow, ref = timed(lambda f, size=size: stored_path(f, size, a.max_side), files)
        fast, got = timed(lambda f, size=size: prepare(f, size, a.max_side), files)
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            t0 = time.perf_counter()
            list(pool.map(lambda f, size=size: prepare(f, size, a.max_side), files))
            threaded = len(files) / (time.perf_counter() - t0)
        d = np.concatenate([np.abs(x.astype(int) - y.astype(int)).ravel() for x, y in zip(ref, got)])
        print(
            f"input {size:>3} px: stored path {slow:6.1f} img/s, predict path {fast:6.1f} img/s ({fast / slow:.1f}x), "
            f"with {DECODE_THREADS} decode threads {threaded:6.1f} img/s ({threaded / slow:.1f}x); "
            f"pixel difference mean {d.mean():.2f}, max {d.max()} (0-255)"
        )
    if a.model:
        from melanoma.serving.package import load, served, torch_probabilities

        model, cfg = load(a.model)
        size = cfg["input_size"]
        p_ref = torch_probabilities(served(model, cfg), np.stack([stored_path(f, size, a.max_side) for f in files]))
        p_new = torch_probabilities(served(model, cfg), np.stack([prepare(f, size, a.max_side) for f in files]))
        print(f"{a.model}: max |P(malignant) difference| {np.abs(p_ref - p_new).max():.2e} over {len(files)} images")


if __name__ == "__main__":
    main()

"""Sampling speed and quality of the three DDPM samplers on one trained UNet.

    python bench/generator_sampling.py [--model models/generators/ddpm/ddpm_malignant] [--n 64]

Prints images/s for ancestral DDPM (all training steps), DDIM-50 and DPM-Solver++-20 on the current device,
and a C2ST AUROC of each sampler's images against the real train images of the model's class (lower is better,
0.5 = indistinguishable). Needs a trained generator (`dvc repro train_generator`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from melanoma.generators.data import load_train_images
from melanoma.generators.loaded import load_generator
from melanoma.generators.quality import c2st_auc
from melanoma.paths import RAW_DIR, SPLITS_DIR


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="models/generators/ddpm/ddpm_malignant")
    ap.add_argument("--n", type=int, default=64, help="images per sampler (ancestral DDPM is slow on a CPU)")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    gen = load_generator(a.model)
    real, _ = load_train_images(SPLITS_DIR, RAW_DIR, gen.label, gen.image_size)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen.model.to(device)
    print(
        f"{Path(a.model).name}: {gen.image_size}px, {sum(p.numel() for p in gen.model.parameters()) / 1e6:.2f} M "
        f"params, {device} ({torch.get_num_threads()} threads), {a.n} images per sampler"
    )
    print(f"{'sampler':<16}{'steps':>6}{'images/s':>12}{'C2ST AUROC':>12}")
    for sampler, steps in (("ddpm", 1000), ("ddim", 50), ("dpmsolver++", 20)):
        gen.sampler, gen.sampling_steps = sampler, steps
        t0 = time.perf_counter()
        images = gen.sample(a.n, seed=0)
        rate = a.n / (time.perf_counter() - t0)
        auc = c2st_auc(real, images, seed=0)["c2st_auc"] if min(len(real), a.n) >= 8 else float("nan")
        print(f"{sampler:<16}{steps:>6}{rate:>12.2f}{auc:>12.3f}")


if __name__ == "__main__":
    main()

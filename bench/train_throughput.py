"""Training throughput: the project's real step fed from a packed dataset vs a pure-compute step, same model/batch.

    python bench/train_throughput.py --arch ResNet --model resnet50 [--size 224] [--batch 32] [--steps 10]
                                     [--dataset data/datasets/Original] [--kwargs '{"depth": 6}']

(a) "real step": `melanoma.classifiers.train.train_step` exactly as the loop runs it: indices from the epoch
    sampler, augmentation draws, the uint8 pack resident on the device, batched augmentation and normalisation
    there, class-weighted loss, AdamW. The pack comes from `--dataset` (resized on the fly to --size if it is
    not already that size, once, before timing), or random uint8 images with --dataset ''.
(b) "pure compute": forward, backward and AdamW on one normalised float batch already on the device.
The ratio (a)/(b) is the share of compute the data path leaves; on CUDA the goal is >= 0.90.
On CUDA both run under bf16 autocast with channels_last (as training does); --compile adds torch.compile.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from melanoma.classifiers.registry import build_model
from melanoma.classifiers.train import augment_params, epoch_batches, train_step
from melanoma.data.datasets import load_split
from melanoma.engine import adamw, runtime
from melanoma.params import load_params


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _pack(dataset: str, size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    if dataset and Path(dataset, "train.npy").is_file():
        x, y = load_split(Path(dataset), "train")
    else:
        rng = np.random.default_rng(0)
        x, y = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 2, n)
    if x.shape[1] != size:
        t = torch.from_numpy(x).permute(0, 3, 1, 2).float()
        x = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True).round().clamp(0, 255)
        x = x.to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ResNet")
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--kwargs", default="{}", help="JSON passed to the constructor, as params' kwargs")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dataset", default="data/datasets/Original")
    ap.add_argument("--images", type=int, default=1024, help="pack size when no dataset is given")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rt = runtime()
    device, cuda = rt.device, rt.device.type == "cuda"
    aug_cfg = load_params()["classifiers"]["train"]["augment"]
    torch.manual_seed(0)
    spec = {"model": a.model, "pretrained": False, "lr": 1e-4, "kwargs": json.loads(a.kwargs)}
    built = build_model(a.arch, spec, 2, a.size)
    model = rt.prepare(built.model)
    net = torch.compile(model) if a.compile else model
    opt = adamw(model, 1e-4, 0.05)
    norm = built.info["normalisation"]
    mean = torch.tensor(norm["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"], device=device).view(1, 3, 1, 1)
    xs, ys = _pack(a.dataset, a.size, a.images)
    X = torch.from_numpy(xs).permute(0, 3, 1, 2).contiguous().to(device)
    Y = torch.from_numpy(ys).to(device)
    class_w = torch.ones(2, device=device)
    gen = torch.Generator().manual_seed(0)
    net.train()

    def real_steps(n: int) -> float:
        done = 0
        _sync(device)
        t0 = time.perf_counter()
        while done < n:
            for idx in epoch_batches(ys, a.batch, "weighted_loss", gen):
                train_step(net, opt, X, Y, idx, augment_params(a.batch, aug_cfg, gen), class_w, mean, std, rt)
                done += 1
                if done == n:
                    break
        _sync(device)
        return time.perf_counter() - t0

    xb = torch.randn(a.batch, 3, a.size, a.size, device=device)
    if cuda:
        xb = xb.contiguous(memory_format=torch.channels_last)
    yb = torch.randint(0, 2, (a.batch,), device=device)

    def pure_steps(n: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            with rt.autocast():
                loss = F.cross_entropy(net(xb).float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        return time.perf_counter() - t0

    real_steps(a.warmup)
    pure_steps(a.warmup)
    real = a.steps * a.batch / real_steps(a.steps)
    pure = a.steps * a.batch / pure_steps(a.steps)
    where = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
    print(
        f"{a.arch} {a.model} {json.loads(a.kwargs) or ''} {built.info['parameters'] / 1e6:.1f} M params, "
        f"{a.size}px, batch {a.batch}, {where}, pack {tuple(X.shape)} from {a.dataset or 'random'}"
    )
    print(f"  real step (packed cache + device augmentation): {real:8.1f} images/s")
    print(f"  pure compute (random tensor on device):         {pure:8.1f} images/s")
    print(f"  ratio real/pure: {real / pure:.2f}")


if __name__ == "__main__":
    main()

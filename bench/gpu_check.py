"""The GPU check: every computing stage's step at study size, a few steps each, on one machine, in one go.

    python bench/gpu_check.py --out gpu_check.jsonl            # on a GPU machine (about 5-8 minutes on an H200)
    python bench/gpu_check.py --device cpu --tiny              # the same code paths, tiny sizes (CI, ~1 minute)

For each part it asserts that every parameter, buffer and input tensor of every module call sat on the device
(a global forward pre-hook), then prints one JSON line (also written to --out): images/s, peak device memory and,
where `melanoma/reference/` measured the same network, the ratio to that ceiling. Parts:

- classifier@<Arch>: the study member of each family at 224 px, batch classifiers.train.batch_size, bf16 autocast:
  `real` = the training engine's step (GPU-resident uint8 pack, batched augmentation) vs `pure` = forward,
  backward and optimiser step on a fixed tensor; their ratio is what the input path costs;
- dcgan, ddpm (113.7 M-parameter UNet at 64 px), sr (ESPCN x4), c2st: each engine task's step at study size;
- sample@<sampler>: the EMA UNet sampled with each sampler (ddpm: 1000 steps on a smaller batch);
- evaluate: P(malignant) on a batch and GradCAM on 8 images for one study member;
- ddp: a 2-process torchrun run of the DDPM step (NCCL on two GPUs; on a one-GPU machine gloo on the CPU, said
  so in the record), checking that both ranks end with identical weights.

No network: every model is built from scratch (pretrained weights change nothing about speed).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from melanoma.engine import Runtime  # noqa: E402
from melanoma.params import ARCHS, LABELS, SAMPLERS  # noqa: E402


def study_params(tiny: bool) -> dict[str, Any]:
    """params.yaml with the study profile applied (on a temporary copy); --tiny: the demo params, shrunk."""
    if tiny:
        from tests.tiny import tiny_params

        p = tiny_params()
        p["classifiers"]["train"]["batch_size"] = 4
        return p
    from melanoma.estimate import ASSUMED
    from melanoma.params import train_steps
    from melanoma.profile import profile_params

    p = profile_params("study", ROOT / "profiles")
    tp = p["classifiers"]["train"]  # steps: auto, resolved as for the assumed ISIC run (the engine takes a number)
    tp["steps"] = train_steps(tp, ASSUMED.train, p["datasets"]["per_class"])
    return p


def reference(folder: Path) -> list[dict[str, Any]]:
    """The reference records (empty when the folder is absent: ratios are then null)."""
    rows = []
    for f in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return rows


class DeviceGuard:
    """Records the devices of every parameter, buffer and tensor input of every module call while active."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.calls = 0

    def reset(self) -> None:
        """Forget what was seen so far (a part calls it after building its models: the registry's build check
        runs a forward pass on the CPU before the model is moved)."""
        self.seen, self.calls = set(), 0

    def __enter__(self) -> DeviceGuard:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            self.calls += 1
            tensors = [
                *module.parameters(recurse=False),
                *module.buffers(recurse=False),
                *(a for a in args if isinstance(a, torch.Tensor)),
            ]
            self.seen |= {t.device.type for t in tensors}

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()

    def check(self, device: torch.device, part: str) -> None:
        assert self.calls > 0, f"{part}: no module ran"
        assert self.seen == {device.type}, f"{part}: tensors on {sorted(self.seen)}, expected only {device.type}"


GUARD = DeviceGuard()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[int], Any], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds for `steps` calls of step(i) after `warmup` untimed ones (the device drained before and after)."""
    for i in range(warmup):
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i)
    sync(device)
    return time.perf_counter() - t0


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None


def part(name: str, rt: Runtime, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one part under the device guard; its record with the part name, peak memory and wall time."""
    if rt.device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(rt.device)
    t0 = time.perf_counter()
    GUARD.reset()
    with GUARD:
        record = fn()
    GUARD.check(rt.device, name)
    return {
        "part": name,
        **record,
        "peak_gib": peak_gib(rt.device),
        "device_ok": True,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def ratio(value: float, ceiling: float | None) -> float | None:
    return round(value / ceiling, 3) if ceiling else None


def ref_value(refs: list[dict[str, Any]], key: str, **match: Any) -> float | None:
    hits = [r[key] for r in refs if all(r.get(k) == v for k, v in match.items()) and key in r]
    return hits[0] if hits else None


# ---------------------------------------------------------------- parts


def classifier(arch: str, p: dict[str, Any], rt: Runtime, a: argparse.Namespace, refs: list) -> dict[str, Any]:
    from melanoma.classifiers.registry import build_model
    from melanoma.classifiers.train import ClassifierTask
    from melanoma.engine import adamw

    tp, size = p["classifiers"]["train"], p["datasets"]["image_size"]
    spec = {**p["classifiers"]["models"][arch], "pretrained": False}
    batch = tp["batch_size"]
    n = batch * (a.steps + a.warmup)
    rng = np.random.default_rng(0)
    train = (rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 2)
    val = (rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8), np.arange(8) % 2)
    torch.manual_seed(0)
    task = ClassifierTask(
        arch,
        build_model(arch, spec, len(LABELS), size),
        {**tp, "compile": False},
        spec["lr"],
        0,
        train,
        val,
        rt,
        log=lambda *_: None,
    )
    assert task.X.device.type == rt.device.type, f"{arch}: the training pack is not on {rt.device}"
    pure_model = rt.prepare(build_model(arch, spec, len(LABELS), size).model).train()
    GUARD.reset()
    real = batch * a.steps / timed(task.step, a.steps, a.warmup, rt.device)
    model = pure_model
    opt = adamw(model, spec["lr"], tp["weight_decay"])
    x = torch.randn(batch, 3, size, size, device=rt.device)
    x = x.contiguous(memory_format=torch.channels_last) if rt.device.type == "cuda" else x
    y = torch.arange(batch, device=rt.device) % 2

    def pure_step(_: int) -> None:
        with rt.autocast():
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    pure = batch * a.steps / timed(pure_step, a.steps, a.warmup, rt.device)
    ceiling = ref_value(refs, "train_img_s", kind="classifier", arch=spec["model"], size=size, mode="bf16_cl")
    return {
        "model": spec["model"],
        "size": size,
        "batch": batch,
        "real_img_s": round(real, 1),
        "pure_img_s": round(pure, 1),
        "real_over_pure": round(real / pure, 3),
        "reference_train_img_s": ceiling,
        "pure_over_reference": ratio(pure, ceiling),
    }


def generator_data(n: int, size: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size) * 2 - 1


def dcgan(p: dict[str, Any], rt: Runtime, a: argparse.Namespace, refs: list) -> dict[str, Any]:
    from melanoma.generators.dcgan import DCGANTask

    g = p["generators"]
    task = DCGANTask(g["dcgan"], generator_data(512, g["image_size"]), g["image_size"], 0, rt)
    batch = g["dcgan"]["batch_size"]
    rate = batch * a.steps / timed(task.step, a.steps, a.warmup, rt.device)
    ceiling = ref_value(refs, "train_img_s", kind="dcgan", size=g["image_size"])
    return {
        "size": g["image_size"],
        "batch": batch,
        "img_s": round(rate, 1),
        "reference_img_s": ceiling,
        "over_reference": ratio(rate, ceiling),
    }


def ddpm_task(p: dict[str, Any], rt: Runtime) -> Any:
    from melanoma.generators.ddpm import DDPMTask

    g = p["generators"]
    return DDPMTask({**g["ddpm"], "pretrained": ""}, generator_data(256, g["image_size"]), g["image_size"], 0, rt)


def ddpm(p: dict[str, Any], rt: Runtime, a: argparse.Namespace, refs: list, keep: dict) -> dict[str, Any]:
    task = ddpm_task(p, rt)
    keep["ddpm"] = task
    batch = p["generators"]["ddpm"]["batch_size"]
    rate = batch * a.steps / timed(task.step, a.steps, a.warmup, rt.device)
    params_m = round(sum(t.numel() for t in task.unet.parameters()) / 1e6, 1)
    ceiling = ref_value(refs, "train_img_s", kind="ddpm_train", mode="bf16" if rt.amp else "fp32")
    return {
        "size": p["generators"]["image_size"],
        "batch": batch,
        "params_m": params_m,
        "img_s": round(rate, 1),
        "reference_img_s": ceiling,
        "reference_batch": ref_value(refs, "batch", kind="ddpm_train"),
        "over_reference": ratio(rate, ceiling),
    }


def sample(sampler: str, p: dict[str, Any], rt: Runtime, a: argparse.Namespace, refs: list, keep: dict) -> dict:
    from melanoma.generators.loaded import LoadedGenerator

    g, task = p["generators"], keep["ddpm"]
    steps = g["ddpm"]["num_train_timesteps"] if sampler == "ddpm" else g["ddpm"]["sampling_steps"]
    n = a.sample_batch // 4 if sampler == "ddpm" else a.sample_batch  # 1000 ancestral steps: a smaller batch
    gen = LoadedGenerator(
        "ddpm",
        "benign",
        g["image_size"],
        task.ema.module,
        rt,
        scheduler=task.scheduler,
        sampler=sampler,
        sampling_steps=steps,
    )
    sync(rt.device)
    t0 = time.perf_counter()
    images = gen.sample(n, seed=0, batch_size=n)
    seconds = time.perf_counter() - t0
    assert images.shape == (n, g["image_size"], g["image_size"], 3)
    per_step = seconds / (n * steps)
    ref = [r for r in refs if r.get("kind") == "ddpm_sample" and r.get("scheduler") == sampler]
    ref_per_step = ref[0]["seconds"] / (ref[0]["batch"] * ref[0]["steps"]) if ref else None
    return {
        "sampler": sampler,
        "steps": steps,
        "images": n,
        "img_s": round(n / seconds, 2),
        "ms_per_image_step": round(per_step * 1e3, 4),
        "reference_ms_per_image_step": None if ref_per_step is None else round(ref_per_step * 1e3, 4),
        "reference_over_this": ratio(ref_per_step or 0, per_step) if ref_per_step else None,
    }


def sr(p: dict[str, Any], rt: Runtime, a: argparse.Namespace) -> dict[str, Any]:
    from melanoma.generators.upscale import SRTask

    u, size = p["upscale"], p["generators"]["image_size"]
    task = SRTask(u["sr"], u["factor"], torch.rand(128, 3, size * u["factor"], size * u["factor"]), 0, rt)
    rate = u["sr"]["batch_size"] * a.steps / timed(task.step, a.steps, a.warmup, rt.device)
    return {
        "factor": u["factor"],
        "hr_px": size * u["factor"],
        "batch": u["sr"]["batch_size"],
        "img_s": round(rate, 1),
        "reference": "none measured",
    }


def c2st(p: dict[str, Any], rt: Runtime, a: argparse.Namespace) -> dict[str, Any]:
    from melanoma.generators.quality import C2ST_BATCH, C2STTask

    n, size = p["synthesize"]["quality_samples"], p["generators"]["image_size"]
    x = torch.rand(2 * n, 3, size, size) * 2 - 1
    y = torch.cat([torch.zeros(n), torch.ones(n)])
    idx = np.concatenate([np.arange(n // 2), n + np.arange(n // 2)])
    task = C2STTask(x, y, idx, 0, rt)
    rate = C2ST_BATCH * a.steps / timed(task.step, a.steps, a.warmup, rt.device)
    return {"images_per_class": n, "size": size, "img_s": round(rate, 1), "reference": "none measured"}


def evaluate(p: dict[str, Any], rt: Runtime, a: argparse.Namespace) -> dict[str, Any]:
    from melanoma.classifiers.inference import probabilities, standardise
    from melanoma.classifiers.registry import build_model
    from melanoma.evaluation import gradcam

    arch, size = "ResNet", p["datasets"]["image_size"]
    built = build_model(arch, {**p["classifiers"]["models"][arch], "pretrained": False}, len(LABELS), size)
    model = rt.prepare(built.model).eval()
    GUARD.reset()
    mean = torch.tensor(built.info["normalisation"]["mean"], device=rt.device).view(1, 3, 1, 1)
    std = torch.tensor(built.info["normalisation"]["std"], device=rt.device).view(1, 3, 1, 1)
    n = p["classifiers"]["train"]["eval_batch_size"]
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=rt.device)
    sync(rt.device)
    t0 = time.perf_counter()
    probs = probabilities(model, x, mean, std, n, rt)
    infer = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    heat = gradcam.cams(arch, model, standardise(x[:8], mean, std), [1] * 8)
    cam_s = time.perf_counter() - t0
    assert probs.shape == (n,) and heat.shape == (8, size, size) and np.isfinite(heat).all()
    return {
        "arch": arch,
        "model": built.info["model"],
        "batch": n,
        "infer_img_s": round(infer, 1),
        "gradcam_8_images_s": round(cam_s, 3),
    }


def ddp(a: argparse.Namespace) -> dict[str, Any]:
    """Relaunch this script as 2 torchrun workers training the DDPM step; their record comes back on stdout."""
    env = dict(os.environ)
    gpus = torch.cuda.device_count() if a.device == "cuda" else 0
    if gpus < 2:
        env["CUDA_VISIBLE_DEVICES"] = ""  # one GPU cannot host two NCCL ranks: exercise DDP with gloo on the CPU
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        __file__,
        "--ddp-worker",
        "--steps",
        "2",
        "--warmup",
        "1",
    ] + (["--tiny"] if a.tiny or gpus < 2 else [])
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise AssertionError(f"2-process torchrun failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    record = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
    return {**record, "gpus": gpus, "seconds": round(time.perf_counter() - t0, 1)}


def ddp_worker(a: argparse.Namespace) -> None:
    from melanoma.engine import runtime

    rt = runtime()
    p = study_params(a.tiny)
    task = ddpm_task(p, rt)
    task.distribute()
    with GUARD:
        rate = p["generators"]["ddpm"]["batch_size"] * a.steps / timed(task.step, a.steps, a.warmup, rt.device)
    GUARD.check(rt.device, "ddp")
    digest = torch.stack([t.double().sum() for t in task.unet.parameters()]).sum().reshape(1)
    sums = [float(t) for t in rt.gather(digest)]
    assert len(set(sums)) == 1, f"ranks disagree after DDP steps: {sums}"
    if rt.main:
        backend = torch.distributed.get_backend()
        print(
            json.dumps(
                {
                    "part": "ddp",
                    "processes": rt.world,
                    "backend": backend,
                    "device": rt.device.type,
                    "img_s": round(rate, 1),
                    "ranks_identical": True,
                    "device_ok": True,
                }
            ),
            flush=True,
        )
    torch.distributed.destroy_process_group()


def positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {n})")
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cuda (default: the first GPU) or cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (the CPU CI run)")
    ap.add_argument("--steps", type=positive, default=20, help="timed steps per part")
    ap.add_argument("--warmup", type=positive, default=3, help="untimed steps first (cuDNN autotuning, allocator)")
    ap.add_argument("--sample-batch", type=positive, default=256, help="images per sampler (ddpm: a quarter)")
    ap.add_argument("--archs", nargs="*", default=list(ARCHS), choices=ARCHS)
    ap.add_argument(
        "--out",
        type=Path,
        default=Path("gpu_check.jsonl"),
        help="the JSON lines; written as <out>.partial while running, renamed when every part passed",
    )
    ap.add_argument("--reference", type=Path, default=ROOT / "melanoma/reference")
    ap.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.ddp_worker:
        return ddp_worker(a)
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here; run with --device cpu --tiny for the CPU check")
    if a.tiny:
        a.steps, a.warmup, a.sample_batch = min(a.steps, 2), min(a.warmup, 1), min(a.sample_batch, 8)
    device = torch.device(a.device)
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    rt = Runtime(device, amp=torch.bfloat16 if bf16 else None)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    p, refs, keep = study_params(a.tiny), reference(a.reference), {}
    records: list[dict[str, Any]] = []
    partial = a.out.with_name(a.out.name + ".partial")
    if not a.out.parent.is_dir():
        raise SystemExit(f"gpu_check: the folder of --out ({a.out.parent}) does not exist")
    with open(partial, "w") as fh:  # a failed run leaves its lines here and an earlier --out file untouched

        def emit(record: dict[str, Any]) -> None:
            records.append(record)
            line = json.dumps(record)
            print(line, flush=True)
            fh.write(line + "\n")
            fh.flush()

        emit(
            {
                "part": "env",
                "torch": torch.__version__,
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "amp": str(rt.amp),
                "tiny": a.tiny,
                "steps": a.steps,
                "reference_records": len(refs),
            }
        )
        for arch in a.archs:
            emit(part(f"classifier@{arch}", rt, lambda arch=arch: classifier(arch, p, rt, a, refs)))
        emit(part("dcgan", rt, lambda: dcgan(p, rt, a, refs)))
        emit(part("ddpm", rt, lambda: ddpm(p, rt, a, refs, keep)))
        for sampler in SAMPLERS:
            emit(part(f"sample@{sampler}", rt, lambda sampler=sampler: sample(sampler, p, rt, a, refs, keep)))
        emit(part("sr", rt, lambda: sr(p, rt, a)))
        emit(part("c2st", rt, lambda: c2st(p, rt, a)))
        emit(part("evaluate", rt, lambda: evaluate(p, rt, a)))
        emit(ddp(a))
    os.replace(partial, a.out)
    print(f"gpu_check: {len(records)} records -> {a.out}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""The GPU check: does every stage keep the GPU busy at the study's shapes, and where does each lose time?

    python bench/gpu_check.py --out gpu_check.jsonl          # on a GPU machine: the stages (about 8 minutes on an H100)
    python bench/gpu_check.py --section steps --out s.jsonl  # ... the isolated steps, samplers and DDP (5-8 minutes)
    python bench/gpu_check.py --device cpu --tiny            # both sections' code paths at tiny sizes (CI)

Section `stages` (default): a bounded real run of the pipeline through DVC, in a fresh clone of this checkout's
HEAD: the study profile's shapes (224 px study members, the 64 px DDPM and DCGAN, SR x4, evaluate at its batch,
synthesis with its quality metrics, export, report) and its settings (`compile` as the profile sets it, bf16,
checkpoints), with small budgets (a few hundred steps: validations and a checkpoint included) and no downloads
(demo images at study size, every model built from scratch). While it runs, NVML is sampled every 0.1 s. Per
stage it reports wall time, the GPU's busy fraction (mean NVML utilisation over the stage's wall time; on the
CPU: the share of the stage's wall time inside training steps, from the engine's timing line), the share inside
training steps, training images/s, the device memory it peaked at, and the ratio of its images/s to a reference
record in melanoma/reference/ matched on model, input size, precision and batch (or why none matches). A
summary line per stage kind follows.

Section `steps`: each computing step in isolation, a few steps each, under a device guard (every parameter, buffer
and input of every module call on the device): `classifier@<Arch>` (the engine's step with its GPU-resident pack vs
a pure forward/backward/optimiser step), dcgan, ddpm, sr, c2st, `sample@<sampler>`, evaluate (inference and
GradCAM) and ddp (a 2-process torchrun run of the DDPM step, checking both ranks end with identical weights).

Every record is one JSON line (also written to --out: `<out>.partial` while running, renamed when all passed).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
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


def matched(refs: Any, key: str, kind: str, tiny: bool, **want: Any) -> tuple[float | None, str]:
    """The reference value `key` of the record of `kind` whose fields equal `want` (model, input size, precision,
    batch), or (None, why none matches): a ratio is given only against the same work."""
    from melanoma.estimate import find

    if tiny:
        return None, "unmatched: tiny sizes"
    exact = find(refs, kind, **want)
    if exact and key in exact:
        return exact[key], "matched on " + ", ".join(f"{k} {v}" for k, v in want.items())
    loose = find(refs, kind, **{k: v for k, v in want.items() if k != "batch"})
    if loose:
        return None, f"unmatched: the reference ran batch {loose.get('batch')}, this part {want.get('batch')}"
    return None, "unmatched: no reference for " + ", ".join(f"{k} {v}" for k, v in want.items())


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
    mode = "bf16_cl" if rt.amp else "fp32"
    ceiling, match = matched(
        refs, "train_img_s", "classifier", a.tiny, arch=spec["model"], size=size, mode=mode, batch=batch
    )
    return {
        "model": spec["model"],
        "size": size,
        "batch": batch,
        "real_img_s": round(real, 1),
        "pure_img_s": round(pure, 1),
        "real_over_pure": round(real / pure, 3),
        "reference_train_img_s": ceiling,
        "pure_over_reference": ratio(pure, ceiling),
        "reference": match,
    }


def generator_data(n: int, size: int) -> torch.Tensor:
    return torch.rand(n, 3, size, size) * 2 - 1


def dcgan(p: dict[str, Any], rt: Runtime, a: argparse.Namespace, refs: list) -> dict[str, Any]:
    from melanoma.generators.dcgan import DCGANTask

    g = p["generators"]
    task = DCGANTask(g["dcgan"], generator_data(512, g["image_size"]), g["image_size"], 0, rt)
    batch = g["dcgan"]["batch_size"]
    rate = batch * a.steps / timed(task.step, a.steps, a.warmup, rt.device)
    mode = "bf16" if rt.amp else "fp32"
    ceiling, match = matched(refs, "train_img_s", "dcgan", a.tiny, size=g["image_size"], mode=mode, batch=batch)
    return {
        "size": g["image_size"],
        "batch": batch,
        "img_s": round(rate, 1),
        "reference_img_s": ceiling,
        "over_reference": ratio(rate, ceiling),
        "reference": match,
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
    return {
        "size": p["generators"]["image_size"],
        "batch": batch,
        "params_m": params_m,
        "img_s": round(rate, 1),
        "reference": "unmatched: the reference UNet (113.7 M params, batch 128) records no block layout",
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
    return {
        "sampler": sampler,
        "steps": steps,
        "images": n,
        "img_s": round(n / seconds, 2),
        "ms_per_image_step": round(per_step * 1e3, 4),
        "reference": "unmatched: the reference sampled a 113.7 M-parameter UNet whose block layout is not recorded",
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


# ---------------------------------------------------------------- section: stages

BOUNDED = {  # the study profile's shapes with small budgets: every stage runs, validations and a checkpoint included
    "data.source": "demo",
    "data.demo.n_benign": 600,
    "data.demo.n_malignant": 300,
    "data.demo.image_size": 256,
    "generators.dcgan.steps": 200,
    "generators.ddpm.steps": 200,
    "generators.ddpm.warmup_steps": 20,
    "upscale.sr.steps": 200,
    "classifiers.datasets": ["Original", "DDPM_Upscaled"],
    "classifiers.seeds": [0],
    "classifiers.train.steps": 300,  # three validations at the study's eval_every (100)
    "classifiers.train.warmup_steps": 30,
    "classifiers.train.patience": 100,
}
TIMING = re.compile(
    r": ([\d.]+) s for (\d+) steps, ([\d.]+)% in training steps; outside them: validation and logging ([\d.]+) s, "
    r"checkpoints ([\d.]+) s \((\d+) written\), resume ([\d.]+) s"
)  # melanoma.engine.Timing.line


def set_dotted(p: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for k in parents:
        p = p[k]
    p[leaf] = value


def bounded_params(tiny: bool, device: str, archs: list[str]) -> dict[str, Any]:
    """The params of the bounded run: the study profile with BOUNDED budgets and no downloads (models built from
    scratch); --tiny: the test suite's tiny params (demo shapes) with one seed."""
    if tiny:
        from tests.tiny import tiny_params

        p = tiny_params(**{"classifiers.seeds": [0]})
    else:
        from melanoma.profile import profile_params

        p = profile_params("study", ROOT / "profiles")
        for key, value in BOUNDED.items():
            set_dotted(p, key, value)
        for spec in p["classifiers"]["models"].values():
            spec["pretrained"] = False
        p["generators"]["ddpm"]["pretrained"] = ""
    p["device"] = device
    p["classifiers"]["archs"] = [x for x in p["classifiers"]["archs"] if x in archs]
    return p


def make_workspace(work: Path, p: dict[str, Any]) -> None:
    """This checkout's tracked files (as they are now) in `work`, a fresh git repo with params `p` and no dvc.lock."""
    import shutil

    import yaml

    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (ROOT / f).is_file():
            (work / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, work / f)
    (work / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    (work / "dvc.lock").unlink(missing_ok=True)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "gpu_check workspace"]):
        subprocess.run(cmd, cwd=work, check=True, capture_output=True)


class Sampler:
    """NVML's GPU utilisation (%) and memory used (bytes) every `interval` s on a background thread; on the CPU
    it records nothing. nvidia-ml-py (pynvml) is installed with the pinned requirements."""

    def __init__(self, device: str, interval: float = 0.1) -> None:
        self.samples: list[tuple[float, float, float]] = []
        self.interval, self.stop, self.handle = interval, threading.Event(), None
        if device == "cuda":
            import pynvml

            pynvml.nvmlInit()
            index = int((os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0])
            self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            if self.handle is not None:
                util = self.nvml.nvmlDeviceGetUtilizationRates(self.handle).gpu
                used = self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used
                self.samples.append((time.perf_counter(), float(util), float(used)))

    def window(self, start: float, end: float) -> list[tuple[float, float, float]]:
        return [x for x in self.samples if start <= x[0] <= end]


def run_pipeline(work: Path, sampler: Sampler) -> list[dict[str, Any]]:
    """`dvc repro` in `work`, echoing its output; per stage: name, start, end (perf_counter) and its output lines."""
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(work),
        "DVC_NO_ANALYTICS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    stages: list[dict[str, Any]] = []
    p = subprocess.Popen(
        ["dvc", "repro"], cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert p.stdout is not None
    for line in p.stdout:
        print("  | " + line, end="", file=sys.stderr, flush=True)
        m = re.match(r"Running stage '([^']+)'", line)
        now = time.perf_counter()
        if m:
            if stages:
                stages[-1]["end"] = now
            stages.append({"stage": m.group(1), "start": now, "end": None, "lines": []})
        elif stages:
            stages[-1]["lines"].append(line.rstrip("\n"))
    if p.wait() != 0:
        raise AssertionError(f"dvc repro failed ({p.returncode}) in {work}; its output is above")
    if stages:
        stages[-1]["end"] = time.perf_counter()
    return stages


def stage_batch(stage: str, p: dict[str, Any]) -> int | None:
    """Images per training step of a training stage (None: the stage does not train through the engine)."""
    kind, _, item = stage.partition("@")
    if kind == "train_classifier":
        return p["classifiers"]["train"]["batch_size"]
    if kind == "train_generator":
        return p["generators"][item.split("-")[0]]["batch_size"]
    if kind == "train_upscaler":
        return p["upscale"]["sr"]["batch_size"]
    return None


def stage_reference(stage: str, p: dict[str, Any], refs: Any, rt: Runtime) -> tuple[dict[str, Any] | None, str]:
    """The reference record matched on model, input size, precision and batch, or (None, why none matches)."""
    from melanoma.estimate import find

    kind, _, item = stage.partition("@")
    if rt.device.type != "cuda":
        return None, "unmatched: the references are GPU rates"
    batch = stage_batch(stage, p)
    if kind == "train_classifier":
        arch = item.split("-")[0]
        want = {
            "arch": p["classifiers"]["models"][arch]["model"],
            "size": p["datasets"]["image_size"],
            "mode": "bf16_cl" if rt.amp else "fp32",
        }
        kind_ = "classifier"
    elif kind == "train_generator" and item.startswith("dcgan"):
        kind_, want = "dcgan", {"size": p["generators"]["image_size"], "mode": "bf16" if rt.amp else "fp32"}
    elif kind == "train_generator":
        return None, "unmatched: the reference UNet (113.7 M params, batch 128) records no block layout"
    else:
        return None, "unmatched: no reference measures this stage"
    exact = find(refs, kind_, **want, batch=batch)
    if exact:
        return exact, "matched on " + ", ".join(f"{k} {v}" for k, v in {**want, "batch": batch}.items())
    loose = find(refs, kind_, **want)
    if loose:
        return None, f"unmatched: the reference ran batch {loose.get('batch')}, this stage {batch}"
    return None, "unmatched: no reference for " + ", ".join(f"{k} {v}" for k, v in want.items())


def stage_record(s: dict[str, Any], p: dict[str, Any], refs: Any, rt: Runtime, sampler: Sampler, base: float) -> dict:
    """One stage's figures: wall, busy fraction, share inside steps, img/s, peak memory, reference ratio."""
    wall = s["end"] - s["start"]
    timings = [m for line in s["lines"] if (m := TIMING.search(line))]
    steps_s = sum(float(m.group(1)) * float(m.group(3)) / 100 for m in timings)
    steps_run = sum(int(m.group(2)) for m in timings)
    batch = stage_batch(s["stage"], p)
    img_s = steps_run * batch / steps_s if timings and batch and steps_s > 0 else None
    inside = steps_s / wall if timings and wall > 0 else None
    window = sampler.window(s["start"], s["end"])
    busy = sum(u for _, u, _ in window) / len(window) / 100 if window else None
    ref, match = stage_reference(s["stage"], p, refs, rt)
    ceiling = ref.get("train_img_s") if ref else None
    return {
        "part": "stage",
        "stage": s["stage"],
        "seconds": round(wall, 1),
        "busy": round(busy if rt.device.type == "cuda" else inside, 3) if (busy or inside) is not None else None,
        "busy_source": "nvml" if rt.device.type == "cuda" else "share of wall time inside training steps",
        "inside_steps": None if inside is None else round(inside, 3),
        "fits": len(timings),
        "train_img_s": None if img_s is None else round(img_s, 1),
        "peak_gib": round((max(m for _, _, m in window) - base) / 2**30, 2) if window else None,
        "reference_train_img_s": ceiling,
        "over_reference": ratio(img_s, ceiling) if img_s else None,
        "reference": match,
    }


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per stage kind (train_classifier@ResNet-*, evaluate@*, ...): total wall time, wall-weighted busy fraction."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        kind, _, item = r["stage"].partition("@")
        key = f"{kind}@{item.split('-')[0]}-*" if kind in ("train_classifier", "train_generator") else kind
        kinds.setdefault(key, []).append(r)
    out = []
    for key, rows in kinds.items():
        wall = sum(r["seconds"] for r in rows)
        busy = [r for r in rows if r["busy"] is not None]
        out.append(
            {
                "part": "stages",
                "kind": key,
                "stages": len(rows),
                "seconds": round(wall, 1),
                "busy": round(sum(r["busy"] * r["seconds"] for r in busy) / sum(r["seconds"] for r in busy), 3)
                if busy and sum(r["seconds"] for r in busy) > 0
                else None,
                "lost_seconds": round(sum(r["seconds"] * (1 - r["busy"]) for r in busy), 1),
            }
        )
    return out


def stages_section(a: argparse.Namespace, rt: Runtime, emit: Callable[[dict[str, Any]], None]) -> None:
    """Run the bounded pipeline under the sampler; emit one record per stage, then one per stage kind."""
    import tempfile

    from melanoma.estimate import load_reference

    p = bounded_params(a.tiny, rt.device.type, a.archs)
    work = a.workdir or Path(tempfile.mkdtemp(prefix="gpu-check-")) / "repo"
    work.mkdir(parents=True)
    make_workspace(work, p)
    refs = load_reference(a.reference)
    sampler = Sampler(rt.device.type)
    base = sampler.nvml.nvmlDeviceGetMemoryInfo(sampler.handle).used if sampler.handle is not None else 0.0
    sampler.thread.start()
    try:
        stages = run_pipeline(work, sampler)
    finally:
        sampler.stop.set()
    records = [stage_record(s, p, refs, rt, sampler, base) for s in stages]
    kinds = summarise(records)
    for r in records + kinds:
        emit(r)
    what = "GPU busy (NVML)" if rt.device.type == "cuda" else "inside training steps"
    print(f"\n{'stage kind':<28}{'stages':>7}{'seconds':>9}  {what}", file=sys.stderr)
    for k in kinds:
        busy = "-" if k["busy"] is None else f"{k['busy']:.0%} ({k['lost_seconds']:.0f} s not)"
        print(f"{k['kind']:<28}{k['stages']:>7}{k['seconds']:>9.1f}  {busy}", file=sys.stderr)


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
    ap.add_argument(
        "--section", choices=("all", "stages", "steps"), default="all", help="what to run (default: stages, then steps)"
    )
    ap.add_argument("--workdir", type=Path, help="the bounded run's workspace (must not exist; default: a temp folder)")
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
    from melanoma.estimate import load_reference

    p, refs, keep = study_params(a.tiny), load_reference(a.reference), {}
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
                "reference_records": len(refs.records),
            }
        )
        if a.section in ("all", "stages"):
            stages_section(a, rt, emit)
        if a.section == "stages":
            os.replace(partial, a.out)
            return
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

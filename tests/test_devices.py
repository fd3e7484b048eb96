"""Every stage's compute function runs on the device it is given, and nothing picks a device of its own.

`melanoma.engine.runtime()` is the one place a device is chosen (a source scan checks that no other module asks
torch for CUDA, except melanoma.device, which only tests whether CUDA is usable). The tiny pipeline then runs
in-process with an explicit CPU Runtime while `runtime()` raises, so a
compute function that fell back to choosing its own device fails; a global forward pre-hook records the device of
every parameter, buffer and input tensor of every module call, so a model or batch left on another device is
caught too. The second run does the same under CPU bf16 autocast, the code path CUDA bf16 takes.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import melanoma.engine
from melanoma.engine import Runtime
from tests.conftest import ROOT
from tests.tiny import make_project, tiny_params

CHOOSES_A_DEVICE = re.compile(r"torch\.cuda\.is_available|\.cuda\(|device=[\"']cuda|torch\.device\([\"']cuda")


def test_only_the_engine_chooses_a_device():
    offenders = [
        f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
        for p in sorted((ROOT / "melanoma").rglob("*.py"))
        if p.name not in ("engine.py", "device.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if CHOOSES_A_DEVICE.search(line)
    ]
    assert not offenders, "device chosen outside melanoma.engine.runtime():\n" + "\n".join(offenders)
    assert CHOOSES_A_DEVICE.search((ROOT / "melanoma/engine.py").read_text())  # the pattern does match the engine


def _devices(module: torch.nn.Module, args: tuple) -> set[torch.device]:
    out = {t.device for t in module.parameters(recurse=False)} | {t.device for t in module.buffers(recurse=False)}
    return out | {a.device for a in args if isinstance(a, torch.Tensor)}


def _run_everything(folder: Path, params: dict, rt: Runtime) -> None:
    from melanoma.classifiers.train import train_classifier
    from melanoma.data.datasets import build_dataset, decode_real
    from melanoma.evaluation.evaluate import evaluate_cell
    from melanoma.generators.synthesize import synthesize
    from melanoma.generators.train import train_generator
    from melanoma.generators.upscale import train_upscaler, upscale
    from melanoma.serving.package import export_cell

    quiet = lambda *_: None  # noqa: E731
    splits, raw, ck = folder / "data/splits", folder / "data/raw", folder / "models/.checkpoints"
    for gen in ("dcgan", "ddpm"):
        for label in ("benign", "malignant"):
            train_generator(
                gen,
                label,
                params,
                splits,
                raw,
                folder / f"models/generators/{gen}/{gen}_{label}",
                ck / f"{gen}_{label}",
                rt,
                log=quiet,
            )
        synthesize(
            gen,
            params,
            splits,
            raw,
            folder / "models/generators",
            folder / f"data/synthetic/{gen}",
            folder / f"results/generators/{gen}",
            rt,
            log=quiet,
        )
    train_upscaler(
        params,
        splits,
        raw,
        folder / "models/upscaler",
        folder / "results/upscaler/metrics.json",
        ck / "upscaler",
        rt,
        log=quiet,
    )
    upscale(
        "dcgan",
        params,
        folder / "data/synthetic/dcgan",
        folder / "models/upscaler",
        folder / "data/synthetic/dcgan_upscaled",
        folder / "results/upscaler/dcgan.png",
        rt,
    )
    decode_real(splits, raw, params["datasets"]["image_size"], folder / "data/real")
    build_dataset("DCGAN", params, folder / "data/real", folder / "data/synthetic", folder / "data/datasets/DCGAN")
    cell, data = folder / "models/classifiers/ResNet/ResNet_DCGAN", folder / "data/datasets/DCGAN"
    train_classifier("ResNet", "DCGAN", params, data, cell, ck / "classifiers/ResNet_DCGAN", rt, log=quiet)
    evaluate_cell("ResNet", "DCGAN", params, cell, data, folder / "results/evaluation/ResNet/ResNet_DCGAN", rt)
    package = folder / "models/export/ResNet/ResNet_DCGAN"
    package.mkdir(parents=True)
    export_cell(
        cell,
        folder / "results/evaluation/ResNet/ResNet_DCGAN",
        data,
        package,
        17,
        {"source": "demo", "max_side": 1024},
        rt,
    )


@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["float32", "bf16-autocast"])
def test_every_stage_computes_on_the_device_it_is_given(amp, tmp_path, monkeypatch):
    params = tiny_params()
    folder = make_project(tmp_path / "p", params)
    monkeypatch.chdir(folder)

    def no_default(*_a, **_k):
        raise AssertionError("a compute function called runtime() although it was given a Runtime")

    monkeypatch.setattr(melanoma.engine, "runtime", no_default)
    for module in ("melanoma.generators.train", "melanoma.generators.upscale"):  # imported by name there
        monkeypatch.setattr(f"{module}.runtime", no_default)
    seen: Counter = Counter()
    calls: Counter = Counter()

    def hook(module: torch.nn.Module, args: tuple) -> None:
        seen.update(str(d) for d in _devices(module, args))
        calls[type(module).__name__] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        _run_everything(folder, params, Runtime(torch.device("cpu"), amp=amp))
    finally:
        handle.remove()
    assert set(seen) == {"cpu"}, f"tensors on other devices: {dict(seen)}"
    # every model family the stages run was seen by the hook (so the check above is not vacuous)
    for name in ("Generator", "Discriminator", "UNet2DModel", "_C2STNet", "ESPCN", "ResNet", "Served"):
        assert calls[name] > 0, f"{name} never ran: {sorted(calls)}"
    # nothing non-finite came out of the bf16 paths, and both classes were synthesised
    for gen in ("dcgan", "ddpm"):
        q = json.loads((folder / f"results/generators/{gen}/quality.json").read_text())
        assert q["benign"]["generated"] > 0 and q["malignant"]["generated"] > 0
        assert 0.0 <= q["malignant"]["c2st_auc"] <= 1.0
    m = json.loads((folder / "results/evaluation/ResNet/ResNet_DCGAN/metrics.json").read_text())
    assert np.isfinite(m["test"]["auroc"]) and 0 <= m["threshold"] <= 1
    # a finished run leaves no checkpoint behind
    assert not (folder / "models/.checkpoints").exists() or not any((folder / "models/.checkpoints").rglob("*.pth"))


# ---------------------------------------------------------------- params.yaml `device`: refuse what cannot run


def _no_cuda(monkeypatch, driver: int | None, built: str | None = "13.0") -> None:
    import melanoma.device

    monkeypatch.setattr(torch.version, "cuda", built)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(melanoma.device, "_driver_cuda_version", lambda: driver)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.mark.parametrize(
    "driver, built, needles",
    [
        (
            12040,
            "13.0",
            [
                "driver supports CUDA 12.4",
                "built for CUDA 13.0, which needs driver >= 580",
                "--index-url https://download.pytorch.org/whl/cu124",
            ],
        ),
        (None, "13.0", ["no NVIDIA driver found (libcuda.so.1 is missing)"]),
        (13000, None, ["is a CPU-only build; install a CUDA build"]),
        (13000, "13.0", ["torch sees no usable GPU although the driver supports CUDA 13.0"]),
    ],
)
def test_why_cuda_is_not_usable_is_said_with_the_fix(monkeypatch, driver, built, needles):
    from melanoma.device import DeviceUnavailable, cuda_problem, require_device

    _no_cuda(monkeypatch, driver, built)
    problem = cuda_problem()
    for needle in needles:
        assert needle in problem, problem
    with pytest.raises(DeviceUnavailable, match="set device: cpu"):
        require_device("cuda")
    require_device("auto")  # auto and cpu never refuse
    require_device("cpu")


def test_hidden_gpus_are_named(monkeypatch):
    from melanoma.device import cuda_problem

    _no_cuda(monkeypatch, 13000)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert "CUDA_VISIBLE_DEVICES is set but empty" in cuda_problem()


def test_device_cpu_is_the_cpu_and_cuda_is_refused_without_a_gpu(monkeypatch):
    from melanoma.device import DeviceUnavailable
    from melanoma.engine import runtime

    assert runtime(device="cpu").device == torch.device("cpu")
    _no_cuda(monkeypatch, None)
    assert runtime(device="auto").device == torch.device("cpu")
    with pytest.raises(DeviceUnavailable):
        runtime(device="cuda")


@pytest.mark.parametrize("stage", [["fetch.py"], ["train_classifier.py", "ResNet", "Original"]])
def test_a_gpu_profile_stops_at_its_first_stage_without_cuda(tmp_path, stage):
    """CUDA made unavailable (GPUs hidden): the stage exits 1 with one line, before any work or output."""
    import os
    import subprocess
    import sys
    import time

    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["device"] = "cuda"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    t0 = time.perf_counter()
    p = subprocess.run(
        [sys.executable, str(ROOT / "stages" / stage[0]), *stage[1:]],
        cwd=tmp_path,
        text=True,
        capture_output=True,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
        timeout=300,
    )
    name = stage[0].removesuffix(".py")
    assert p.returncode == 1 and p.stdout == "", p.stdout + p.stderr
    assert p.stderr.count("\n") == 1 and p.stderr.startswith(
        f"{name}: error: params.yaml device: cuda, but CUDA is not usable here: "
    ), p.stderr
    assert "(dvc exp run -S device=cpu)" in p.stderr
    assert sorted(x.name for x in tmp_path.iterdir()) == ["params.yaml"]  # nothing started
    print(f"{name} refused in {time.perf_counter() - t0:.1f} s")


def test_error_messages_quote_library_errors_without_cutting_a_word():
    from melanoma.errors import first_line

    text = "Cannot reach https://huggingface.co: " + "please check your connection and try again " * 6
    cut = first_line(ValueError(text + "\nsecond line"), 120)
    assert len(cut) <= 120 and cut.endswith("...") and "second" not in cut
    assert text.startswith(cut.removesuffix("...")) and text[len(cut) - 3] == " "  # ends on a whole word
    assert first_line(ValueError("\n  short  \n")) == "short" and first_line(ValueError(""), empty="x") == "x"

"""Every stage's compute function runs on the device it is given, and nothing picks a device of its own.

`melanoma.engine.runtime()` is the one place a device is chosen (a source scan checks that no other module asks
torch for CUDA). The tiny pipeline then runs in-process with an explicit CPU Runtime while `runtime()` raises, so a
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
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}"
                 for p in sorted((ROOT / "melanoma").rglob("*.py")) if p.name != "engine.py"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if CHOOSES_A_DEVICE.search(line)]
    assert not offenders, "device chosen outside melanoma.engine.runtime():\n" + "\n".join(offenders)
    assert CHOOSES_A_DEVICE.search((ROOT / "melanoma/engine.py").read_text())  # the pattern does match the engine


def _devices(module: torch.nn.Module, args: tuple) -> set[torch.device]:
    out = {t.device for t in module.parameters(recurse=False)} | {t.device for t in module.buffers(recurse=False)}
    return out | {a.device for a in args if isinstance(a, torch.Tensor)}


def _run_everything(folder: Path, params: dict, rt: Runtime) -> None:
    from melanoma.classifiers.train import train_classifier
    from melanoma.data.datasets import build_dataset, decode_real
    from melanoma.evaluation.evaluate import evaluate_cell
    from melanoma.generators import train_generator
    from melanoma.generators.synthesize import synthesize
    from melanoma.generators.upscale import train_upscaler, upscale
    from melanoma.serving.package import export_cell

    quiet = lambda *_: None  # noqa: E731
    splits, raw, ck = folder / "data/splits", folder / "data/raw", folder / "models/.checkpoints"
    for gen in ("dcgan", "ddpm"):
        for label in ("benign", "malignant"):
            train_generator(gen, label, params, splits, raw, folder / f"models/generators/{gen}/{gen}_{label}",
                            ck / f"{gen}_{label}", rt, log=quiet)
        synthesize(gen, params, splits, raw, folder / "models/generators", folder / f"data/synthetic/{gen}",
                   folder / f"results/generators/{gen}", rt, log=quiet)
    train_upscaler(params, splits, raw, folder / "models/upscaler", folder / "results/upscaler/metrics.json",
                   ck / "upscaler", rt, log=quiet)
    upscale("dcgan", params, folder / "data/synthetic/dcgan", folder / "models/upscaler",
            folder / "data/synthetic/dcgan_upscaled", folder / "results/upscaler/dcgan.png", rt)
    decode_real(splits, raw, params["datasets"]["image_size"], folder / "data/real")
    build_dataset("DCGAN", params, folder / "data/real", folder / "data/synthetic", folder / "data/datasets/DCGAN")
    cell, data = folder / "models/classifiers/ResNet/ResNet_DCGAN", folder / "data/datasets/DCGAN"
    train_classifier("ResNet", "DCGAN", params, data, cell, ck / "classifiers/ResNet_DCGAN", rt, log=quiet)
    evaluate_cell("ResNet", "DCGAN", params, cell, data, folder / "results/evaluation/ResNet/ResNet_DCGAN", rt)
    package = folder / "models/export/ResNet/ResNet_DCGAN"
    package.mkdir(parents=True)
    export_cell(cell, folder / "results/evaluation/ResNet/ResNet_DCGAN", data, package, 17,
                {"source": "demo", "max_side": 1024}, rt)


@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["float32", "bf16-autocast"])
def test_every_stage_computes_on_the_device_it_is_given(amp, tmp_path, monkeypatch):
    params = tiny_params()
    folder = make_project(tmp_path / "p", params)
    monkeypatch.chdir(folder)
    def no_default(*_a, **_k):
        raise AssertionError("a compute function called runtime() although it was given a Runtime")

    monkeypatch.setattr(melanoma.engine, "runtime", no_default)
    for module in ("melanoma.generators", "melanoma.generators.upscale"):  # imported by name there
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

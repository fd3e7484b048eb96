"""Generators: architectures, training on the train split only, resume, divergence, synthesis and quality."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from melanoma.engine import CheckpointError, Diverged, Runtime, TrainingPlan, fit, load_checkpoint, save_checkpoint
from melanoma.generators import dcgan
from melanoma.generators.data import GeneratorDataError
from melanoma.generators.loaded import NonFiniteSamples, load_generator
from melanoma.generators.quality import c2st_auc, frechet_distance, kernel_inception_distance, nearest_ratio, quality
from melanoma.generators.synthesize import synthesize
from melanoma.generators.train import train_generator
from melanoma.io import read_csv
from melanoma.params import ParamsError, validate
from tests.conftest import ROOT
from tests.tiny import make_project, run_stage, tiny_params


def train(project: Path, gen: str, label: str, params: dict) -> dict:
    out = project / "models/generators" / gen / f"{gen}_{label}"
    return train_generator(
        gen,
        label,
        params,
        project / "data/splits",
        project / "data/raw",
        out,
        project / "models/.checkpoints" / out.name,
        log=lambda *_: None,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A tiny project with all four generators trained."""
    p = tiny_params()
    folder = make_project(tmp_path_factory.mktemp("gen"), p)
    for gen in ("dcgan", "ddpm"):
        for label in ("benign", "malignant"):
            train(folder, gen, label, p)
    return folder


# ------------------------------------------------------------------ architectures


@pytest.mark.parametrize("size", [16, 32, 64, 128])
def test_dcgan_shapes_follow_resolution(size):
    g, d = dcgan.Generator(100, 8, 3, size), dcgan.Discriminator(8, 3, size)
    x = g(torch.randn(2, 100))
    assert x.shape == (2, 3, size, size) and x.abs().max() <= 1
    assert d(x).shape == (2,)


def test_dcgan_seed_signature_and_bad_size():
    g = dcgan.Generator(nz=100, ngf=64, nc=3)  # the seed study's call
    assert g(torch.randn(1, 100, 1, 1)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="power of two"):
        dcgan.Generator(image_size=48)


def test_diff_augment_is_differentiable_and_changes_images():
    x = (torch.rand(4, 3, 16, 16) * 2 - 1).requires_grad_()
    y = dcgan.diff_augment(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and not torch.allclose(x, y)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ------------------------------------------------------------------ training and loading


def test_generator_folders_and_loading(project):
    for gen in ("dcgan", "ddpm"):
        folder = project / f"models/generators/{gen}/{gen}_malignant"
        cfg = json.loads((folder / "config.json").read_text())
        assert cfg["generator"] == gen and cfg["class"] == "malignant" and cfg["training"]["steps"] > 0
        assert cfg["n_train_images"] == len(
            [r for r in read_csv(project / "data/splits/train.csv") if r["label"] == "malignant"]
        )
        assert (folder / "samples.png").is_file()
        assert (folder / "curves" / "metrics.json").is_file()
        g = load_generator(folder)
        a, b = g.sample(5, seed=3), g.sample(5, seed=3)
        assert a.shape == (5, 16, 16, 3) and a.dtype == np.uint8
        assert np.array_equal(a, b)  # same seed, same images
        assert not np.array_equal(a, g.sample(5, seed=4))


def test_strict_loading_refuses_a_wrong_state_dict(project, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "g"
    shutil.copytree(project / "models/generators/dcgan/dcgan_benign", folder)
    state = load_file(str(folder / "generator.safetensors"))
    state.pop("main.0.weight")
    save_file(state, str(folder / "generator.safetensors"))
    with pytest.raises(RuntimeError, match="Missing key"):
        load_generator(folder)


def test_generators_read_only_the_train_split(project, tmp_path):
    """Poison every val/test image: the trained weights must not change by one bit."""
    import shutil

    from PIL import Image

    poisoned = tmp_path / "poisoned"
    shutil.copytree(project / "data", poisoned / "data")
    shutil.copy(project / "params.yaml", poisoned / "params.yaml")
    for s in ("val", "test"):
        for r in read_csv(poisoned / f"data/splits/{s}.csv"):
            Image.new("RGB", (32, 32), (255, 0, 255)).save(poisoned / "data/raw" / r["path"])
    p = tiny_params()
    train(poisoned, "dcgan", "benign", p)
    ref = project / "models/generators/dcgan/dcgan_benign/generator.safetensors"
    assert (poisoned / "models/generators/dcgan/dcgan_benign/generator.safetensors").read_bytes() == ref.read_bytes()


def test_no_images_of_a_class_is_a_clear_error(project, tmp_path):
    import shutil

    shutil.copytree(project / "data", tmp_path / "data")
    rows = read_csv(tmp_path / "data/splits/train.csv")
    from melanoma.io import write_csv

    write_csv(tmp_path / "data/splits/train.csv", [r for r in rows if r["label"] == "benign"], list(rows[0]))
    with pytest.raises(GeneratorDataError, match="has no malignant images"):
        train(tmp_path, "dcgan", "malignant", tiny_params())


def _dcgan(cfg: dict) -> dcgan.DCGANTask:
    return dcgan.DCGANTask({**cfg, "batch_size": 4}, torch.rand(8, 3, 16, 16) * 2 - 1, 16, 0, Runtime())


def test_nan_divergence_stops_with_a_message_before_a_checkpoint(tmp_path):
    task = _dcgan(tiny_params()["generators"]["dcgan"])
    with torch.no_grad():
        next(task.G.parameters()).fill_(float("nan"))
    with pytest.raises(Diverged, match=r"dcgan: loss_d became nan.* by step 2; lower generators.dcgan.lr"):
        fit(
            task,
            TrainingPlan(steps=3, seed=0, period=2, config={"a": 1}, folder=tmp_path / "ck", checkpoint_minutes=0),
            log=lambda *_: None,
        )
    assert not list((tmp_path / "ck").glob("checkpoint_*"))  # the NaN period was never saved


def test_nan_generator_never_reaches_a_dataset(project, tmp_path):
    g = load_generator(project / "models/generators/dcgan/dcgan_benign")
    with torch.no_grad():
        next(g.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteSamples, match="NaN/Inf"):
        g.sample(4)


def test_unknown_sampler_is_a_schema_error():
    p = tiny_params()
    p["generators"]["ddpm"]["sampler"] = "euler"
    with pytest.raises(ParamsError, match="generators.ddpm.sampler must be one of ddpm, ddim, dpmsolver"):
        validate(p)


def test_corrupt_checkpoint_and_failed_write(tmp_path, monkeypatch):
    bad = tmp_path / "checkpoint_step_100.pth"
    bad.write_bytes(b"\x80\x04garbage")
    with pytest.raises(CheckpointError, match=re.escape(str(bad))):
        load_checkpoint(bad)
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"step": 1, "w": torch.ones(2)})

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device; the previous one is kept"):
        save_checkpoint(good, {"step": 2})
    monkeypatch.undo()
    assert load_checkpoint(good)["step"] == 1


def test_killed_training_resumes_from_checkpoint_and_matches(tmp_path):
    """SIGKILL mid-training; the rerun continues from the saved step and ends with the same weights."""
    p = tiny_params(**{"generators.dcgan.steps": 300, "checkpoint_minutes": 0})
    a, b = make_project(tmp_path / "a", p), make_project(tmp_path / "b", p)
    cmd = [sys.executable, str(ROOT / "stages/train_generator.py"), "dcgan", "benign"]
    proc = subprocess.Popen(cmd, cwd=a, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ck = a / "models/.checkpoints/dcgan_benign"

    def saved_step() -> int:  # keep: 1, so at most one file (briefly none while it rotates)
        return max((int(f.stem.rsplit("_", 1)[1]) for f in ck.glob("checkpoint_step_*.pth")), default=0)

    deadline = time.time() + 120
    while saved_step() < 40 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = saved_step()
    assert 0 < saved < 300, "the kill came too late to test resuming"
    assert not (a / "models/generators/dcgan/dcgan_benign").exists()  # nothing half-written
    rerun = run_stage(a, "train_generator.py", "dcgan", "benign")
    assert "resuming from checkpoint" in rerun.stdout + rerun.stderr
    assert f"after step {saved}" in rerun.stdout + rerun.stderr
    cfg = json.loads((a / "models/generators/dcgan/dcgan_benign/config.json").read_text())
    assert cfg["training"]["resumed_from"] == saved
    assert not ck.exists()  # the finished run deleted its checkpoints
    run_stage(b, "train_generator.py", "dcgan", "benign")  # uninterrupted, same seed
    wa = (a / "models/generators/dcgan/dcgan_benign/generator.safetensors").read_bytes()
    wb = (b / "models/generators/dcgan/dcgan_benign/generator.safetensors").read_bytes()
    assert wa == wb


def test_config_change_starts_fresh(tmp_path):
    p = tiny_params()
    folder = make_project(tmp_path, p)
    ck = folder / "models/.checkpoints/dcgan_malignant"
    ck.mkdir(parents=True)
    save_checkpoint(ck / "checkpoint_step_4.pth", {"config_hash": "0123456789abcdef", "step": 4})
    logs = []
    out = folder / "models/generators/dcgan/dcgan_malignant"
    r = train_generator("dcgan", "malignant", p, folder / "data/splits", folder / "data/raw", out, ck, log=logs.append)
    assert any("are for another config" in line and "starting over" in line for line in logs)
    assert r["training"]["resumed_from"] is None


# ------------------------------------------------------------------ quality metrics


def test_frechet_and_kid_on_known_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (4000, 4))
    b = rng.normal(0, 1, (4000, 4)) + np.array([3.0, 0, 0, 0])
    assert frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    assert frechet_distance(a, b) == pytest.approx(9.0, rel=0.05)  # |mean shift|^2, same covariance
    assert abs(kernel_inception_distance(a, rng.normal(0, 1, (4000, 4)))) < 0.05
    assert kernel_inception_distance(a, b) > 1.0


def test_memorised_copies_are_flagged():
    rng = np.random.default_rng(0)
    real = rng.random((20, 8))
    ratio, nearest = nearest_ratio(real[:5] + 1e-6, real)
    assert (ratio < 0.01).all() and list(nearest) == [0, 1, 2, 3, 4]
    ratio, _ = nearest_ratio(rng.random((50, 8)), real)
    assert np.median(ratio) > 0.5


def test_c2st_separates_different_sets_and_not_equal_ones():
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 60, (64, 16, 16, 3), dtype=np.uint8)
    light = rng.integers(180, 255, (64, 16, 16, 3), dtype=np.uint8)
    same = rng.integers(0, 60, (64, 16, 16, 3), dtype=np.uint8)
    assert c2st_auc(dark, light, seed=0)["c2st_auc"] == 1.0
    assert abs(c2st_auc(dark, same, seed=0)["c2st_auc"] - 0.5) < 0.2


def test_fid_unavailable_is_null_with_reason(tmp_path):
    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, (16, 16, 16, 3), dtype=np.uint8)
    metrics, notes, pairs = quality(real, real[::-1].copy(), seed=0, memorisation_ratio=0.333, weights_dir=tmp_path)
    assert metrics["fid"] is None and metrics["kid"] is None
    assert "weights-inception-2015-12-05" in notes["fid_unavailable"] and str(tmp_path) in notes["fid_unavailable"]
    assert metrics["memorised_fraction"] == 1.0 and len(pairs) == 8  # exact copies of training images


# ------------------------------------------------------------------ synthesize


def test_synthesize_fills_both_classes_and_is_reproducible(project, tmp_path):
    p = tiny_params()
    train_rows = read_csv(project / "data/splits/train.csv")
    need = {c: p["datasets"]["per_class"] - sum(r["label"] == c for r in train_rows) for c in ("benign", "malignant")}
    reports = [
        synthesize(
            "ddpm",
            p,
            project / "data/splits",
            project / "data/raw",
            project / "models/generators",
            tmp_path / f"syn{i}",
            tmp_path / f"res{i}",
            log=lambda *_: None,
        )
        for i in range(2)
    ]
    rows = read_csv(tmp_path / "syn0/manifest.csv")
    for c, n in need.items():
        assert sum(r["class"] == c for r in rows) == n > 0
        assert np.load(tmp_path / f"syn0/{c}.npy").shape == (n, 16, 16, 3)
    assert (tmp_path / "syn0/manifest.csv").read_bytes() == (tmp_path / "syn1/manifest.csv").read_bytes()
    q = json.loads((tmp_path / "res0/quality.json").read_text())
    for label in ("benign", "malignant"):
        assert 0 <= q[label]["c2st_auc"] <= 1 and "memorised_fraction" in q[label]
        assert q[label]["fid"] is None or q[label]["fid"] >= 0
    assert (tmp_path / "res0/details/ddpm_malignant_nearest_real.png").is_file()
    assert reports[0]["malignant"]["c2st_auc"] == reports[1]["malignant"]["c2st_auc"]


def test_the_docs_python_snippet_runs(project, monkeypatch):
    text = (ROOT / "docs" / "generators.md").read_text()
    block = text.split("<!-- test: readme-generators -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(project)
    ns: dict = {}
    exec(compile(block, "docs/generators.md", "exec"), ns)
    assert ns["images"].shape == (16, 16, 16, 3) and ns["images"].dtype == np.uint8
    assert ns["fast"].sampler == "ddim" and ns["fast"].sampling_steps == 50
    assert ns["batch"].shape == (16, 3, 16, 16)


def test_discriminator_winning_outright_stops_training(tmp_path):
    cfg = {**tiny_params()["generators"]["dcgan"], "divergence_steps": 3, "label_smoothing": 0.0}
    task = _dcgan(cfg)
    calls = iter(range(10**6))

    class Overconfident(torch.nn.Module):  # sure of every real image (call 0 of a step), sure every fake is fake
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            sign = 1.0 if next(calls) % 3 == 0 else -1.0
            return x.mean(dim=(1, 2, 3)) * 0 + self.w + 30.0 * sign

    task.D = Overconfident()
    with pytest.raises(Diverged, match=r"won outright for 5 steps in a row by step 5"):
        fit(
            task,
            TrainingPlan(steps=10, seed=0, period=5, config={"a": 2}, folder=tmp_path / "ck", checkpoint_minutes=0),
            log=lambda *_: None,
        )


def test_missing_pretrained_unet_is_an_error_not_a_silent_fallback(tmp_path):
    from melanoma.errors import PretrainedUnavailable
    from melanoma.generators.ddpm import build_unet, unet_config

    with pytest.raises(PretrainedUnavailable, match=r"generators.ddpm.pretrained: cannot load .*pretrained: ''"):
        build_unet(unet_config(16, [8, 16], 1, []), pretrained=str(tmp_path / "no-such-unet"))


def test_unet_params_diffusers_cannot_run_are_params_errors(tmp_path, project):
    from melanoma.errors import PretrainedUnavailable
    from melanoma.generators.ddpm import build_unet, unet_config

    with pytest.raises(ParamsError, match=r"generators.image_size \(18\) must be divisible by 2\^2 = 4"):
        unet_config(18, [8, 16, 32], 1, [])
    with pytest.raises(ParamsError, match=r"block_out_channels \[8, 12\]: each must be a positive multiple of .* 8"):
        unet_config(16, [8, 12], 1, [])
    with pytest.raises(ParamsError, match="power of two >= 16 for the DCGAN, got 24"):
        dcgan.Generator(image_size=24)
    trained = project / "models/generators/ddpm/ddpm_benign"  # a 16 px UNet with channels [8, 16]
    with pytest.raises(PretrainedUnavailable, match=r"does not match the params: block_out_channels \[8, 16\] there"):
        build_unet(unet_config(16, [8, 16, 32], 1, []), pretrained=str(trained))


def test_unet_attends_at_the_named_resolutions_on_the_way_down_and_up():
    """The study attends at 16 and 8 px of a 64 px UNet (DDPM/ADM practice), not only at its 2 x 2 lowest block;
    a resolution no block works at is refused rather than silently ignored."""
    from melanoma.generators.ddpm import unet_config

    c = unet_config(64, [128, 128, 256, 256, 512, 512], 2, [16, 8])
    assert c["down_block_types"] == ["DownBlock2D"] * 2 + ["AttnDownBlock2D"] * 2 + ["DownBlock2D"] * 2
    assert c["up_block_types"] == ["UpBlock2D"] * 2 + ["AttnUpBlock2D"] * 2 + ["UpBlock2D"] * 2
    assert "Attn" not in "".join(unet_config(16, [8, 16], 1, [])["down_block_types"])
    with pytest.raises(ParamsError, match=r"no block works at \[12\] px \(at image_size 64 the 6 blocks work at"):
        unet_config(64, [128, 128, 256, 256, 512, 512], 2, [16, 12])


def test_two_process_ddpm_matches_one_process(tmp_path):
    """generators.ddpm.processes: 2 relaunches the stage under torchrun (gloo on the CPU): each rank trains on its
    half of every global batch, so the run matches the 1-process one up to float summation order."""
    from safetensors.torch import load_file

    one, two = (
        make_project(tmp_path / name, tiny_params(**{"generators.ddpm.processes": n}))
        for name, n in (("one", 1), ("two", 2))
    )
    a = run_stage(one, "train_generator.py", "ddpm", "benign")
    b = run_stage(two, "train_generator.py", "ddpm", "benign")
    assert "1 process(es) on cpu" in a.stdout and "2 process(es) on cpu" in b.stdout, b.stdout + b.stderr
    folder = "models/generators/ddpm/ddpm_benign"
    assert json.loads((two / folder / "config.json").read_text())["training"]["processes"] == 2
    wa = load_file(str(one / folder / "unet/diffusion_pytorch_model.safetensors"))
    wb = load_file(str(two / folder / "unet/diffusion_pytorch_model.safetensors"))
    # the losses agree to float rounding; the weights within 1e-4: Adam turns rounding-level differences in
    # near-zero gradients into steps of up to lr (measured: at most 2e-5 after 4 steps at lr 1e-3)
    fa, fb = (json.loads((x / folder / "config.json").read_text())["training"]["final"] for x in (one, two))
    assert abs(fa["loss"] - fb["loss"]) < 1e-6 and abs(fa["grad_norm"] - fb["grad_norm"]) < 1e-5
    assert wa.keys() == wb.keys() and max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4
    assert not (two / "models/.checkpoints/ddpm_benign").exists()


def test_ddpm_batch_must_split_evenly_over_processes(tmp_path):
    folder = make_project(tmp_path, tiny_params(**{"generators.ddpm.batch_size": 5, "generators.ddpm.processes": 2}))
    p = run_stage(folder, "train_generator.py", "ddpm", "benign", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stdout + p.stderr
    assert "generators.ddpm.batch_size (5) must be divisible by generators.ddpm.processes (2)" in p.stdout + p.stderr

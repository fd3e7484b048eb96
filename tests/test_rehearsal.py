"""The study, rehearsed: `./run.sh study --rehearse` on a fresh copy of the project and a few dozen real ISIC images
runs every stage through DVC at the study's shapes (224 px study members, the ~114 M-parameter 64 px DDPM with
attention, DCGAN at 64 px, SR x4, DPM-Solver++, ONNX export at 224 px, the report), budgets shrunk, on the CPU.
So a GPU run can only fail for GPU reasons. The longest test of the suite (docs/testing.md)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from melanoma.io import read_csv
from melanoma.profile import profile_params
from tests.conftest import ROOT
from tests.test_pipeline import env, make_repo, sh

pytestmark = pytest.mark.slow
PER_CLASS = 30  # real images per class: train 21, val 5, test 4 after the split


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory, isic_sample_module):
    repo = make_repo(tmp_path_factory.mktemp("rehearsal") / "repo")
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")  # the committed demo, as in a fresh clone
    for label in ("benign", "malignant"):
        (repo / "data/rehearsal" / label).mkdir(parents=True)
        for f in sorted((isic_sample_module / "folder" / label).iterdir())[:PER_CLASS]:
            shutil.copy(f, repo / "data/rehearsal" / label / f.name)
    venv = Path(sys.executable).parent.parent  # this venv: setup finds its stamp current and installs nothing
    p = subprocess.run(
        ["bash", "run.sh", "study", "--rehearse"],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**env(), "VENV": str(venv), "PYTHON": sys.executable},
    )
    (repo.parent / "rehearsal.log").write_text(p.stdout + p.stderr)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-4000:]
    return repo, p.stdout


@pytest.fixture(scope="module")
def isic_sample_module():
    from tests.conftest import SHARED

    if not (SHARED / "folder").is_dir():
        pytest.skip(
            f"real ISIC sample not found at {SHARED} (it lies beside the checkout in CI; set "
            "MELANOMA_ISIC_SAMPLE to its folder elsewhere)"
        )
    return SHARED


def test_every_stage_ran_on_the_cpu_by_choice_and_nothing_is_left(rehearsed):
    repo, out = rehearsed
    assert "profile in effect: rehearsal; device: cpu (opted in to the CPU)" in out
    assert "grid: 6 archs x 2 datasets x 2 seeds = 24 trainings" in out
    assert "weights: params.yaml needs no pretrained weights" in out
    stages = set(sh(repo, "dvc", "stage", "list", "--name-only").stdout.split())
    assert len(stages) == 38 and "export" in stages and "report" in stages
    assert "up to date" in sh(repo, "dvc", "status").stdout  # every stage ran and dvc.lock is complete


def test_generators_ran_at_the_study_shapes(rehearsed):
    repo, _ = rehearsed
    study = profile_params("study", ROOT / "profiles")
    unet = json.loads((repo / "models/generators/ddpm/ddpm_malignant/unet/config.json").read_text())
    d = study["generators"]["ddpm"]
    assert unet["sample_size"] == 64 and unet["block_out_channels"] == d["block_out_channels"] == [
        128,
        128,
        256,
        256,
        512,
        512,
    ]
    assert unet["layers_per_block"] == 2 and "AttnDownBlock2D" in unet["down_block_types"]
    size = (repo / "models/generators/ddpm/ddpm_malignant/unet/diffusion_pytorch_model.safetensors").stat().st_size
    assert 110e6 < size / 4 < 118e6  # ~114 M float32 parameters
    gen = json.loads((repo / "models/generators/ddpm/ddpm_benign/config.json").read_text())
    assert gen["params"]["sampler"] == "dpmsolver++" and gen["image_size"] == 64
    for family, px in (("dcgan", 64), ("ddpm", 64), ("dcgan_upscaled", 256), ("ddpm_upscaled", 256)):
        rows = read_csv(repo / f"data/synthetic/{family}/manifest.csv")
        assert {r["class"] for r in rows} == {"benign", "malignant"}, family
        for label in ("benign", "malignant"):  # uint8 shards (N, S, S, 3)
            shard = np.load(repo / f"data/synthetic/{family}/{label}.npy", mmap_mode="r")
            assert shard.shape[1:] == (px, px, 3) and shard.shape[0] >= 1, family


def test_every_study_member_trained_evaluated_and_exported_at_224(rehearsed):
    repo, _ = rehearsed
    study = profile_params("study", ROOT / "profiles")["classifiers"]["models"]
    cells = {(r["arch"], r["dataset"]) for r in read_csv(repo / "results/grid.csv") if r["arch"] in study}
    assert cells == {(a, d) for a in study for d in ("Original", "DDPM_Upscaled")}  # + the baseline and rules
    for arch, spec in study.items():
        for dataset in ("Original", "DDPM_Upscaled"):
            cell = f"{arch}_{dataset}"
            for seed in (0, 1):
                cfg = json.loads((repo / f"models/classifiers/{arch}/{cell}/seed_{seed}/model_config.json").read_text())
                assert cfg["model"] == spec["model"] and cfg["kwargs"] == spec["kwargs"], cell
                assert cfg["input_size"] == 224 and cfg["device"] == "cpu", cell
            package = repo / f"models/export/{arch}/{cell}"
            assert (package / "model.onnx").is_file() and (package / "model.safetensors").is_file(), cell
            assert json.loads((package / "model_config.json").read_text())["input_size"] == 224
    verdict = json.loads((repo / "results/verdict.json").read_text())
    assert "DDPM_Upscaled" in json.dumps(verdict["comparisons"])  # the paired verdict ran over both seeds
    assert "DDPM_Upscaled" in (repo / "results/report.html").read_text()
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["device"] == "cpu" and params["datasets"]["image_size"] == 224

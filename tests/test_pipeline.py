"""The pipeline runs through DVC itself, on a throwaway copy of the repository with tiny params."""
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from melanoma.io import read_csv
from tests.conftest import ROOT
from tests.tiny import tiny_params

pytestmark = pytest.mark.slow


def sh(repo: Path, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    p = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def set_params(repo: Path, **sections) -> None:
    p = yaml.safe_load((repo / "params.yaml").read_text())
    for dotted, value in sections.items():
        node = p
        *parents, leaf = dotted.split("__")
        for k in parents:
            node = node[k]
        node[leaf] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))


@pytest.fixture
def repo(tmp_path) -> Path:
    """The tracked files of this checkout, as a fresh git repo, with tiny demo params."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    dst = tmp_path / "repo"
    for f in files:
        if (ROOT / f).is_file():
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / f, dst / f)
    (dst / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    sh(dst, "git", "init", "-q")
    sh(dst, "git", "add", "-A")
    sh(dst, "git", "commit", "-qm", "copy")
    return dst


def test_repro_builds_outputs_then_has_nothing_to_do(repo):
    first = sh(repo, "dvc", "repro")
    for stage in ("fetch", "split", "train_generator@dcgan-benign", "train_generator@ddpm-malignant",
                  "synthesize@dcgan", "synthesize@ddpm", "train_upscaler", "upscale@dcgan", "upscale@ddpm", "build_dataset@Original",
                  "build_dataset@DDPM_Upscaled", "train_classifier@ResNet-Original", "train_classifier@ViT-DCGAN",
                  "evaluate@ViT-Original", "export", "report"):
        assert f"Running stage '{stage}'" in first.stdout
    for cell in ("ResNet/ResNet_Original", "ResNet/ResNet_DCGAN", "ViT/ViT_Original", "ViT/ViT_DCGAN"):
        cfg = json.loads((repo / "models/classifiers" / cell / "model_config.json").read_text())
        assert 0 <= cfg["val_auroc"] <= 1 and cfg["epochs_run"] == 2
    assert (repo / "results/report.html").is_file() and (repo / "results/grid.csv").is_file()
    rows = read_csv(repo / "data/raw/manifest.csv")
    assert Counter(r["label"] for r in rows) == {"benign": 24, "malignant": 12}
    assert all((repo / "data/raw" / r["path"]).is_file() for r in rows)
    ids = [r["id"] for s in ("train", "val", "test") for r in read_csv(repo / f"data/splits/{s}.csv")]
    assert sorted(ids) == sorted(r["id"] for r in rows)
    # the packaged cells are what users run: predict on real files, and the Hub folders with their cards
    test = read_csv(repo / "data/splits/test.csv")  # predict on the test files reproduces evaluate's predictions
    out = sh(repo, sys.executable, "-m", "melanoma.commands", "predict", *(f"data/raw/{r['path']}" for r in test),
             "--json", "--model", "models/export/ViT/ViT_Original").stdout
    evaluated = read_csv(repo / "results/evaluation/ViT/ViT_Original/predictions_test.csv")
    got = json.loads(out)["predictions"]
    assert [Path(r["path"]).stem for r in got] == [r["id"] for r in evaluated]
    assert all(abs(g["p_malignant"] - float(e["p_malignant"])) < 1e-6 and g["decision"] == e["predicted"]
               for g, e in zip(got, evaluated))
    out = sh(repo, sys.executable, "-m", "melanoma.commands", "publish", "--dry-run", "--out", "hub").stdout
    assert out.count("would upload") == 4
    for cell in ("ResNet_Original", "ResNet_DCGAN", "ViT_Original", "ViT_DCGAN"):
        auroc = json.loads((repo / "models/export" / cell.split("_")[0] / cell / "model_config.json").read_text()
                           )["evaluation"]["test"]["auroc"]
        assert f"| AUROC | {auroc:.3f} |" in (repo / "hub" / cell / "README.md").read_text()
    second = sh(repo, "dvc", "repro")
    assert "Running stage" not in second.stdout
    assert "Data and pipelines are up to date" in second.stdout
    assert "up to date" in sh(repo, "dvc", "status").stdout


def test_param_changes_rerun_only_what_depends_on_them(repo):
    sh(repo, "dvc", "repro", "split")
    set_params(repo, split__seed=7)
    out = sh(repo, "dvc", "repro", "split").stdout
    assert "Running stage 'split'" in out and "Running stage 'fetch'" not in out
    sh(repo, "dvc", "repro")
    set_params(repo, generators__ddpm__lr=0.002)  # one family's params: only its training and synthesis
    out = sh(repo, "dvc", "repro").stdout
    ran = set(re.findall(r"Running stage '([^']+)'", out))
    assert ran == {"train_generator@ddpm-benign", "train_generator@ddpm-malignant", "synthesize@ddpm",
                   "upscale@ddpm", "build_dataset@DDPM", "build_dataset@DDPM_Upscaled", "export", "report"}
    set_params(repo, upscale__method="bicubic")  # the upscaler stays; only the upscaled sets are remade
    assert "upscale@dcgan" in sh(repo, "dvc", "status").stdout
    out = sh(repo, "dvc", "repro").stdout
    assert set(re.findall(r"Running stage '([^']+)'", out)) == {
        "upscale@dcgan", "upscale@ddpm", "build_dataset@DCGAN_Upscaled", "build_dataset@DDPM_Upscaled", "export",
        "report"}
    set_params(repo, classifiers__models__ResNet__lr=0.003)  # one arch's params: only that arch's cells
    out = sh(repo, "dvc", "repro").stdout
    assert set(re.findall(r"Running stage '([^']+)'", out)) == {
        "train_classifier@ResNet-Original", "train_classifier@ResNet-DCGAN", "evaluate@ResNet-Original",
        "evaluate@ResNet-DCGAN", "export", "report"}
    set_params(repo, evaluate__threshold="sensitivity")  # evaluation params: no retraining
    out = sh(repo, "dvc", "repro").stdout
    assert not re.findall(r"Running stage 'train_classifier", out) and "Running stage 'evaluate@ViT-DCGAN'" in out
    assert "Running stage 'export'" in out  # packages carry the threshold
    set_params(repo, classifiers__archs=["ViT"])  # the grid shrinks with the list in params: only the report reruns
    cells = sh(repo, "dvc", "stage", "list").stdout
    assert "train_classifier@ViT-Original" in cells and "train_classifier@ResNet" not in cells
    out = sh(repo, "dvc", "repro").stdout
    assert set(re.findall(r"Running stage '([^']+)'", out)) == {"export", "report"}
    assert set(json.loads((repo / "results/metrics.json").read_text())) == {"ViT_Original", "ViT_DCGAN"}


def test_exp_run_with_invalid_value_fails_with_schema_message(repo):
    p = sh(repo, "dvc", "exp", "run", "-S", "data.source=dmeo", check=False)
    assert p.returncode != 0
    assert "data.source must be one of demo, local, isic_csv, gdrive (got 'dmeo')" in p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr


@pytest.mark.parametrize("layout,expected", [("folder", {"benign": 150, "malignant": 150}),
                                             ("archive", {"benign": 14, "malignant": 10})])
def test_fetch_local_shared_sample_through_dvc(repo, isic_sample, layout, expected):
    set_params(repo, data__source="local", data__local__path=str(isic_sample / layout))
    sh(repo, "dvc", "repro", "-s", "fetch")
    rows = read_csv(repo / "data/raw/manifest.csv")
    assert Counter(r["label"] for r in rows) == expected
    assert read_csv(repo / "data/raw/rejected.csv") == []

"""`melanoma plan`: what a run will build and cost, in words a researcher checks before spending GPU hours."""

import re

import pytest

from melanoma.errors import MelanomaError
from melanoma.plan import report
from melanoma.profile import profile_params
from tests.conftest import ROOT


def test_the_study_plan_counts_the_grid_and_prices_it(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # profiles/ for the profile in effect
    out = report(profile_params("study"), tmp_path / "no-split", ({"fetch": [], "train_classifier@A-B": []}, 56))
    assert "profile in effect: study; device: cuda" in out
    assert "grid: 6 archs x 5 datasets x 5 seeds = 150 trainings" in out
    assert "stages to run (dvc status): 2 of 56: fetch, train_classifier" in out
    gpu = re.search(
        r"GPU time (\d+\.\d) h \+ (\d+\.\d) h rated with a stand-in model's rate \(([^)]*\)[^)]*)\); "
        r"not timed: (.*)",
        out,
    )
    assert gpu and float(gpu[1]) > 1 and "MedViT" in gpu[3] and "MedViT" not in gpu[4], out
    assert "decode" in gpu[4] and "baseline" in gpu[4]  # every stage is either timed or listed as not
    assert re.search(r"disk \d+\.\d GB of outputs", out) and "real data assumed" in out


def test_cpu_plans_have_no_gpu_estimate_and_a_missing_data_folder_is_said(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = report(profile_params("rehearsal"), tmp_path, None)
    assert "device: cpu (opted in to the CPU)" in out
    assert "estimate: none for device: cpu" in out and not re.search(r"GPU time \d", out)
    assert "! data.local.path data/rehearsal does not exist yet" in out or (ROOT / "data/rehearsal").is_dir()
    assert "stages to run: unknown (not in a DVC project)" in out
    demo = profile_params("demo")
    demo["device"] = "cuda"  # the demo's 32 px members have no reference rate: said, not "0.0 h"
    assert "GPU time: no reference rate matches these models and sizes" in report(demo, tmp_path, None)


def test_a_broken_split_is_one_error(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    (tmp_path / "train.csv").write_text("id,label,source\na,benign,gdrive\nb,malignant,gdrive\n")
    (tmp_path / "val.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(MelanomaError, match=r"cannot read the split .*rerun `dvc repro split`"):
        report(profile_params("study"), tmp_path, None)

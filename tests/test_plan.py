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
    disk = re.search(r"disk of outputs: final (\d+\.\d) GB, peak (\d+\.\d) GB during (.*) \((fits|over) the 40 GB", out)
    assert disk and float(disk[1]) <= float(disk[2]) <= 40 and disk[4] == "fits", out
    assert "train_classifier@" in disk[3] and "real data assumed" in out
    assert re.search(r"with the environment \(\.venv, Hugging Face cache\) \d+\.\d GB: \d+\.\d GB at the peak", out)


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


def test_the_study_disk_fits_at_its_peak_and_more_seeds_do_not(tmp_path, monkeypatch):
    """Peak >= final, both within the 40 GB target at the study profile; 10 seeds per cell go over, and the plan
    says so. The peak is a classifier cell at its largest moment: the seeds' newest checkpoints (one being
    replaced) and their float32 weights before the bfloat16 re-save, beyond what the cell stores."""
    from melanoma.estimate import ASSUMED, FP32, GB, TARGET_BYTES, disk, load_reference, params_2class, totals

    monkeypatch.chdir(ROOT)
    study = profile_params("study")
    t = totals(study, ASSUMED)
    assert t["disk_final_bytes"] < t["disk_peak_bytes"] <= TARGET_BYTES
    assert t["environment_bytes"] > 6 * GB and t["disk_peak_bytes"] + t["environment_bytes"] <= 64 * 2**30
    d = disk(study, load_reference(), ASSUMED)
    top = d.peaks[0]
    n = params_2class("swin_base_patch4_window7_224")[0]  # the largest member
    w = n * FP32
    assert top.stage.startswith("train_classifier@Swin")
    assert abs(top.extra - (6 * 4 * w + 4 * w - (w + 4 * w / 2))) < 1  # 5 seeds
    swin = next(i for i in d.items if i.folder == "models/classifiers/Swin")
    assert abs(swin.bytes - 5 * (w + 4 * w / 2)) < 1  # 5 cells: one float32 seed, four bfloat16
    ten = profile_params("study")
    ten["classifiers"]["seeds"] = list(range(10))
    t10 = totals(ten, ASSUMED)
    assert t10["disk_peak_bytes"] > TARGET_BYTES and t10["disk_final_bytes"] > t["disk_final_bytes"]
    assert "(over the 40 GB target)" in report(ten, tmp_path / "no-split", None)


def test_study_estimate_runs_from_an_empty_folder_and_prints_peak_and_final(tmp_path):
    """The acceptance check of #31: from a folder with nothing in it, the estimate prints the peak and the final
    disk, both within target, and its JSON carries them."""
    import json
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, str(ROOT / "bench/study_estimate.py"), "--json", str(tmp_path / "e.json")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["fits"] is True and doc["disk_final_bytes"] < doc["disk_peak_bytes"] <= doc["disk_target_bytes"]
    final = re.search(r"^final: (\d+\.\d\d) GB", p.stdout, re.M)
    peak = re.search(r"^peak: [\d.]+ \+ [\d.]+ = (\d+\.\d\d) GB, during train_classifier@", p.stdout, re.M)
    assert final and peak and float(final[1]) == round(doc["disk_final_bytes"] / 1e9, 2)
    assert float(peak[1]) == round(doc["disk_peak_bytes"] / 1e9, 2)
    assert re.search(r"final [\d.]+ GB fits, peak [\d.]+ GB fits", p.stdout)
    assert ".venv" in p.stdout and doc["environment_bytes"] > 6e9

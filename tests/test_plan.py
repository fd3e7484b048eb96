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
        r"CPU time (\d+\.\d) h \(2-core rates: an upper bound\); total (\d+\.\d) h; not timed: (.*)",
        out,
    )
    assert gpu and float(gpu[1]) > 1 and "MedViT" in gpu[3] and "MedViT" not in gpu[6], out
    assert float(gpu[4]) > 0 and abs(float(gpu[5]) - float(gpu[1]) - float(gpu[4])) <= 0.1
    # the CPU stages are timed now; what has no rate is listed, never dropped
    assert not {"decode", "baseline", "export", "report"} & set(gpu[6].split(", ")) and "train_upscaler" in gpu[3]
    assert gpu[6].startswith("no stage (")  # the SR stages have a labelled stand-in rate (from counted FLOPs)
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
    assert d.peak_with(4) - d.final == 4 * (d.peak - d.final) and d.peak_with(2) > TARGET_BYTES  # dvc repro -j
    swin = next(i for i in d.items if i.folder == "models/classifiers/Swin")
    assert abs(swin.bytes - 5 * (w + 4 * w / 2)) < 1  # 5 cells: one float32 seed, four bfloat16
    ten = profile_params("study")
    ten["classifiers"]["seeds"] = list(range(10))
    t10 = totals(ten, ASSUMED)
    assert t10["disk_peak_bytes"] > TARGET_BYTES and t10["disk_final_bytes"] > t["disk_final_bytes"]
    assert "(over the 40 GB target)" in report(ten, tmp_path / "no-split", None)


def test_study_estimate_runs_from_an_empty_folder_and_prints_peak_and_final(tmp_path):
    """The acceptance check of #31: from a folder with nothing in it (the reference rates ship inside the package,
    melanoma/reference/), the estimate prints its arithmetic, the peak and the final disk, both within target,
    and its JSON carries them."""
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
    assert "100,000 steps x 32 img" in p.stdout and "DDPM 6,570" in p.stdout  # 4.5x of the assumed 730 benign
    doc = json.loads((tmp_path / "e.json").read_text())
    assert doc["fits"] is True and doc["disk_final_bytes"] < doc["disk_peak_bytes"] <= doc["disk_target_bytes"]
    final = re.search(r"^final: (\d+\.\d\d) GB", p.stdout, re.M)
    peak = re.search(r"^peak: [\d.]+ \+ [\d.]+ = (\d+\.\d\d) GB, during train_classifier@", p.stdout, re.M)
    assert final and peak and float(final[1]) == round(doc["disk_final_bytes"] / 1e9, 2)
    assert float(peak[1]) == round(doc["disk_peak_bytes"] / 1e9, 2)
    assert re.search(r"final [\d.]+ GB fits, peak [\d.]+ GB fits", p.stdout)
    assert ".venv" in p.stdout and doc["environment_bytes"] > 6e9


CPU_STAGES = {
    "fetch",
    "split",
    "decode",
    "build_dataset@<augmented>",
    "build_dataset@Original",
    "baseline",
    "evaluate's bootstrap CIs",
    "export",
    "report bootstrap",
    "stage start-ups",
}


def test_the_cpu_stages_are_timed_from_the_shipped_cpu_records_and_said_when_missing(tmp_path, monkeypatch):
    """The estimate used to leave out the CPU stages and the report's bootstrap: each now has a line from the
    records bench/cpu_rates.py wrote (CPU time, apart from GPU time, both in the total); without those records
    every such line is listed as not covered, never given a number."""
    import shutil

    from melanoma.estimate import ASSUMED, REFERENCE, load_reference, stage_estimates, totals

    monkeypatch.chdir(ROOT)
    study = profile_params("study")
    est = {e.stage: e for e in stage_estimates(study, load_reference(), ASSUMED)}
    assert CPU_STAGES <= set(est)
    assert all(est[s].device == "cpu" and est[s].seconds > 0 for s in CPU_STAGES)
    t = totals(study, ASSUMED)
    assert abs(t["cpu_seconds"] - sum(e.seconds for e in est.values() if e.device == "cpu")) < 1e-6
    assert not CPU_STAGES & set(t["not_covered"])
    gpu_only = tmp_path / "ref"
    gpu_only.mkdir()
    for f in REFERENCE.glob("gpu_*.jsonl"):
        shutil.copy(f, gpu_only)
    bare = totals(study, ASSUMED, load_reference(gpu_only))
    assert bare["cpu_seconds"] == 0 and CPU_STAGES <= set(bare["not_covered"])


def test_the_report_bootstrap_is_the_verdicts_comparisons_at_the_measured_rate():
    """Per held-out split: every augmented set vs Original per arch (resamples for the family of all of them) and
    pooled over archs, each resample drawing both models' AUROC for every seed: 2 x S x P x N units."""
    from melanoma.estimate import Reference, Sizes, split_classes, stage_estimates
    from melanoma.evaluation.verdict import resamples_for

    study = profile_params("study", ROOT / "profiles")
    rec = {"kind": "cpu_bootstrap", "fn": "stats.auroc_difference", "images": 165, "malignant": 55}
    ref = Reference([{**rec, "s_per_unit": 1e-9, "_file": "x.jsonl", "_line": 1}], ["x.jsonl"])
    sizes = Sizes({"benign": 730, "malignant": 370}, 165, 165, 0)  # no external test: one held-out split
    line = next(e for e in stage_estimates(study, ref, sizes) if e.stage == "report bootstrap")
    m, n = split_classes(165, sizes)
    archs, aug, seeds = 6, 4, 5
    want = aug * archs * (resamples_for(archs * aug, 1000) + resamples_for(aug, 1000)) * 2 * seeds * m * n * 1e-9
    assert m == 56 and abs(line.seconds - want) < 1e-9 and "24 comparisons x 9,600 resamples" in line.work


def test_the_ddpm_rate_is_scaled_by_the_counted_flops_of_the_study_unet():
    """The H200 rate was measured on a UNet attending only in its lowest block; the study's attends at 16 and 8 px.
    The estimate scales the rate by the two forward passes' FLOPs (bench/unet_flops.py's records) and says so; a
    UNet no record counts is left unscaled, saying that too."""
    from melanoma.estimate import ASSUMED, find, load_reference, stage_estimates

    ref = load_reference()
    study = profile_params("study", ROOT / "profiles")
    old, new = find(ref, "unet_flops", config="reference"), find(ref, "unet_flops", config="study")
    assert old["params_m"] == pytest.approx(find(ref, "ddpm_unet")["params_m"], abs=0.05)  # the measured UNet
    assert new["attention_resolutions"] == study["generators"]["ddpm"]["attention_resolutions"]
    line = next(e for e in stage_estimates(study, ref, ASSUMED) if e.stage == "train_generator@ddpm-benign")
    rate = 1098 * old["gflop_forward"] / new["gflop_forward"]
    assert line.rate == f"{rate:,.0f} img/s" and line.seconds == pytest.approx(100_000 * 32 / rate)
    assert line.note.startswith("scaled, not matched") and "31.703 GFLOP" in line.note
    other = profile_params("study", ROOT / "profiles")
    other["generators"]["ddpm"]["attention_resolutions"] = [32]
    line = next(e for e in stage_estimates(other, ref, ASSUMED) if e.stage == "train_generator@ddpm-benign")
    assert line.rate == "1,098 img/s" and line.note.startswith("NOT scaled")


def test_the_shipped_flop_counts_are_what_bench_unet_flops_counts(tmp_path):
    """The two FLOP figures the DDPM line rests on come from a command: rerun it, get the shipped records."""
    import json
    import subprocess
    import sys

    out = tmp_path / "flops.jsonl"
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench/unet_flops.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    fresh = [json.loads(x) for x in out.read_text().splitlines()]
    shipped_file = next((ROOT / "melanoma/reference").glob("unet_flops_*.jsonl"))
    shipped = [json.loads(x) for x in shipped_file.read_text().splitlines()]
    key = ("config", "attention_resolutions", "params_m", "gflop_forward", "block_out_channels", "layers_per_block")
    assert [{k: r[k] for k in key} for r in fresh] == [{k: r[k] for k in key} for r in shipped]
    assert fresh[1]["gflop_forward"] > fresh[0]["gflop_forward"]  # attention at 16 px costs more than at 2 px


def test_the_sr_stages_get_a_labelled_stand_in_from_counted_flops(tmp_path):
    """No reference measures the SR model: train_upscaler and upscale get the DCGAN step's achieved FLOP/s over
    their own FLOPs per image, labelled a stand-in (in the total with stand-ins, not in the covered one), and the
    shipped FLOP counts are what bench/step_flops.py counts."""
    import json
    import subprocess
    import sys

    from melanoma.estimate import ASSUMED, find, load_reference, stage_estimates

    ref = load_reference()
    study = profile_params("study", ROOT / "profiles")
    lines = {e.stage: e for e in stage_estimates(study, ref, ASSUMED)}
    dcgan, per_img = find(ref, "dcgan", size=64, mode="fp32"), find(ref, "step_flops", step="dcgan_train")
    sr = find(ref, "step_flops", step="sr_train")
    rate = dcgan["train_img_s"] * per_img["gflop_per_image"] / sr["gflop_per_image"]
    up = lines["train_upscaler"]
    assert up.stand_in and up.seconds == pytest.approx(20_000 * 32 / rate) and up.note.startswith("STAND-IN")
    assert lines["upscale@ddpm"].stand_in and lines["upscale@ddpm"].seconds > 0
    out = tmp_path / "step.jsonl"
    p = subprocess.run([sys.executable, str(ROOT / "bench/step_flops.py"), "--out", str(out)], capture_output=True)
    assert p.returncode == 0, p.stderr
    fresh = [json.loads(x) for x in out.read_text().splitlines()]
    shipped = [
        json.loads(x) for x in next((ROOT / "melanoma/reference").glob("step_flops_*.jsonl")).read_text().splitlines()
    ]
    assert [r["gflop_per_image"] for r in fresh] == [r["gflop_per_image"] for r in shipped]


def test_cpu_rates_bootstrap_records_hold_their_own_arithmetic():
    """bench/cpu_rates.py's bootstrap part (run small): each record's rate is its seconds over its units."""
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import cpu_rates
    finally:
        sys.path.remove(str(ROOT / "bench"))
    params = profile_params("study", ROOT / "profiles")
    params["classifiers"]["seeds"] = [0, 1]
    params["classifiers"]["datasets"] = ["Original", "DCGAN"]
    params["evaluate"]["bootstrap"] = 200
    recs = cpu_rates.bootstrap(params)
    assert [(r["fn"], r["split"]) for r in recs] == [
        ("stats.auroc_difference", "test"),
        ("stats.cell_intervals", "test"),
        ("stats.auroc_difference", "external_test"),
        ("stats.cell_intervals", "external_test"),
    ]
    for r in recs:
        pairs = r["malignant"] * (r["images"] - r["malignant"])
        units = r["resamples"] * r["seeds"] * pairs * (2 if r["fn"] == "stats.auroc_difference" else 1)
        assert r["s_per_unit"] * units == pytest.approx(r["seconds"], rel=0.01, abs=2e-3)
    assert recs[0]["resamples"] == 4800  # verdict.resamples_for(6 archs x 1 set x 2 splits, 200)

"""The benchmark scripts run (so they cannot rot): the GPU check on the CPU at tiny sizes, the study estimate."""

import json
import subprocess
import sys

from melanoma.params import ARCHS, SAMPLERS
from tests.conftest import ROOT


def test_gpu_check_runs_every_part_on_the_cpu_at_tiny_sizes(tmp_path):
    out = tmp_path / "gpu_check.jsonl"
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench/gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    records = {r["part"]: r for r in map(json.loads, out.read_text().splitlines())}
    expected = (
        {"env", "dcgan", "ddpm", "sr", "c2st", "evaluate", "ddp"}
        | {f"classifier@{a}" for a in ARCHS}
        | {f"sample@{s}" for s in SAMPLERS}
    )
    assert set(records) == expected
    for name, r in records.items():
        if name != "env":
            assert r["device_ok"] is True, r
    for a in ARCHS:
        r = records[f"classifier@{a}"]
        assert r["real_img_s"] > 0 and r["pure_img_s"] > 0 and r["real_over_pure"] > 0
    assert records["ddp"]["processes"] == 2 and records["ddp"]["ranks_identical"] is True
    assert records["ddp"]["backend"] == "gloo"
    assert all(records[f"sample@{s}"]["img_s"] > 0 for s in SAMPLERS)


def test_study_estimate_prints_its_arithmetic_from_the_shipped_reference(tmp_path):
    """Run from an empty folder: the H200 reference rates ship inside the package (melanoma/reference/)."""
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench/study_estimate.py"), "--json", str(tmp_path / "e.json")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stderr
    assert "100,000 steps x 32 img" in p.stdout and "DDPM 6,570" in p.stdout  # 4.5x of the assumed 730 benign
    assert json.loads((tmp_path / "e.json").read_text())


def test_gpu_check_hands_the_engine_a_number_of_steps_at_study_size():
    """The study's classifiers.train.steps is `auto`; the GPU check's classifier part builds the engine's task
    straight from these params, so they must carry the resolved number (~2,050 for the assumed ~1,100 images)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "bench"))
    steps = gpu_check.study_params(tiny=False)["classifiers"]["train"]["steps"]
    assert isinstance(steps, int) and 2000 < steps < 2100, steps

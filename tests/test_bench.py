"""The benchmark scripts run (so they cannot rot): the GPU check on the CPU at tiny sizes, its reference matching.
(The study estimate runs from an empty folder in tests/test_plan.py.)"""

import json
import subprocess
import sys

from melanoma.params import ARCHS, SAMPLERS
from tests.conftest import ROOT


def test_gpu_check_runs_every_stage_and_every_part_on_the_cpu_at_tiny_sizes(tmp_path):
    """`--device cpu --tiny` (both sections): the bounded pipeline runs through DVC and every stage gets a record
    (training stages: the share of their wall time inside steps, from the engine, and images/s), a summary per
    stage kind, and references are marked matched or unmatched, never silently compared with other work."""
    out = tmp_path / "gpu_check.jsonl"
    p = subprocess.run(
        [sys.executable, str(ROOT / "bench/gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    lines = list(map(json.loads, out.read_text().splitlines()))
    stages = {r["stage"]: r for r in lines if r["part"] == "stage"}
    kinds = {r["kind"]: r for r in lines if r["part"] == "stages"}
    assert len(stages) == 26 and {"fetch", "report", "export", "evaluate@ViT", "synthesize@ddpm"} <= set(stages)
    training = [r for name, r in stages.items() if name.startswith(("train_classifier", "train_generator"))]
    training.append(stages["train_upscaler"])
    assert len(training) == 9
    for r in training:
        assert r["fits"] >= 1 and 0 < r["busy"] == r["inside_steps"] < 1 and r["train_img_s"] > 0, r
    assert all(r["reference"] == "unmatched: the references are GPU rates" for r in stages.values())
    assert stages["evaluate@ViT"]["busy"] is None and stages["evaluate@ViT"]["seconds"] > 0
    assert kinds["train_classifier@ResNet-*"]["stages"] == 2 and kinds["build_dataset"]["stages"] == 5
    assert 0 < kinds["train_classifier@ViT-*"]["busy"] < 1

    records = {r["part"]: r for r in lines if r["part"] not in ("stage", "stages")}
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
        assert r["reference"] == "unmatched: tiny sizes" and r["pure_over_reference"] is None
    assert records["ddp"]["processes"] == 2 and records["ddp"]["ranks_identical"] is True
    assert records["ddp"]["backend"] == "gloo"
    assert all(records[f"sample@{s}"]["img_s"] > 0 for s in SAMPLERS)


def test_gpu_check_matches_references_on_model_size_precision_and_batch():
    """A ratio only against the same work: the study's batch (64) is not the reference's (256), so ViT-B is
    unmatched and says why; at batch 256 it matches."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from melanoma.estimate import load_reference

    refs = load_reference(ROOT / "melanoma/reference")
    want = {"arch": "vit_base_patch16_224", "size": 224, "mode": "bf16_cl"}
    assert gpu_check.matched(refs, "train_img_s", "classifier", False, **want, batch=256) == (
        2767,
        "matched on arch vit_base_patch16_224, size 224, mode bf16_cl, batch 256",
    )
    assert gpu_check.matched(refs, "train_img_s", "classifier", False, **want, batch=64) == (
        None,
        "unmatched: the reference ran batch 256, this part 64",
    )
    assert gpu_check.matched(refs, "train_img_s", "classifier", False, **{**want, "arch": "medvit_small"}, batch=64)[
        1
    ].startswith("unmatched: no reference for arch medvit_small")


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

"""The classifier registry, the BioViT weight mapping, and the one training loop (resume, DDP, determinism)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from melanoma.classifiers.inference import load_classifier
from melanoma.classifiers.registry import (
    BIOMEDCLIP,
    FAMILIES,
    WeightsMismatch,
    biomedclip_to_timm,
    build_model,
    load_strict,
)
from melanoma.classifiers.train import augment, augment_params, epoch_batches, train_classifier
from melanoma.engine import Diverged, Runtime, load_checkpoint
from melanoma.errors import PretrainedUnavailable
from melanoma.params import ARCHS, ParamsError, load_params
from tests.conftest import ROOT
from tests.tiny import TINY_MODELS, make_pack, tiny_params, workspace

# the study's members at full size (224 px): what the full profile builds
FULL = {
    "BioViT": "vit_base_patch16_224",
    "DenseNet": "densenet121",
    "ResNet": "resnet50",
    "Swin": "swin_base_patch4_window7_224",
    "ViT": "vit_base_patch16_224",
    "MedViT": "medvit_small",
}


def test_every_named_arch_has_a_registry_entry():
    assert set(FAMILIES) == set(ARCHS) == set(FULL)


def test_medvit_is_a_timm_model_and_its_input_constraint_is_the_registrys():
    import timm

    import melanoma.classifiers.medvit  # noqa: F401  registers medvit_* with timm

    assert type(timm.create_model("medvit_tiny", num_classes=2)).__name__ == "MedViT"
    spec = {"model": "medvit_tiny", "pretrained": False, "lr": 1e-3, "kwargs": {}}
    with pytest.raises(
        ParamsError,
        match=r"classifiers.models.MedViT \(medvit_tiny\) needs an input size of at "
        r"least 32 that is a multiple of 32, got 100; change datasets.image_size",
    ):
        build_model("MedViT", spec, 2, 100)
    with pytest.raises(ParamsError, match="unknown arch 'AlexNet'"):
        build_model("AlexNet", spec, 2, 64)


@pytest.mark.parametrize("arch", ARCHS)
def test_demo_member_trains_a_step_at_demo_size(arch):
    p = load_params(ROOT / "params.yaml")
    spec, size = p["classifiers"]["models"][arch], p["datasets"]["image_size"]
    built = build_model(arch, spec, 2, size)
    assert built.info["model"] == spec["model"] and built.info["input_size"] == size
    assert built.info["parameters"] == sum(q.numel() for q in built.model.parameters())
    x = torch.randn(2, 3, size, size)
    out = built.model(x)
    assert out.shape == (2, 2)
    out.logsumexp(1).sum().backward()
    grads = [q.grad for q in built.model.parameters() if q.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("arch", ARCHS)
def test_full_size_member_runs_forward_at_224(arch):
    spec = {"model": FULL[arch], "pretrained": False, "lr": 1e-4, "kwargs": {}}
    built = build_model(arch, spec, 2, 224)
    with torch.no_grad():
        assert built.model.eval()(torch.randn(1, 3, 224, 224)).shape == (1, 2)
    expected_m = {"ResNet": 23.5, "DenseNet": 7.0, "ViT": 85.8, "BioViT": 85.8, "Swin": 86.7, "MedViT": 44.4}[arch]
    assert abs(built.info["parameters"] / 1e6 - expected_m) < 0.2  # really ResNet-50, ViT-B/16, ...


def _open_clip_state(trunk: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict in BiomedCLIP's open_clip layout: visual.trunk.* + visual.head.proj + a text tower."""
    state = {f"visual.trunk.{k}": v.clone() for k, v in trunk.state_dict().items()}
    state["visual.head.proj.weight"] = torch.randn(512, trunk.embed_dim)
    state["text.transformer.embeddings.word_embeddings.weight"] = torch.randn(10, 8)
    state["logit_scale"] = torch.tensor(4.6)
    return state


SMALL_VIT = {"patch_size": 16, "embed_dim": 48, "depth": 2, "num_heads": 2}


def test_biomedclip_trunk_maps_onto_timm_vit_and_loads_strictly(monkeypatch):
    import timm

    trunk = timm.create_model("vit_base_patch16_224", num_classes=0, global_pool="", **SMALL_VIT)
    state = _open_clip_state(trunk)
    monkeypatch.setattr("melanoma.classifiers.registry._biomedclip_state", lambda: state)
    spec = {"model": "vit_base_patch16_224", "pretrained": True, "lr": 1e-4, "kwargs": SMALL_VIT}
    built = build_model("BioViT", spec, 2, 224)
    own = built.model.state_dict()
    for k, v in trunk.state_dict().items():
        assert torch.equal(own[k], v), k
    assert own["head.weight"].shape == (2, 48)
    assert built.info["normalisation"]["mean"][0] == pytest.approx(0.48145466)  # CLIP's, as BiomedCLIP used
    assert BIOMEDCLIP in built.info["weights"]
    # at another input size the position embeddings are resampled (16x16 patches: 224 -> 14x14, 64 -> 4x4)
    small = build_model("BioViT", spec, 2, 64)
    assert small.model.state_dict()["pos_embed"].shape == (1, 1 + 16, 48)
    assert torch.equal(small.model.state_dict()["cls_token"], trunk.state_dict()["cls_token"])


def test_biomedclip_mapping_rejects_a_checkpoint_without_a_vision_trunk():
    import timm

    model = timm.create_model("vit_base_patch16_224", num_classes=2, **SMALL_VIT)
    with pytest.raises(WeightsMismatch, match="no 'visual.trunk.\\*' keys"):
        biomedclip_to_timm({"text.proj": torch.zeros(2)}, model)
    trunk = timm.create_model(
        "vit_base_patch16_224", num_classes=0, global_pool="", **{**SMALL_VIT, "depth": 3}
    )  # one block too many
    with pytest.raises(
        WeightsMismatch, match=r"1 unexpected \(blocks\.2\..*do not fit|weights .* do not fit.*unexpected"
    ):
        load_strict(model, biomedclip_to_timm(_open_clip_state(trunk), model), "biomedclip.bin")


def test_strict_load_names_missing_unexpected_and_misshapen_keys():
    import timm

    model = timm.create_model("resnet18", num_classes=2)
    state = model.state_dict()
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    state["conv1.weight"] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(WeightsMismatch) as e:
        load_strict(model, state, "some/weights.pth")
    msg = str(e.value)
    assert "some/weights.pth" in msg and "1 missing (fc.bias)" in msg and "1 unexpected (extra.weight)" in msg
    assert "conv1.weight (1, 1, 1, 1) vs (64, 3, 7, 7)" in msg


@pytest.mark.parametrize("arch,name", [("ResNet", "timm/resnet18"), ("BioViT", BIOMEDCLIP)])
def test_pretrained_offline_is_one_clear_error(tmp_path, arch, name):
    code = (
        f"from melanoma.classifiers.registry import build_model\n"
        f"build_model({arch!r}, {{'model': {('resnet18' if arch == 'ResNet' else 'vit_base_patch16_224')!r}, "
        f"'pretrained': True, 'lr': 0.1, 'kwargs': {{}}}}, 2, 64)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "TORCH_HOME": str(tmp_path / "t"),
        "PYTHONPATH": str(ROOT),
    }
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("melanoma.errors.PretrainedUnavailable: pretrained weights")
    assert name in last and "HF_HUB_OFFLINE=1" in last and "pretrained: false" in last


def test_medvit_pretrained_is_refused_clearly():
    with pytest.raises(PretrainedUnavailable, match="MedViT.pretrained: false"):
        build_model("MedViT", {"model": "medvit_tiny", "pretrained": True, "lr": 1e-3, "kwargs": {}}, 2, 64)


# ---------------------------------------------------------------- augmentation


def _identity(n: int) -> dict:
    cfg = {"hflip": False, "rot90": False, "rotate_degrees": 0.0, "scale": 0.0, "translate": 0.0, "color_jitter": 0.0}
    return augment_params(n, cfg, torch.Generator().manual_seed(0))


def test_augment_geometry_is_exact_for_flips_and_quarter_turns():
    x = torch.rand(3, 3, 8, 8)
    p = _identity(3)
    assert torch.allclose(augment(x, p), x, atol=1e-5)
    p["flip"] = torch.tensor([True, False, False])
    p["quarter"] = torch.tensor([0.0, 1.0, 2.0])
    y = augment(x, p)
    assert torch.allclose(y[0], x[0].flip(-1), atol=1e-5)
    assert torch.allclose(y[2], x[2].flip(-1).flip(-2), atol=1e-5)
    turned = [torch.rot90(x[1], k, (1, 2)) for k in (1, 3)]
    assert min((y[1] - t).abs().max() for t in turned) < 1e-5


def test_augment_draws_depend_only_on_the_seed_and_stay_in_range():
    cfg = load_params(ROOT / "params.yaml")["classifiers"]["train"]["augment"]
    a = augment_params(64, cfg, torch.Generator().manual_seed(3))
    b = augment_params(64, cfg, torch.Generator().manual_seed(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert set(a["quarter"].tolist()) <= {0.0, 1.0, 2.0, 3.0} and a["angle"].abs().max() <= cfg["rotate_degrees"]
    y = augment(torch.rand(64, 3, 8, 8), a)
    assert y.min() >= 0 and y.max() <= 1


# ---------------------------------------------------------------- the loop


def _params(**over) -> dict:
    return tiny_params(**{"classifiers.seeds": [0], "classifiers.train.steps": 12, **over})


def _cfg(out: Path, seed: int = 0) -> dict:
    return json.loads((out / f"seed_{seed}" / "model_config.json").read_text())


def test_training_writes_a_cell_whose_weights_load_weights_only(tmp_path):
    data = make_pack(tmp_path / "data")
    out = tmp_path / "cell"
    r = train_classifier(
        "ViT", "Original", _params(**{"classifiers.seeds": [0, 3]}), data, out, tmp_path / "ck", log=lambda s: None
    )
    assert [s["seed"] for s in r["seeds"]] == [0, 3] and sorted(p.name for p in out.iterdir()) == ["seed_0", "seed_3"]
    cfg = _cfg(out)
    assert cfg["val_auroc"] == r["seeds"][0]["val_auroc"] > 0.5
    assert cfg["best_step"] == max(cfg["history"], key=lambda h: h["val_auroc"])["step"]
    assert cfg["model"] == "vit_tiny_patch16_224" and cfg["kwargs"] == TINY_MODELS["ViT"]["kwargs"]
    assert cfg["classes"] == ["benign", "malignant"] and len(cfg["data_hash"]) == 32
    assert sorted(p.name for p in (out / "seed_0").iterdir()) == ["live", "model.safetensors", "model_config.json"]
    for seed in (0, 3):  # strict, weights-only loading gives float32 tensors equal to what is stored
        state = load_file(str(out / f"seed_{seed}/model.safetensors"))
        model, _ = load_classifier(out / f"seed_{seed}")
        assert state.keys() == model.state_dict().keys()
        assert all(v.dtype in (torch.float32, torch.int64) for v in model.state_dict().values())
        assert all(torch.equal(state[k].to(v.dtype), v) for k, v in model.state_dict().items())
    assert (out / "seed_0/live/metrics.json").is_file()
    assert _cfg(out, 3)["history"] != cfg["history"]  # another seed, another run
    assert not (tmp_path / "ck").exists()  # a finished cell leaves no checkpoint behind


def test_the_packaged_seed_is_stored_in_float32_and_the_others_in_bfloat16(tmp_path):
    """A 2-seed cell: the seed with the best val AUROC (what evaluate packages) keeps float32 weights; the other's
    floating tensors are bfloat16 (half the bytes), its integer buffers unchanged, and model_config.json says
    which; loading upcasts the bfloat16 values exactly."""
    from melanoma.classifiers.inference import packaged_seed

    data = make_pack(tmp_path / "data")
    out = tmp_path / "cell"
    r = train_classifier(
        "ResNet", "Original", _params(**{"classifiers.seeds": [0, 1]}), data, out, tmp_path / "ck", log=lambda s: None
    )
    keep = packaged_seed({s["seed"]: s["val_auroc"] for s in r["seeds"]}, [0, 1])
    assert keep == max((0, 1), key=lambda k: (_cfg(out, k)["val_auroc"], -k))
    other = 1 - keep
    assert _cfg(out, keep)["weights_dtype"] == "float32" and _cfg(out, other)["weights_dtype"] == "bfloat16"
    assert {s["seed"]: s["weights_dtype"] for s in r["seeds"]} == {keep: "float32", other: "bfloat16"}
    full = load_file(str(out / f"seed_{keep}/model.safetensors"))
    half = load_file(str(out / f"seed_{other}/model.safetensors"))
    assert {v.dtype for v in full.values()} == {torch.float32, torch.int64}  # ResNet: BatchNorm's counters
    assert {v.dtype for v in half.values()} == {torch.bfloat16, torch.int64}
    assert all(torch.equal(full[k], half[k]) for k in full if not full[k].is_floating_point())
    size = {k: (out / f"seed_{k}/model.safetensors").stat().st_size for k in (keep, other)}
    assert 0.45 < size[other] / size[keep] < 0.55
    model, _ = load_classifier(out / f"seed_{other}")
    state = model.state_dict()
    assert all(v.dtype == torch.float32 for k, v in state.items() if half[k].is_floating_point())
    assert all(torch.equal(state[k], half[k].to(state[k].dtype)) for k in half)


def test_augmented_and_original_cells_run_the_same_optimiser_steps(tmp_path):
    """The training budget is steps, not epochs: a dataset with 3x the images gets no more optimiser steps (nor
    images seen) than Original; balanced sampling is the one imbalance rule for both."""
    small = make_pack(tmp_path / "Original", n_train=(24, 12))
    large = make_pack(tmp_path / "DCGAN", n_train=(60, 48))
    p = _params(**{"classifiers.train.patience": 100})
    a = train_classifier("ResNet", "Original", p, small, tmp_path / "a", tmp_path / "ca", log=lambda s: None)
    b = train_classifier("ResNet", "DCGAN", p, large, tmp_path / "b", tmp_path / "cb", log=lambda s: None)
    ra, rb = a["seeds"][0], b["seeds"][0]
    assert ra["steps_run"] == rb["steps_run"] == ra["steps"] == 12
    assert ra["images_seen"] == rb["images_seen"] == 12 * 8
    assert ra["imbalance"] == rb["imbalance"] == "balanced_sampling"
    assert ra["epochs_equivalent"] > rb["epochs_equivalent"]  # the same budget is more passes over fewer images
    assert [h["step"] for h in ra["history"]] == [h["step"] for h in rb["history"]] == [4, 8, 12]


def test_balanced_sampling_draws_both_classes_equally_whatever_the_counts():
    labels = np.r_[np.zeros(900), np.ones(100)].astype(int)
    batches = epoch_batches(labels, 100, "balanced_sampling", torch.Generator().manual_seed(0))
    drawn = labels[torch.cat(batches).numpy()]
    assert abs(drawn.mean() - 0.5) < 0.05  # 10 % malignant in the data, half of every pass's draws
    plain = labels[torch.cat(epoch_batches(labels, 100, "none", torch.Generator().manual_seed(0))).numpy()]
    assert plain.mean() == 0.1


def test_same_seed_same_val_metrics_and_a_different_seed_differs(tmp_path):
    data = make_pack(tmp_path / "data")
    runs = [
        train_classifier(
            "ResNet",
            "Original",
            _params(**{"classifiers.seeds": [s]}),
            data,
            tmp_path / f"o{i}",
            tmp_path / f"c{i}",
            log=lambda s: None,
        )["seeds"][0]["history"]
        for i, s in enumerate((0, 0, 1))
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_val_auroc_drives_selection_and_early_stopping(tmp_path):
    data = make_pack(tmp_path / "data")
    p = _params(**{"classifiers.train.steps": 32, "classifiers.train.patience": 1})
    r = train_classifier("ResNet", "Original", p, data, tmp_path / "o", tmp_path / "c", log=lambda s: None)["seeds"][0]
    h = r["history"]
    assert r["val_auroc"] == max(e["val_auroc"] for e in h)
    if r["stopped_early"]:
        assert r["steps_run"] < 32 and h[-1]["val_auroc"] <= r["val_auroc"]


def test_batch_must_split_evenly_over_processes(tmp_path):
    data = make_pack(tmp_path / "data")
    p = _params(**{"classifiers.train.batch_size": 9})
    with pytest.raises(ParamsError, match=r"batch_size \(9\) must be divisible by classifiers.train.processes \(2\)"):
        train_classifier("ResNet", "Original", p, data, tmp_path / "o", tmp_path / "c", Runtime(rank=0, world=2))


def _stage_project(tmp_path: Path, **over) -> Path:
    proj = tmp_path / "proj"
    make_pack(proj / "data/datasets/Original", n_train=(48, 24))
    return workspace(proj, _params(**over))


def _stage(proj: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "stages/train_classifier.py"), *args],
        cwd=proj,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def test_a_stage_validating_every_step_checkpoints_by_wall_time_not_every_step(tmp_path):
    """The study validates every 100 steps and a ViT-B checkpoint takes seconds to write: checkpoints go by
    `checkpoint_minutes`, so a cell validating at every step writes one per seed (after its last step), and says
    how its wall time split between steps and the rest."""
    over = {"classifiers.train.eval_every": 1, "classifiers.train.patience": 100, "checkpoint_minutes": 10}
    proj = _stage_project(tmp_path, **over)
    p = _stage(proj, "ResNet", "Original")
    out = p.communicate()[0]
    assert p.returncode == 0, out
    lines = [ln for ln in out.splitlines() if "in training steps; outside them" in ln]
    assert len(lines) == 1 and "(1 written)" in lines[0], out  # 12 validations, one checkpoint
    assert len(_cfg(proj / "models/classifiers/ResNet/ResNet_Original")["history"]) == 12


def test_killed_training_resumes_from_the_saved_step(tmp_path):
    """Killed during the second seed: the first seed resumes from its finished checkpoint (no retraining), the
    second from its last validation, and both end where an uninterrupted run does."""
    over = {"classifiers.train.steps": 24, "classifiers.train.batch_size": 4, "classifiers.seeds": [0, 1]}
    ref = _stage_project(tmp_path / "ref", **over)
    assert _stage(ref, "ViT", "Original").wait() == 0
    cell = "models/classifiers/ViT/ViT_Original"

    proj = _stage_project(tmp_path / "run", **over)
    ck = proj / "models/.checkpoints/classifiers/ViT_Original"
    p = _stage(proj, "ViT", "Original")
    deadline = time.time() + 120
    while not list((ck / "seed_1").glob("checkpoint_step_*.pth")) and p.poll() is None and time.time() < deadline:
        time.sleep(0.01)  # killed once the second seed has saved a validation
    p.send_signal(signal.SIGKILL)
    p.wait()
    done = sorted(int(f.stem.rsplit("_", 1)[1]) for f in (ck / "seed_1").glob("checkpoint_step_*.pth"))
    assert done and done[-1] < 24, "the kill came too late to test resuming"
    assert not (proj / cell).exists()
    rerun = _stage(proj, "ViT", "Original")
    out = rerun.communicate()[0]
    assert rerun.returncode == 0, out
    assert f"resuming from checkpoint {ck.relative_to(proj)}/seed_1/checkpoint_step_{done[-1]}.pth" in out
    assert _cfg(proj / cell, 0)["resumed_after_step"] == 24 and _cfg(proj / cell, 1)["resumed_after_step"] == done[-1]
    # same seed, same batches: the resumed run ends where the uninterrupted one did (CPU, within 1e-6)
    for seed in (0, 1):
        for a, b in zip(_cfg(proj / cell, seed)["history"], _cfg(ref / cell, seed)["history"]):
            assert a["step"] == b["step"] and abs(a["val_auroc"] - b["val_auroc"]) < 1e-6
            assert abs(a["train_loss"] - b["train_loss"]) < 1e-6
        assert _cfg(proj / cell, seed)["weights_dtype"] == _cfg(ref / cell, seed)["weights_dtype"]
        best = load_file(str(proj / cell / f"seed_{seed}/model.safetensors"))
        ref_best = load_file(str(ref / cell / f"seed_{seed}/model.safetensors"))
        assert all(best[k].dtype == ref_best[k].dtype for k in best)
        # within 1e-6 in float32; a non-packaged seed is stored in bfloat16, where two values 1e-6 apart can round
        # to neighbouring bfloat16 numbers (at most 2^-7 apart, relative)
        tol = 1e-6 if _cfg(ref / cell, seed)["weights_dtype"] == "float32" else 2**-7
        for k in best:
            diff = (best[k].double() - ref_best[k].double()).abs()
            assert (diff <= tol * ref_best[k].double().abs() + 1e-6).all(), k
    assert not ck.exists()  # deleted once the resumed run finished


def test_changed_config_starts_over_instead_of_resuming(tmp_path, monkeypatch):
    proj = _stage_project(tmp_path)
    monkeypatch.chdir(
        proj
    )  # the checkpoints a run killed after its last step would leave (finished runs delete theirs)
    monkeypatch.setattr("melanoma.classifiers.train.discard", lambda folder: None)
    train_classifier(
        "ResNet",
        "Original",
        _params(),
        proj / "data/datasets/Original",
        tmp_path / "o",
        proj / "models/.checkpoints/classifiers/ResNet_Original",
        log=lambda s: None,
    )
    yaml_p = yaml.safe_load((proj / "params.yaml").read_text())
    yaml_p["classifiers"]["models"]["ResNet"]["lr"] = 0.002
    (proj / "params.yaml").write_text(yaml.safe_dump(yaml_p, sort_keys=False))
    out = _stage(proj, "ResNet", "Original").communicate()[0]
    assert "are for another config; starting over" in out
    assert _cfg(proj / "models/classifiers/ResNet/ResNet_Original")["resumed_after_step"] is None


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    proj = _stage_project(tmp_path)
    ck = proj / "models/.checkpoints/classifiers/ResNet_Original/seed_0"
    ck.mkdir(parents=True)
    (ck / "checkpoint_step_4.pth").write_bytes(b"not a checkpoint")
    p = _stage(proj, "ResNet", "Original")
    out = p.communicate()[0]
    assert p.returncode == 1 and "Traceback" not in out
    assert f"train_classifier: error: checkpoint {ck.relative_to(proj)}/checkpoint_step_4.pth is corrupt" in out


def test_unwritable_checkpoint_is_a_clear_error_and_the_previous_one_resumes(tmp_path):
    """A write error while saving step 8 (a folder squats on its temp name: a real failure even as root, where a
    read-only folder would not stop the write) stops the stage in one line; step 4 still loads."""
    proj = _stage_project(tmp_path, **{"classifiers.train.batch_size": 4})
    ck = proj / "models/.checkpoints/classifiers/ResNet_Original/seed_0"
    p = _stage(proj, "ResNet", "Original")
    deadline = time.time() + 120
    while not (ck / "checkpoint_step_4.pth").exists() and p.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    (ck / ".checkpoint_step_8.pth.tmp" / "x").mkdir(parents=True)  # the temp name is taken by a folder
    out = p.communicate()[0]
    assert p.returncode == 1 and "Traceback" not in out, out
    assert f"cannot write checkpoint {ck.relative_to(proj)}/checkpoint_step_8.pth" in out
    assert "the previous one is kept" in out
    assert load_checkpoint(ck / "checkpoint_step_4.pth")["step"] == 4
    assert not (ck / "checkpoint_step_8.pth").exists()
    shutil.rmtree(ck / ".checkpoint_step_8.pth.tmp")  # writable again: the rerun resumes
    rerun = _stage(proj, "ResNet", "Original")
    out = rerun.communicate()[0]
    assert rerun.returncode == 0 and "after step 4" in out, out


def test_two_process_torchrun_matches_one_process_with_the_same_global_batch(tmp_path):
    """DDP on CPU (gloo): each rank takes half of every global batch and the loss is normalised over the global
    batch, so the averaged gradient equals the single-process one. ViT has no BatchNorm (per-rank batch statistics
    would differ by design), so the runs agree up to float summation order: within 1e-4."""
    over = {"classifiers.train.batch_size": 8}
    one = _stage_project(tmp_path / "one", **over)
    two = _stage_project(tmp_path / "two", **{**over, "classifiers.train.processes": 2})
    a = _stage(one, "ViT", "Original").communicate()[0]
    b = _stage(two, "ViT", "Original").communicate()[0]
    assert "2 process(es) on cpu" in b, b
    assert "1 process(es) on cpu" in a, a
    cell = "models/classifiers/ViT/ViT_Original"
    ca, cb = _cfg(one / cell), _cfg(two / cell)
    assert cb["processes"] == 2
    for x, y in zip(ca["history"], cb["history"]):
        assert abs(x["train_loss"] - y["train_loss"]) < 1e-4 and abs(x["val_auroc"] - y["val_auroc"]) < 1e-4
    assert ca["best_step"] == cb["best_step"]
    wa = load_file(str(one / cell / "seed_0/model.safetensors"))
    wb = load_file(str(two / cell / "seed_0/model.safetensors"))
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-4


def test_stage_refuses_an_unknown_arch_in_one_line(tmp_path):
    proj = _stage_project(tmp_path)
    p = _stage(proj, "ResNet50", "Original")
    out = p.communicate()[0]
    assert p.returncode == 1 and "Traceback" not in out and "ARCH in BioViT, DenseNet, ResNet" in out


def test_checkpoint_payload_is_weights_only(tmp_path, monkeypatch):
    monkeypatch.setattr("melanoma.classifiers.train.discard", lambda folder: None)  # keep it to look at
    data = make_pack(tmp_path / "data")
    train_classifier(
        "ResNet",
        "Original",
        _params(**{"classifiers.train.steps": 4}),
        data,
        tmp_path / "o",
        tmp_path / "c",
        log=lambda s: None,
    )
    state = load_checkpoint(tmp_path / "c/seed_0/checkpoint_step_4.pth")
    assert state["step"] == 4 and set(state) >= {"config_hash", "last", "task"}
    assert set(state["task"]) == {"model", "optimizer", "history", "best", "best_model"}
    assert np.isfinite(state["task"]["best"]["auroc"])


def test_checkpoints_of_other_code_are_not_resumed(tmp_path, monkeypatch):
    """DVC reruns the stage when the training code changes; resuming the old code's checkpoint would keep the old
    result, so the code's hash is part of the checkpoint's config hash."""
    code = tmp_path / "loop.py"
    code.write_text("v1")
    monkeypatch.setattr("melanoma.classifiers.train.CODE", [code])
    monkeypatch.setattr("melanoma.classifiers.train.discard", lambda folder: None)  # as if killed after the end
    data = make_pack(tmp_path / "data")
    p = _params(**{"classifiers.train.steps": 4})
    logs: list[str] = []
    train_classifier("ResNet", "Original", p, data, tmp_path / "o", tmp_path / "c", log=logs.append)
    train_classifier("ResNet", "Original", p, data, tmp_path / "o", tmp_path / "c", log=logs.append)
    assert any("resuming from checkpoint" in line for line in logs)
    code.write_text("v2")
    logs.clear()
    r = train_classifier("ResNet", "Original", p, data, tmp_path / "o", tmp_path / "c", log=logs.append)
    assert any("for another config; starting over" in line for line in logs)
    assert r["seeds"][0]["resumed_after_step"] is None


def test_a_non_finite_loss_stops_training_before_the_period_is_saved(tmp_path, monkeypatch):
    import melanoma.classifiers.train as loop

    real = loop.train_step
    calls = []

    def nan_in_second_period(*a, **kw):
        calls.append(1)
        loss = real(*a, **kw)
        return loss * float("nan") if len(calls) > 4 else loss  # eval_every 4: the second period's steps

    monkeypatch.setattr(loop, "train_step", nan_in_second_period)
    data = make_pack(tmp_path / "data")
    with pytest.raises(
        Diverged, match="ResNet_Original seed 0: train_loss became nan by step 8; lower classifiers.models.ResNet.lr"
    ):
        train_classifier("ResNet", "Original", _params(), data, tmp_path / "o", tmp_path / "c", log=lambda s: None)
    assert sorted(p.name for p in (tmp_path / "c/seed_0").glob("checkpoint_step_*.pth")) == ["checkpoint_step_4.pth"]
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "arch,spec,message",
    [
        (
            "ResNet",
            {"model": "vit_tiny_patch16_224", "kwargs": {}},
            r"as a ResNet-family network .*no attribute .layer4.",
        ),
        ("ResNet", {"model": "resnet18", "kwargs": {"foo": 1}}, r"unexpected keyword argument 'foo'"),
        (
            "ResNet",
            {"model": "resnet18", "kwargs": {"checkpoint_path": "/etc/passwd"}},
            r"kwargs sets checkpoint_path: weights are loaded only through `pretrained`",
        ),
        ("ResNet", {"model": "resnet500", "kwargs": {}}, r"Unknown model \(resnet500\)"),
        (
            "ViT",
            {"model": "vit_tiny_patch16_224", "kwargs": {"patch_size": 64}},
            r"needs an input size of at least 64 that is a multiple of 64, got 32",
        ),
        (
            "ViT",
            {"model": "vit_tiny_patch16_224", "kwargs": {"img_size": 64}},
            r"kwargs sets img_size: the project sets",
        ),
    ],
)
def test_a_member_the_family_cannot_build_is_one_params_error(arch, spec, message):
    """Honest names: a ViT cannot sit in the ResNet row; a value timm rejects names the params key, not a traceback."""
    with pytest.raises(ParamsError, match=f"classifiers.models.{arch}.*{message}"):
        build_model(arch, {**spec, "pretrained": False, "lr": 1e-3}, 2, 32)

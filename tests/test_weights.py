"""Pretrained weights on a GPU node without network: a fake Hugging Face cache holding a BiomedCLIP-layout
(open_clip) checkpoint and a timm-layout one is loaded through the real pretrained path, strict, with
HF_HUB_OFFLINE=1; `melanoma weights check` passes on it and names what is missing or does not fit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from melanoma.classifiers.registry import BIOMEDCLIP, BIOMEDCLIP_FILE
from tests.conftest import ROOT

SIZE = 32
BIOVIT = {
    "model": "vit_tiny_patch16_224",
    "pretrained": True,
    "lr": 1e-3,
    "kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2},
}
RESNET = {"model": "resnet10t", "pretrained": True, "lr": 1e-3, "kwargs": {}}
TIMM_REPO = "timm/resnet10t.c3_in1k"  # timm's default pretrained tag of resnet10t


def put(cache: Path, repo: str, name: str) -> Path:
    """The path of `name` in a Hub-cache snapshot of `repo` (refs/main -> one commit), folders made."""
    folder = cache / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs/main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
    return folder / "snapshots" / commit / name


@pytest.fixture
def project(tmp_path):
    """A folder with params.yaml asking for pretrained BioViT and ResNet, and a fake HF cache holding both."""
    import timm
    from safetensors.torch import save_file

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"]["image_size"] = SIZE
    params["classifiers"]["models"].update(BioViT=BIOVIT, ResNet=RESNET)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cache = tmp_path / "hf"
    torch.manual_seed(1)
    trunk = timm.create_model(BIOVIT["model"], num_classes=0, img_size=SIZE, **BIOVIT["kwargs"]).state_dict()
    clip = {f"visual.trunk.{k}": v for k, v in trunk.items()}
    clip["visual.head.proj.weight"] = torch.zeros(16, 32)  # open_clip's projection and text tower: dropped
    clip["text.transformer.embeddings.word_embeddings.weight"] = torch.zeros(8, 4)
    torch.save(clip, put(cache, BIOMEDCLIP, BIOMEDCLIP_FILE))
    resnet = timm.create_model(RESNET["model"], num_classes=1000).state_dict()  # the tag's 1000-class layout
    save_file({k: v.contiguous() for k, v in resnet.items()}, put(cache, TIMM_REPO, "model.safetensors"))
    env = {**os.environ, "HF_HOME": str(cache), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return tmp_path, env, clip, resnet


def run(folder: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=folder, env=env, capture_output=True, text=True, timeout=300)


LOAD = """
import json, sys, torch
from melanoma.classifiers.registry import build_model
from melanoma.params import load_params
p = load_params()
out = {}
for arch in ("BioViT", "ResNet"):
    built = build_model(arch, p["classifiers"]["models"][arch], 2, p["datasets"]["image_size"])
    sd = built.model.state_dict()
    out[arch] = {"pretrained": built.info["pretrained"], "weights": built.info["weights"],
                 "sums": {k: float(v.double().sum()) for k, v in sd.items() if v.is_floating_point()}}
json.dump(out, sys.stdout)
"""


def test_fake_cache_loads_through_the_real_pretrained_path_offline(project):
    folder, env, clip, resnet = project
    p = run(folder, env, "-c", LOAD)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    bio, res = got["BioViT"], got["ResNet"]
    assert bio["pretrained"] and BIOMEDCLIP in bio["weights"]
    for k, v in clip.items():  # every trunk tensor arrived (strict=True would have refused a missing one)
        if k.startswith("visual.trunk."):
            assert bio["sums"][k.removeprefix("visual.trunk.")] == pytest.approx(float(v.double().sum()), abs=1e-6)
    for k in ("conv1.0.weight", "layer4.0.conv2.weight"):
        assert res["sums"][k] == pytest.approx(float(resnet[k].double().sum()), abs=1e-6)


def test_weights_check_passes_offline_and_names_what_is_missing_or_does_not_fit(project):
    folder, env, clip, _ = project
    cli = ("-m", "melanoma.commands", "weights", "check")
    ok = run(folder, env, *cli)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"OK      {BIOMEDCLIP}/{BIOMEDCLIP_FILE} (classifiers.models.BioViT) {folder}/hf/hub/" in ok.stdout
    assert f"OK      {TIMM_REPO} (classifiers.models.ResNet) {folder}/hf/hub/models--timm--" in ok.stdout
    assert "2 pretrained weight(s) present and loadable offline" in ok.stdout

    cached = put(folder / "hf", TIMM_REPO, "model.safetensors")
    cached.unlink()
    missing = run(folder, {**env, "HF_HUB_OFFLINE": "0"}, *cli)  # the command goes offline by itself
    assert missing.returncode == 1
    assert f"MISSING {TIMM_REPO} (classifiers.models.ResNet): not in the Hugging Face cache" in missing.stdout
    assert "1 of 2 pretrained weight(s) not usable offline" in missing.stderr
    assert "or set classifiers.models.ResNet.pretrained: false" in missing.stderr
    assert "melanoma weights fetch" in missing.stderr and "Traceback" not in missing.stderr

    for damaged in (b"", b"not a safetensors file\n"):  # an empty or foreign file where the weights should be
        cached.write_bytes(damaged)
        broken = run(folder, env, *cli)
        assert broken.returncode == 1 and "Traceback" not in broken.stderr, broken.stderr
        assert (
            f"BROKEN  {TIMM_REPO} (classifiers.models.ResNet) {cached}: pretrained weights timm/resnet10t are "
            "in the Hugging Face cache but do not load" in broken.stdout
        ), broken.stdout
    cached.unlink()

    del clip["visual.trunk.blocks.1.mlp.fc2.weight"]  # a checkpoint of another network
    torch.save(clip, put(folder / "hf", BIOMEDCLIP, BIOMEDCLIP_FILE))
    unfit = run(folder, env, *cli)
    assert unfit.returncode == 1
    assert "BROKEN  microsoft/BiomedCLIP" in unfit.stdout and "1 missing (blocks.1.mlp.fc2.weight)" in unfit.stdout
    put(folder / "hf", BIOMEDCLIP, BIOMEDCLIP_FILE).write_bytes(b"garbage, not a torch checkpoint")
    garbage = run(folder, env, *cli)
    assert garbage.returncode == 1 and "Traceback" not in garbage.stderr, garbage.stderr
    assert (
        "BROKEN  microsoft/BiomedCLIP" in garbage.stdout and "do not load into BiomedCLIP's open_clip" in garbage.stdout
    )


def test_a_local_unet_folder_and_bad_hub_ids_are_checked_not_guessed(tmp_path):
    from melanoma.profile import profile_params
    from melanoma.weights import WeightsError, check, needed

    params = profile_params("demo")
    params["generators"]["ddpm"]["pretrained"] = str(tmp_path / "my_unet")  # a typo'd local folder
    (w,) = needed(params)
    assert w.local and check(params)[0].state == "missing" and check(params)[0].detail == "folder not found"
    (tmp_path / "my_unet").mkdir()  # there, but empty: the DDPM's own loader refuses it
    c = check(params)[0]
    assert c.state == "broken" and "cannot load a UNet2DModel" in c.detail
    params["generators"]["ddpm"]["pretrained"] = "a b/c/d"
    with pytest.raises(WeightsError, match="neither a folder on this machine nor a Hugging Face Hub repo id"):
        needed(params)
    params["generators"]["ddpm"]["pretrained"] = ""
    params["classifiers"]["models"]["ResNet"] = {**RESNET, "model": "resnet10tt"}
    with pytest.raises(
        WeightsError,
        match=r"no pretrained weights for 'resnet10tt' .*set "
        r"classifiers.models.ResNet.pretrained: false",
    ):
        needed(params)


def test_needed_lists_only_what_the_params_ask_for():
    from melanoma.profile import profile_params
    from melanoma.weights import needed

    assert needed(profile_params("demo")) == [] and needed(profile_params("rehearsal")) == []
    study = {str(w): w.key for w in needed(profile_params("study"))}
    assert study[f"{BIOMEDCLIP}/{BIOMEDCLIP_FILE}"] == "classifiers.models.BioViT"
    assert {v for v in study.values()} == {
        f"classifiers.models.{a}" for a in ("BioViT", "DenseNet", "ResNet", "Swin", "ViT")
    }  # MedViT has none


def test_fetch_takes_safetensors_first_and_says_why_a_download_failed(monkeypatch, tmp_path):
    import huggingface_hub
    from httpx2 import Request, Response  # huggingface_hub's own HTTP client
    from huggingface_hub.errors import RemoteEntryNotFoundError

    from melanoma.weights import WeightsError, fetch

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["classifiers"]["models"]["ResNet"] = RESNET
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    asked = []

    def no_safetensors(repo, name):
        asked.append((repo, name))
        if name == "model.safetensors":
            request = Request("HEAD", f"https://hf.co/{repo}")
            raise RemoteEntryNotFoundError("404", response=Response(404, request=request))
        return str(tmp_path / name)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_safetensors)
    assert [str(p.name) for _, p in fetch(params, log=lambda s: None)] == ["pytorch_model.bin"]
    assert asked == [(TIMM_REPO, "model.safetensors"), (TIMM_REPO, "pytorch_model.bin")]

    def offline(repo, name):
        raise OSError("Cannot reach https://huggingface.co/api/models: connection refused " + "x " * 200)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match="HF_HUB_OFFLINE is set, so nothing can be downloaded"):
        fetch(params, log=lambda s: None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(
        WeightsError,
        match=rf"cannot download {TIMM_REPO} for classifiers.models.ResNet "
        r"\(OSError: Cannot reach .*\.\.\.\); check the network",
    ):
        fetch(params, log=lambda s: None)

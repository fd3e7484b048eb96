"""Packages (export), the Hub round trip (offline: a Hub-layout folder and a pre-filled HF cache), and predict."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from melanoma.classifiers.registry import build_model
from melanoma.classifiers.train import train_classifier
from melanoma.commands import main as cli
from melanoma.evaluation.evaluate import evaluate_cell
from melanoma.params import load_params
from melanoma.serving.hub import HubError, model_card, repo_id
from melanoma.serving.package import (
    PARITY_TOLERANCE,
    PackageError,
    Served,
    export_cell,
    load,
    onnx_probabilities,
    prepare,
    torch_probabilities,
    write_onnx,
)
from tests.conftest import ROOT
from tests.tiny import make_pack, tiny_params

DATA = {
    "source": "demo",
    "max_side": 1024,
    "split": {
        "seed": 0,
        "fractions": {"train": 0.7, "val": 0.15, "test": 0.15},
        "counts": {"train": {"benign": 24, "malignant": 12}},
    },
    "split_rule": "lesion-grouped",
}
CELLS = {"ResNet": "ResNet_Original", "MedViT": "MedViT_Original"}  # a timm family and the one that is not


def real_images(isic: Path, n: int, size: int) -> np.ndarray:
    files = (
        sorted((isic / "folder/malignant").glob("*.jpg"))[: n // 2]
        + sorted((isic / "folder/benign").glob("*.jpg"))[: n - n // 2]
    )
    return np.stack([prepare(f, size, 1024) for f in files])


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> dict[str, Path]:
    """Tiny ResNet and MedViT cells, trained, evaluated and exported as the pipeline does."""
    root = tmp_path_factory.mktemp("package")
    p = tiny_params(**{"classifiers.train.steps": 4})
    data = make_pack(root / "data", size=32, seed=0)
    (data / "stats.json").write_text(
        json.dumps(
            {
                "dataset": "Original",
                "per_class": {"train": {"benign": 24, "malignant": 12}},
                "counts": {"train": {"benign/real": 24, "malignant/real": 12}},
            }
        )
    )
    out = {}
    for arch, cell in CELLS.items():
        train_classifier(arch, "Original", p, data, root / "models" / cell, root / "ck" / cell, log=lambda s: None)
        evaluate_cell(arch, "Original", p, root / "models" / cell, data, root / "eval" / cell)
        pkg = root / "models/export" / arch / cell
        pkg.mkdir(parents=True)
        export_cell(root / "models" / cell, root / "eval" / cell, data, pkg, 17, DATA)
        out[arch] = pkg
    return out


# ---------------------------------------------------------------- export


@pytest.mark.parametrize("arch", ["BioViT", "DenseNet", "ResNet", "Swin", "ViT", "MedViT"])
def test_onnx_matches_pytorch_on_real_images(arch, isic_sample, tmp_path):
    spec = load_params(ROOT / "params.yaml")["classifiers"]["models"][arch]  # the demo's member of each family
    torch.manual_seed(0)
    built = build_model(arch, spec, 2, 32)
    net = Served(built.model.eval(), built.info["normalisation"]["mean"], built.info["normalisation"]["std"]).eval()
    write_onnx(net, 32, tmp_path / "m.onnx", 17)
    x = real_images(isic_sample, 12, 32)
    for batch in (x[:1], x):  # the batch axis is dynamic
        diff = np.abs(onnx_probabilities(tmp_path / "m.onnx", batch) - torch_probabilities(net, batch))
        assert diff.max() <= PARITY_TOLERANCE, (arch, diff.max())
    assert torch_probabilities(net, x).std() > 0  # not a constant output that would agree trivially


@pytest.mark.slow
@pytest.mark.parametrize("arch,model", [("Swin", "swin_base_patch4_window7_224"), ("MedViT", "medvit_small")])
def test_study_size_swin_and_medvit_export(arch, model, isic_sample, tmp_path):
    built = build_model(arch, {"model": model, "pretrained": False, "kwargs": {}}, 2, 224)
    net = Served(built.model.eval(), built.info["normalisation"]["mean"], built.info["normalisation"]["std"]).eval()
    write_onnx(net, 224, tmp_path / "m.onnx", 17)
    x = real_images(isic_sample, 2, 224)
    assert np.abs(onnx_probabilities(tmp_path / "m.onnx", x) - torch_probabilities(net, x)).max() <= PARITY_TOLERANCE


def test_package_is_complete_and_pickle_free(cells):
    for arch, pkg in cells.items():
        files = {f.name for f in pkg.iterdir()}
        assert files == {"model.safetensors", "model.onnx", "model_config.json"} | (
            {"config.json"} if arch != "MedViT" else set()
        )
        cfg = json.loads((pkg / "model_config.json").read_text())
        ev = json.loads((pkg.parents[3] / "eval" / pkg.name / "metrics.json").read_text())
        assert cfg["threshold"] == ev["threshold"] and cfg["evaluation"]["test"] == ev["test"]
        assert cfg["onnx"]["parity"]["images"] == 16 and cfg["onnx"]["parity"]["max_abs_diff"] <= PARITY_TOLERANCE
        assert "history" not in cfg  # the package carries the result, not the training log
        model, _ = load(pkg)  # safetensors, strict
        assert sum(p.numel() for p in model.parameters()) == cfg["parameters"]


def test_package_stores_the_weights_once(cells):
    """The package's weights are the cell's file itself (a hardlink: one inode on disk, one DVC cache object),
    unchanged, and the ONNX graph reads every weight from it as external data instead of holding a second copy."""
    import onnx

    for pkg in cells.values():
        cfg = json.loads((pkg / "model_config.json").read_text())
        seed = cfg["evaluation"]["packaged_seed"]
        cell = pkg.parents[2] / pkg.name / f"seed_{seed}"  # the packaged seed: the best val AUROC
        assert (pkg / "model.safetensors").stat().st_ino == (cell / "model.safetensors").stat().st_ino
        assert hashlib.sha256((cell / "model.safetensors").read_bytes()).hexdigest() == cfg["weights_sha256"]
        graph = onnx.load(str(pkg / "model.onnx"), load_external_data=False)
        inline = [
            t.name
            for t in graph.graph.initializer
            if t.data_location != onnx.TensorProto.EXTERNAL and len(t.raw_data) > 64
        ]
        assert not inline, f"{pkg.name}: weights stored inside the graph: {inline[:5]}"
        external = {e.value for t in graph.graph.initializer for e in t.external_data if e.key == "location"}
        assert external == {"model.safetensors"}
        assert (pkg / "model.onnx").stat().st_size < (pkg / "model.safetensors").stat().st_size


def test_export_refuses_weights_that_are_not_the_models(cells, tmp_path):
    """The package links the file it is given: one that does not hold the model's float32 tensors (another seed's,
    or bfloat16) is refused before anything is linked."""
    from safetensors.torch import save_file

    from melanoma.classifiers.inference import load_classifier
    from melanoma.serving.package import write_package

    seed_dir = next((cells["ResNet"].parents[2] / "ResNet_Original").glob("seed_*"))
    model, cfg = load_classifier(seed_dir)
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_file(half, str(tmp_path / "half.st"))
    (tmp_path / "pkg").mkdir()
    with pytest.raises(PackageError, match=r"does not hold ResNet_Original's weights as the model has them"):
        write_package(model, cfg, np.zeros((2, 32, 32, 3), np.uint8), tmp_path / "pkg", 17, tmp_path / "half.st")
    assert not any((tmp_path / "pkg").iterdir())


def test_timm_loads_the_package_config_and_weights(cells, isic_sample):
    import timm

    ours, cfg = load(cells["ResNet"])
    theirs = timm.create_model(f"local-dir:{cells['ResNet']}", pretrained=True).eval()
    x = torch.from_numpy(real_images(isic_sample, 4, cfg["input_size"])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
    data = timm.data.resolve_data_config({}, model=theirs)
    assert list(data["mean"]) == cfg["normalisation"]["mean"] and data["input_size"][1:] == (32, 32)


def test_corrupt_weights_are_one_clear_error(cells, tmp_path, capsys):
    pkg = shutil.copytree(cells["ResNet"], tmp_path / "pkg")
    (pkg / "model.safetensors").write_bytes(b"not safetensors")
    assert cli(["predict", str(ROOT / "README.md"), "--model", str(pkg)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is not the file this package was exported with" in err and "Traceback" not in err
    cfg = json.loads((pkg / "model_config.json").read_text())
    cfg["weights_sha256"] = hashlib.sha256(b"not safetensors").hexdigest()  # the hash agrees: the file's format is
    (pkg / "model_config.json").write_text(json.dumps(cfg))  # then what is checked
    assert cli(["predict", str(ROOT / "README.md"), "--model", str(pkg)]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is not a readable safetensors file" in err and "Traceback" not in err


# ---------------------------------------------------------------- model card and repo ids


def test_model_card_carries_the_cells_metrics_and_warnings(cells):
    cfg = json.loads((cells["ResNet"] / "model_config.json").read_text())
    card = model_card(cfg, "someone/melanoma-ResNet_Original")
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "cc-by-nc-4.0" and meta["library_name"] == "timm" and "melanoma" in meta["tags"]
    got = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    test = cfg["evaluation"]["test"]
    assert got["roc_auc"] == pytest.approx(test["auroc"], abs=1e-4)
    assert got["recall"] == pytest.approx(test["sensitivity"], abs=1e-4)
    lo, hi = test["ci95"]["auroc"]
    assert f"| AUROC | {test['auroc']:.3f} | {lo:.3f} – {hi:.3f} |" in body
    assert "not a medical device" in body and "Demo model" in body and "## Intended use" in body
    assert 'timm.create_model("hf-hub:someone/melanoma-ResNet_Original", pretrained=True)' in body
    assert f"threshold **{cfg['threshold']:.4f}**" in body
    medvit = model_card(json.loads((cells["MedViT"] / "model_config.json").read_text()), "a/b")
    assert "library_name: pytorch" in medvit and "hf-hub:" not in medvit


def test_repo_id_template():
    assert repo_id("me/melanoma-{cell}", "Swin_DDPM_Upscaled") == "me/melanoma-Swin_DDPM_Upscaled"
    with pytest.raises(HubError, match="must contain"):
        repo_id("me/melanoma-models", "Swin_DDPM")
    with pytest.raises(HubError, match="not a valid Hub repo id"):
        repo_id("{cell}", "Swin_DDPM")


# ---------------------------------------------------------------- publish, cache, download (all offline)


def run(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    e = {**os.environ, "HF_HOME": str(cwd / "hf_home"), "HF_HUB_CACHE": str(cwd / "hf_cache"), **env}
    if "HF_TOKEN" not in env:
        e.pop("HF_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "melanoma.commands", *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def project(cells, tmp_path_factory) -> Path:
    """A folder laid out like this repository after `dvc repro` (params.yaml + models/export)."""
    root = tmp_path_factory.mktemp("project")
    p = yaml.safe_load((ROOT / "params.yaml").read_text())
    p["classifiers"].update(archs=list(CELLS), datasets=["Original"])
    p["publish"]["repo"] = "someone/melanoma-{cell}"
    (root / "params.yaml").write_text(yaml.safe_dump(p))
    for pkg in cells.values():
        shutil.copytree(pkg, root / "models/export" / pkg.parent.name / pkg.name)
    return root


def fill_cache(cache: Path, rid: str, folder: Path, commit: str = "0" * 39 + "1") -> None:
    """The HF cache layout huggingface_hub writes (refs/main -> snapshots/<commit>/files), filled by hand."""
    repo = cache / f"models--{rid.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_publish_dry_run_then_download_from_the_cache_round_trip(project, isic_sample):
    r = run(project, "publish", "--dry-run", "--out", "hub")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("would upload") == 2 and "https://huggingface.co/someone/melanoma-ResNet_Original" in r.stdout
    for cell in CELLS.values():
        card = (project / "hub" / cell / "README.md").read_text()
        cfg = json.loads((project / "hub" / cell / "model_config.json").read_text())
        meta = yaml.safe_load(card.split("---\n")[1])
        assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == round(
            cfg["evaluation"]["test"]["auroc"], 4
        )
        fill_cache(project / "hf_cache", f"someone/melanoma-{cell}", project / "hub" / cell)
    r = run(project, "download", "--all", "--dest", "dl", HF_HUB_OFFLINE="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("loads with strict=True") == 2
    images = sorted((isic_sample / "folder/malignant").glob("*.jpg"))[:5]
    for arch, cell in CELLS.items():
        got = project / "dl" / arch / cell
        assert {f.name for f in got.iterdir()} >= {"model.safetensors", "model.onnx", "model_config.json", "README.md"}
        a = run(project, "predict", *map(str, images), "--model", f"models/export/{arch}/{cell}", "--json")
        b = run(project, "predict", *map(str, images), "--model", str(got), "--json")
        c = run(
            project, "predict", *map(str, images), "--model", f"someone/melanoma-{cell}", "--json", HF_HUB_OFFLINE="1"
        )  # a Hub id, resolved from the cache
        assert a.returncode == b.returncode == c.returncode == 0, a.stderr + b.stderr + c.stderr
        pa, pb, pc = ([x["p_malignant"] for x in json.loads(o.stdout)["predictions"]] for o in (a, b, c))
        assert pa == pb == pc and len(pa) == 5
    # timm reads the Hub repo itself (config.json + model.safetensors) from the cache
    code = (
        "import timm, torch; from melanoma.serving.package import load\n"
        "m = timm.create_model('hf-hub:someone/melanoma-ResNet_Original', pretrained=True).eval()\n"
        "o, _ = load('models/export/ResNet/ResNet_Original')\n"
        "x = torch.rand(3, 3, 32, 32)\n"
        "print(torch.equal(m(x), o(x)))"
    )
    t = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(project / "hf_cache")},
    )
    assert t.stdout.strip() == "True", t.stderr


def test_publish_never_replaces_a_folder_it_did_not_write(project):
    cell = project / "models/classifiers/ResNet/ResNet_Original"  # a trained cell, pointed at by mistake
    cell.mkdir(parents=True)
    (cell / "model.safetensors").write_bytes(b"trained weights")
    (cell / "live").mkdir()
    r = run(project, "publish", "ResNet_Original", "--dry-run", "--out", "models/classifiers/ResNet")
    assert (
        "ResNet_Original exists and is not a folder publish wrote, or was changed since (it holds live, "
        "model.safetensors); pass --force" in one_line_error(r)
    )
    assert (cell / "model.safetensors").read_bytes() == b"trained weights"
    # a user's own README.md and config.json: the names of a Hub folder's files, not its marker
    own = project / "mine/ResNet_Original"
    own.mkdir(parents=True)
    (own / "README.md").write_text("my notes")
    (own / "config.json").write_text("{}")
    assert "is not a folder publish wrote" in one_line_error(
        run(project, "publish", "ResNet_Original", "--dry-run", "--out", "mine")
    )
    assert (own / "README.md").read_text() == "my notes" and (own / "config.json").read_text() == "{}"
    for _ in range(2):  # its own folders it rewrites freely
        assert run(project, "publish", "ResNet_Original", "--dry-run", "--out", "hub3").returncode == 0
    (project / "hub3/ResNet_Original/README.md").write_text("edited by hand")  # then changed by someone
    assert "or was changed since" in one_line_error(
        run(project, "publish", "ResNet_Original", "--dry-run", "--out", "hub3")
    )
    assert (project / "hub3/ResNet_Original/README.md").read_text() == "edited by hand"
    r = run(project, "publish", "ResNet_Original", "--dry-run", "--out", "models/classifiers/ResNet", "--force")
    assert r.returncode == 0 and not (cell / "live").exists()


def test_download_refreshes_its_own_folder_and_says_when_the_cache_is_incomplete(project, tmp_path):
    hub = tmp_path / "hub"
    assert run(project, "publish", "ResNet_Original", "--dry-run", "--out", str(hub)).returncode == 0
    cache = tmp_path / "cache"
    fill_cache(cache, "someone/melanoma-ResNet_Original", hub / "ResNet_Original")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    first = run(project, "download", "ResNet_Original", "--dest", str(tmp_path / "dl"), **env)
    again = run(project, "download", "ResNet_Original", "--dest", str(tmp_path / "dl"), **env)
    assert first.returncode == again.returncode == 0, first.stderr + again.stderr
    assert first.stdout.startswith("downloaded ") and again.stdout.startswith("refreshed ")
    (tmp_path / "dl/ResNet/ResNet_Original/notes.txt").write_text("mine")  # now it holds a file of the user's
    assert "is not a folder `melanoma download` wrote" in one_line_error(
        run(project, "download", "ResNet_Original", "--dest", str(tmp_path / "dl"), **env)
    )
    # timm's loader caches only config.json and model.safetensors of a repo
    partial = tmp_path / "partial"
    fill_cache(partial, "someone/melanoma-ResNet_Original", hub / "ResNet_Original")
    snap = next((partial / "models--someone--melanoma-ResNet_Original/snapshots").iterdir())
    for f in snap.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            f.unlink()
    line = one_line_error(
        run(
            project,
            "predict",
            str(ROOT / "README.md"),
            "--model",
            "someone/melanoma-ResNet_Original",
            HF_HUB_OFFLINE="1",
            HF_HUB_CACHE=str(partial),
        )
    )
    assert "the Hugging Face cache holds an incomplete snapshot of someone/melanoma-ResNet_Original" in line
    assert "it has config.json, model.safetensors; it lacks model.onnx, model_config.json" in line
    assert "with network access" in line


def test_publish_checks_every_package_first_and_reports_uploads_as_they_happen(project, tmp_path, monkeypatch, capsys):
    """A broken second package is found before the first upload; a failure of the second upload names the first
    as uploaded; each upload is printed when it happens."""
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, rid, private, exist_ok):
            calls.append(("create", rid))

        def upload_folder(self, repo_id, folder_path, ignore_patterns, commit_message):
            assert ".melanoma-written.json" in ignore_patterns  # the marker never reaches the Hub
            calls.append(("upload", repo_id))
            if repo_id.endswith("MedViT_Original"):
                raise ConnectionError("connection reset by peer")
            return type("Info", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.chdir(project)
    broken = project / "models/export/MedViT/MedViT_Original/model.onnx"
    kept = broken.read_bytes()
    broken.unlink()
    try:
        assert cli(["publish", "ResNet_Original", "MedViT_Original", "--out", str(tmp_path / "a")]) == 2
        out, err = capsys.readouterr()
        assert calls == [] and out == "" and "MedViT_Original lacks model.onnx" in err  # nothing was uploaded
    finally:
        broken.write_bytes(kept)
    assert cli(["publish", "ResNet_Original", "MedViT_Original", "--out", str(tmp_path / "b")]) == 2
    out, err = capsys.readouterr()
    assert out.startswith("uploaded ResNet_Original -> https://huggingface.co/someone/melanoma-ResNet_Original")
    assert "cannot upload someone/melanoma-MedViT_Original" in err
    assert "(already uploaded: ResNet_Original; run the command again for the rest)" in err
    assert [c for c in calls if c[0] == "upload"] == [
        ("upload", "someone/melanoma-ResNet_Original"),
        ("upload", "someone/melanoma-MedViT_Original"),
    ]


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_offline_and_credential_failures_are_one_line(project):
    assert "not in the local Hugging Face cache" in one_line_error(
        run(project, "download", "ViT_DDPM", "--dest", "none", HF_HUB_OFFLINE="1")
    )
    assert "no Hugging Face token: set HF_TOKEN" in one_line_error(run(project, "publish", "--out", "hub2"))
    assert "HF_HUB_OFFLINE is set" in one_line_error(
        run(project, "publish", "--out", "hub2", HF_TOKEN="hf_fake", HF_HUB_OFFLINE="1")
    )
    unreachable = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2"}  # nothing listens there
    assert "cannot be reached" in one_line_error(
        run(project, "publish", "--out", "hub2", HF_TOKEN="hf_fake", **unreachable)
    )
    assert "cannot be reached" in one_line_error(run(project, "download", "ViT_DDPM", "--dest", "none", **unreachable))
    assert "unknown cell 'Vit_DDPM'" in one_line_error(run(project, "download", "Vit_DDPM"))
    r = run(project, "download", "ResNet_Original", "--dest", "models/export", HF_HUB_OFFLINE="1")
    assert "exists" in one_line_error(r) and "--force" in r.stderr


# ---------------------------------------------------------------- predict


def odd_inputs(folder: Path, isic: Path) -> dict[str, str]:
    """The files fetch meets in the wild; value: what predict must say ('' = scored)."""
    folder.mkdir()
    src = sorted((isic / "folder/malignant").glob("*.jpg"))[0]
    im = Image.open(src).convert("RGB")
    shutil.copy(src, folder / "plain.jpg")
    im.convert("RGBA").save(folder / "rgba.png")
    im.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257).save(folder / "gray16.png")
    im.resize((6000, 4500)).save(folder / "huge.jpg", quality=80)
    data = (folder / "plain.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (folder / "notes.jpg").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    return {
        "plain.jpg": "",
        "rgba.png": "",
        "cmyk.jpg": "",
        "gray16.png": "",
        "huge.jpg": "",
        "truncated.jpg": "truncated or corrupt image",
        "notes.jpg": "not an image",
        "empty.png": "empty file",
    }


def test_predict_scores_odd_images_and_refuses_bad_ones(cells, isic_sample, tmp_path, capsys):
    expect = odd_inputs(tmp_path / "in", isic_sample)
    missing = tmp_path / "gone.jpg"
    rc = cli(["predict", str(tmp_path / "in"), str(missing), "--model", str(cells["ResNet"]), "--json"])
    out, err = capsys.readouterr()
    assert rc == 1 and "4 of 9 files refused" in err
    rows = {Path(r["path"]).name: r for r in json.loads(out)["predictions"]}
    assert set(rows) == set(expect) | {"gone.jpg"}
    assert rows["gone.jpg"]["error"] == "no such file"
    for name, reason in expect.items():
        r = rows[name]
        if reason:
            assert reason in r["error"] and r["p_malignant"] is None, (name, r)
        else:
            assert r["error"] is None and 0 <= r["p_malignant"] <= 1 and r["decision"] in ("benign", "malignant")
    # opaque alpha changes nothing: the same pixels score the same (predict never re-encodes)
    assert rows["rgba.png"]["p_malignant"] == pytest.approx(rows["plain.jpg"]["p_malignant"], abs=2e-3)
    thr = json.loads((cells["ResNet"] / "model_config.json").read_text())["threshold"]
    assert all((r["p_malignant"] >= thr) == (r["decision"] == "malignant") for r in rows.values() if not r["error"])
    # the table: one row per file, refused ones with their reason
    rc = cli(["predict", str(tmp_path / "in"), "--model", str(cells["ResNet"])])
    table = capsys.readouterr().out.splitlines()
    assert rc == 1 and table[0].startswith("# ResNet_Original") and "not a medical device" in table[0]
    assert len(table) == 2 + len(expect) and sum("refused: " in line for line in table) == 3


def test_predict_matches_the_evaluation_and_writes_gradcam(cells, isic_sample, tmp_path, capsys):
    files = sorted((isic_sample / "folder/benign").glob("*.jpg"))[:3]
    for arch, pkg in cells.items():
        assert cli(["predict", *map(str, files), "--model", str(pkg), "--gradcam", str(tmp_path / arch), "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["predictions"]
        model, cfg = load(pkg)
        x = np.stack([prepare(f, cfg["input_size"], 1024) for f in files])
        expect = onnx_probabilities(pkg / "model.onnx", x)  # the shipped graph agrees with predict's PyTorch path
        assert np.abs(np.array([r["p_malignant"] for r in rows]) - expect).max() <= PARITY_TOLERANCE
        for r in rows:
            with Image.open(r["gradcam"]) as im:
                assert im.size[0] >= cfg["input_size"] and im.mode == "RGB"


def test_gradcam_overlays_never_replace_a_users_file_and_any_name_fits(cells, isic_sample, tmp_path, capsys):
    src = sorted((isic_sample / "folder/benign").glob("*.jpg"))[0]
    long = tmp_path / f"{'x' * 240}.jpg"  # 240 + '_gradcam.png' is over the 255-byte name limit
    shutil.copy(src, long)
    shutil.copy(src, tmp_path / "a.jpg")
    (tmp_path / "a_gradcam.png").write_bytes(b"the user's own file")
    pkg = cells["ResNet"]
    for _ in range(2):  # a rerun replaces its own overlays, never the user's file
        assert (
            cli(
                [
                    "predict",
                    str(long),
                    str(tmp_path / "a.jpg"),
                    "--model",
                    str(pkg),
                    "--gradcam",
                    str(tmp_path),
                    "--json",
                ]
            )
            == 0
        )
        rows = json.loads(capsys.readouterr().out)["predictions"]
        assert (tmp_path / "a_gradcam.png").read_bytes() == b"the user's own file"
        assert Path(rows[1]["gradcam"]).name == "a_2_gradcam.png" and len(Path(rows[0]["gradcam"]).name) < 120
        assert len(list(tmp_path.glob("*_gradcam.png"))) == 3
        with Image.open(rows[1]["gradcam"]) as im:
            top = np.asarray(im.convert("L"))[:14, :]
        assert (top < 128).sum() > 30  # the caption (decision and P) is drawn on the image


def test_predict_checks_the_gradcam_folder_before_scoring(cells, isic_sample, tmp_path, capsys):
    files = sorted((isic_sample / "folder/benign").glob("*.jpg"))[:1]
    (tmp_path / "a_file").write_text("not a folder")
    assert (
        cli(
            [
                "predict",
                *map(str, files),
                "--model",
                str(cells["ResNet"]),
                "--gradcam",
                str(tmp_path / "a_file" / "cams"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "--gradcam" in err and "cannot write there" in err and "Traceback" not in err


def test_file_names_cannot_forge_rows_or_drive_the_terminal(cells, isic_sample, tmp_path, capsys):
    """A name with a newline and spaces printed a fake `0.0100 benign` row; ANSI escapes and a right-to-left
    override reached the terminal raw. Every control/format character is shown escaped, in rows and messages."""
    src = sorted((isic_sample / "folder/benign").glob("*.jpg"))[0]
    forged = tmp_path / "a.jpg\nfake.jpg       0.0100  benign\x1b[2J\u202egnp.jpg"
    shutil.copy(src, forged)
    (tmp_path / "bad\x1b[31m.jpg").write_bytes(b"not an image")
    (tmp_path / os.fsdecode(b"raw\x9b2J.jpg")).write_bytes(b"not an image")  # an undecodable byte: 8-bit CSI
    assert cli(["predict", str(tmp_path), "--model", str(cells["ResNet"])]) == 1
    out, err = capsys.readouterr()
    rows = out.splitlines()
    assert len(rows) == 2 + 3  # header, column names, one row per file: no forged row
    assert "raw\\udc9b2J.jpg" in out and "\udc9b" not in out
    assert not any(ch in out + err for ch in ("\x1b", "\u202e"))
    assert "a.jpg\\nfake.jpg       0.0100  benign\\x1b[2J\\u202egnp.jpg" in out
    assert "bad\\x1b[31m.jpg" in out
    # an error message quoting a path: one line, escaped
    assert cli(["predict", str(src), "--model", str(tmp_path / "no\npkg\x1b[0m")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no\\npkg\\x1b[0m" in err and "\x1b" not in err


def test_a_full_disk_during_gradcam_keeps_every_score(cells, isic_sample, tmp_path, capsys, monkeypatch):
    """ENOSPC while the overlays are written: the table of scores is printed whole, each unwritten overlay says so,
    one line on stderr names the path and the fix, no partial PNG stays, exit 1, no traceback."""
    import errno

    from PIL import Image as PILImage

    files = sorted((isic_sample / "folder/benign").glob("*.jpg"))[:3]
    real_save, calls = PILImage.Image.save, []

    def save(self, fp, *a, **k):
        calls.append(fp)
        if len(calls) >= 2:  # the second overlay hits a full disk half-way
            Path(fp).write_bytes(b"\x89PNG partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        return real_save(self, fp, *a, **k)

    monkeypatch.setattr(PILImage.Image, "save", save)
    rc = cli(["predict", *map(str, files), "--model", str(cells["ResNet"]), "--gradcam", str(tmp_path / "cams")])
    out, err = capsys.readouterr()
    rows = out.splitlines()[2:]
    assert rc == 1 and len(rows) == 3 and all(("benign" in r or "malignant" in r) for r in rows)
    assert sum(r.endswith("not written") for r in rows) == 2
    assert "2 GradCAM overlay(s) could not be written" in err and "No space left on device (errno 28)" in err
    assert "free space" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in (tmp_path / "cams").iterdir()] == [Path(calls[0]).name]


def test_gradcam_never_writes_through_a_link_and_one_predict_writes_a_folder(cells, isic_sample, tmp_path, capsys):
    from melanoma.io import owner_lock

    src = sorted((isic_sample / "folder/benign").glob("*.jpg"))[0]
    shutil.copy(src, tmp_path / "a.jpg")
    pkg, out, keep = cells["ResNet"], tmp_path / "cams", tmp_path / "keep"
    assert cli(["predict", str(tmp_path / "a.jpg"), "--model", str(pkg), "--gradcam", str(keep), "--json"]) == 0
    precious = (keep / "a_gradcam.png").read_bytes()  # an overlay of an earlier run, kept elsewhere
    out.mkdir()
    (out / "a_gradcam.png").symlink_to(keep / "a_gradcam.png")
    capsys.readouterr()
    assert cli(["predict", str(tmp_path / "a.jpg"), "--model", str(pkg), "--gradcam", str(out), "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["predictions"][0]
    assert Path(row["gradcam"]).name == "a_2_gradcam.png" and (keep / "a_gradcam.png").read_bytes() == precious
    with owner_lock(out):  # another predict is writing overlays there
        assert cli(["predict", str(tmp_path / "a.jpg"), "--model", str(pkg), "--gradcam", str(out)]) == 2
    o, err = capsys.readouterr()
    assert o == "" and f"cams is being written by another process (pid {os.getpid()})" in err


def test_predict_needs_a_package_not_a_training_folder(cells, tmp_path, capsys):
    folder = tmp_path / "train_out"
    folder.mkdir()
    cfg = json.loads((cells["ResNet"] / "model_config.json").read_text())
    del cfg["threshold"]
    (folder / "model_config.json").write_text(json.dumps(cfg))
    shutil.copy(cells["ResNet"] / "model.safetensors", folder)
    assert cli(["predict", str(ROOT / "README.md"), "--model", str(folder)]) == 2
    assert "no decision threshold" in capsys.readouterr().err
    assert cli(["predict", str(ROOT / "README.md"), "--model", "not/a/folder"]) == 2
    assert "neither a model folder nor a Hub repo id" in capsys.readouterr().err


def test_the_console_command_is_installed():
    exe = Path(sys.executable).parent / "melanoma"  # pyproject's [project.scripts], made by `pip install -e .`
    r = subprocess.run([str(exe), "predict", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--model" in r.stdout and "--gradcam" in r.stdout


def test_a_rewritten_weights_file_is_refused(cells, tmp_path):
    """The ONNX graph reads its weights at offsets of model.safetensors: the same tensors saved again (other
    offsets) would make it compute garbage, so load refuses any file but the exported one."""
    import shutil

    from safetensors.torch import load_file, save_file

    pkg = shutil.copytree(cells["ResNet"], tmp_path / "pkg")
    state = load_file(str(pkg / "model.safetensors"))
    save_file(state, str(pkg / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(PackageError, match=r"is not the file this package was exported with"):
        load(pkg)


def test_nan_weights_are_an_error_not_a_benign_decision(cells, tmp_path, capsys):
    import hashlib
    import shutil

    from safetensors.torch import load_file, save_file

    from tests.conftest import lesion_image

    pkg = shutil.copytree(cells["ResNet"], tmp_path / "pkg")
    state = load_file(str(pkg / "model.safetensors"))
    state = {k: v.fill_(float("nan")) if k.startswith("fc.") else v for k, v in state.items()}
    save_file(state, str(pkg / "model.safetensors"))
    cfg = json.loads((pkg / "model_config.json").read_text())
    cfg["weights_sha256"] = hashlib.sha256((pkg / "model.safetensors").read_bytes()).hexdigest()
    (pkg / "model_config.json").write_text(json.dumps(cfg))
    image = tmp_path / "lesion.png"
    lesion_image(1).save(image)
    assert cli(["predict", str(image), "--model", str(pkg)]) == 2
    err = capsys.readouterr().err
    assert "produced NaN/Inf probabilities" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"input_size": 30000}, "field 'input_size' is 30000"),
        ({"model": "hf-hub:someone/evil"}, "field 'model' is 'hf-hub:someone/evil'"),
        ({"arch": "AlexNet"}, "field 'arch' is 'AlexNet'"),
        ({"num_classes": 0}, "field 'num_classes' is 0"),
        ({"kwargs": {"checkpoint_path": "/etc/passwd"}}, "kwargs sets checkpoint_path"),
        ({"threshold": float("nan")}, "threshold is nan"),
        ({"preprocessing": {}}, "preprocessing is {}; it must be {'max_side': an integer in [64, 20000]}"),
        (
            {"classes": ["malignant", "benign"]},
            "classes is ['malignant', 'benign']; it must be ['benign', 'malignant']",
        ),
        ({"positive_class": "benign"}, "positive_class is 'benign'"),
        ({"threshold": True}, "threshold is True; it must be a number in [0, 1]"),
        ({"normalisation": {"mean": [0.5, 0.5, 0.5], "std": [0, 0, 0]}}, "normalisation is"),
        (None, "is not readable JSON"),
        ({"classes": None}, "classes is None; it must be"),
        ("-classes", "classes is 'missing'; it must be ['benign', 'malignant']"),
        ("-positive_class", "positive_class is 'missing'"),
        ("-weights_sha256", "weights_sha256 is 'missing'; it must be the sha256 of model.safetensors"),
        ({"weights_sha256": 5}, "weights_sha256 is 5"),
        ("-threshold_rule", "threshold_rule is 'missing'; it must be one line of text"),
        ({"data": "demo"}, "data is 'demo'; it must be a mapping"),
        ("-preprocessing", "preprocessing is 'missing'"),
        ("deep", "is not readable JSON (RecursionError)"),
    ],
)
def test_untrusted_package_configs_are_refused_before_building(cells, tmp_path, capsys, change, needle):
    folder = tmp_path / "pkg"
    shutil.copytree(cells["ResNet"], folder)
    cfg = json.loads((folder / "model_config.json").read_text())
    if isinstance(change, str) and change.startswith("-"):
        del cfg[change[1:]]
        change = {}
    text = (
        {None: "{not json", "deep": '{"a": ' * 100_000 + "1" + "}" * 100_000}.get(change)
        if not isinstance(change, dict)
        else json.dumps({**cfg, **change})
    )
    (folder / "model_config.json").write_text(text)
    assert cli(["predict", str(ROOT / "README.md"), "--model", str(folder)]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_predict_decodes_large_jpegs_at_reduced_scale_close_to_what_training_saw(isic_sample):
    """predict skips fetch's JPEG re-encode and decodes a large JPEG at a reduced DCT scale (at least 8x the input
    size): on the real full-resolution ISIC images (up to 2592 px) the pixels after the final resize stay within
    a mean of 1/255 of the stored-image path training used. Speed: bench/predict_speed.py."""
    from melanoma.data.datasets import resize
    from melanoma.data.images import decode_image

    files = sorted((isic_sample / "archive/images").glob("*.jpg"))
    assert len(files) >= 20
    for size in (32, 224):
        diffs = []
        for f in files:
            with Image.open(io.BytesIO(decode_image(f, 1024).data)) as im:
                stored = resize(np.asarray(im.convert("RGB")), size)
            diffs.append(np.abs(stored.astype(int) - prepare(f, size, 1024).astype(int)))
        d = np.concatenate([x.ravel() for x in diffs])
        assert d.mean() < 1.0 and d.max() <= 32, (size, d.mean(), d.max())


def test_predict_shows_progress_for_many_files_and_says_when_nothing_was_scored(cells, isic_sample, tmp_path, capsys):
    files = sorted((isic_sample / "folder/benign").glob("*.jpg"))[:12]
    assert cli(["predict", *map(str, files), "--model", str(cells["ResNet"]), "--json"]) == 0
    err = capsys.readouterr().err
    assert "predict: " in err and "/12 [" in err  # tqdm's bar on stderr; stdout stays pure JSON
    assert cli(["predict", str(tmp_path / "*.jpg"), "--model", str(cells["ResNet"])]) == 1  # an unmatched glob
    err = capsys.readouterr().err
    assert "none of the 1 files could be scored" in err and "were scored" not in err

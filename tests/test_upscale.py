"""Super-resolution of synthetic images: the SR model, its scoring against bicubic, and the upscale stage."""

import json

import numpy as np
import pytest
import torch

from melanoma.generators.upscale import (
    ESPCN,
    UpscaleError,
    bicubic,
    downscale,
    load_upscaler,
    psnr,
    ssim,
    train_upscaler,
    upscale,
    upscale_images,
)
from tests.tiny import make_project, tiny_params, with_dcgan_synthetic


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Tiny project with DCGANs, their synthetic images and a (briefly) trained upscaler."""
    p = tiny_params()
    folder = with_dcgan_synthetic(make_project(tmp_path_factory.mktemp("up"), p), p)
    logs = []
    train_upscaler(
        p,
        folder / "data/splits",
        folder / "data/raw",
        folder / "models/upscaler",
        folder / "results/upscaler/metrics.json",
        folder / "models/.checkpoints/upscaler",
        log=logs.append,
    )
    folder.joinpath("upscaler_log.txt").write_text("\n".join(logs))
    return folder


def test_psnr_and_ssim_on_known_cases():
    rng = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 32, 32, generator=rng)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-6)
    assert psnr(a, a) > 90
    noisy = (a + 0.1 * torch.randn(a.shape, generator=rng)).clamp(0, 1)
    assert ssim(a, noisy) < 0.95 and 15 < psnr(a, noisy) < 25


def test_espcn_shapes_and_bicubic_baseline():
    model = ESPCN(factor=2, channels=8)
    x = torch.rand(3, 3, 16, 16)
    assert model(x).shape == (3, 3, 32, 32)
    assert downscale(bicubic(x, 2), 2).shape == x.shape


def test_train_upscaler_scores_against_bicubic_on_val(project):
    m = json.loads((project / "results/upscaler/metrics.json").read_text())
    assert m["from_px"] == 16 and m["to_px"] == 32 and m["factor"] == 2
    assert {"psnr_sr", "psnr_bicubic", "ssim_sr", "ssim_bicubic", "beats_bicubic"} <= set(m)
    assert m["beats_bicubic"] == (m["psnr_sr"] > m["psnr_bicubic"] and m["ssim_sr"] > m["ssim_bicubic"])
    log = (project / "upscaler_log.txt").read_text()
    assert ("does NOT beat bicubic" in log) == (not m["beats_bicubic"])  # 5 steps: the stage must say so
    model = load_upscaler(project / "models/upscaler")
    assert isinstance(model, ESPCN) and model.factor == 2


@pytest.mark.parametrize("method", ["bicubic", "lanczos", "sr"])
def test_upscale_stage_each_method(project, tmp_path, method):
    p = tiny_params(**{"upscale.method": method})
    r = upscale(
        "dcgan",
        p,
        project / "data/synthetic/dcgan",
        project / "models/upscaler",
        tmp_path / "up",
        tmp_path / "sheet.png",
    )
    src = np.load(project / "data/synthetic/dcgan/malignant.npy")
    up = np.load(tmp_path / "up/malignant.npy")
    assert up.shape == (len(src), 32, 32, 3) and up.dtype == np.uint8
    assert r["counts"]["malignant"] == len(src) > 0
    # the upscaled image, shrunk back, resembles its source: the ids keep pointing at the same image
    back = downscale(torch.from_numpy(up).permute(0, 3, 1, 2).float() / 255, 2)
    err = (back - torch.from_numpy(src).permute(0, 3, 1, 2).float() / 255).abs().mean()
    assert err < 0.06
    assert (tmp_path / "sheet.png").is_file()


def test_upscale_images_handles_empty_sets():
    assert upscale_images(np.empty((0, 16, 16, 3), np.uint8), "bicubic", 2).shape == (0, 32, 32, 3)


def test_hub_method_fails_clearly(tmp_path):
    images = np.zeros((1, 16, 16, 3), np.uint8)
    with pytest.raises(UpscaleError, match="upscale 4x; upscale.factor is 2"):
        upscale_images(images, "hub", 2, hub_model="any")
    empty = tmp_path / "not-a-pipeline"
    empty.mkdir()
    with pytest.raises(UpscaleError, match=r"upscale.method=hub: cannot load .*or use upscale.method: sr"):
        upscale_images(images, "hub", 4, hub_model=str(empty))


@pytest.mark.parametrize("counts", [{"benign": 0, "malignant": 0}, {"benign": 2, "malignant": 5}])
def test_upscale_stage_writes_whole_outputs_for_empty_and_uneven_classes(project, tmp_path, counts):
    import csv

    from PIL import Image

    src = tmp_path / "synthetic"
    src.mkdir()
    rng = np.random.default_rng(0)
    for label, n in counts.items():
        np.save(src / f"{label}.npy", rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8))
    r = upscale(
        "dcgan",
        tiny_params(**{"upscale.method": "bicubic"}),
        src,
        project / "models/upscaler",
        tmp_path / "up",
        tmp_path / "sheet.png",
    )
    assert r["counts"] == counts
    with open(tmp_path / "up/manifest.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["id", "source_id", "generator", "class", "method", "factor", "path", "md5"]
        assert len(list(reader)) == sum(counts.values())
    with Image.open(tmp_path / "sheet.png") as sheet:
        grey = np.asarray(sheet.convert("L"))
    if sum(counts.values()):  # 2 classes x 3 rows of 2 images (the smaller class's count), 32 px each
        assert grey.shape[0] == 6 * 32 and grey.shape[1] > 2 * 32
        assert (grey[:, : grey.shape[1] - 64] < 128).sum() > 100  # the row labels are drawn left of the images
    else:
        assert (grey < 128).sum() > 50  # says there is nothing to upscale
    assert not list(tmp_path.glob(".*tmp*"))

"""The real images decoded once, and the five datasets: composition (per_class, both classes), identical val/test,
leakage guard, packed cache, bad synthetic input."""

import errno
import json
import os
import re

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from melanoma.data.datasets import (
    DatasetError,
    LeakageError,
    build_dataset,
    decode_real,
    load_split,
    resize,
    synthetic_counts,
)
from melanoma.generators.upscale import upscale
from melanoma.io import link_or_copy, read_csv
from tests.tiny import make_project, tiny_params, with_dcgan_synthetic

P = tiny_params(**{"upscale.method": "bicubic", "datasets.image_size": 24})


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """Tiny project with DCGAN synthetic images, plain and upscaled."""
    folder = with_dcgan_synthetic(make_project(tmp_path_factory.mktemp("ds"), P), P)
    upscale(
        "dcgan",
        P,
        folder / "data/synthetic/dcgan",
        folder / "models/upscaler",
        folder / "data/synthetic/dcgan_upscaled",
        folder / "results/upscaler/dcgan_comparison.png",
    )
    for name in ("Original", "DCGAN", "DCGAN_Upscaled"):
        build(folder, name)
    return folder


def build(folder, name, params=P, synthetic=None):
    size = params["datasets"]["image_size"]
    real = folder / f"data/real{size}"
    if not real.is_dir():  # the decode stage, once per size
        decode_real(folder / "data/splits", folder / "data/raw", size, real)
    return build_dataset(name, params, real, synthetic or folder / "data/synthetic", folder / "data/datasets" / name)


def test_synthetic_counts_fill_each_class_to_the_target():
    assert synthetic_counts({"benign": 17, "malignant": 8}, 20) == {"benign": 3, "malignant": 12}
    assert synthetic_counts({"benign": 30, "malignant": 8}, 20) == {"benign": 0, "malignant": 12}  # real kept
    assert synthetic_counts({"benign": 17, "malignant": 8}, "1x") == {"benign": 0, "malignant": 9}
    assert synthetic_counts({"benign": 17, "malignant": 8}, "2.5x") == {"benign": 26, "malignant": 35}  # 42.5 -> 43
    assert synthetic_counts({"benign": 50, "malignant": 8}, "1.13x")["benign"] == 7  # 56.5 -> 57, exactly


def test_composition_matches_params(project):
    train = read_csv(project / "data/splits/train.csv")
    real = {c: sum(r["label"] == c for r in train) for c in ("benign", "malignant")}
    target = P["datasets"]["per_class"]
    assert all(0 < n < target for n in real.values())  # so both classes need synthetic images
    for name, origin, up in (("DCGAN", "dcgan", "no"), ("DCGAN_Upscaled", "dcgan", "yes")):
        stats = json.loads((project / f"data/datasets/{name}/stats.json").read_text())
        assert stats["per_class"]["train"] == {"benign": target, "malignant": target}
        for c in real:
            assert stats["counts"]["train"][f"{c}/{origin}"] == target - real[c]
            assert stats["counts"]["train"][f"{c}/real"] == real[c]
            assert stats["synthetic_share"][c] == round((target - real[c]) / target, 4)
        assert stats["synthetic_share"]["all"] == round((2 * target - sum(real.values())) / (2 * target), 4)
        rows = [r for r in read_csv(project / f"data/datasets/{name}/manifest.csv") if r["split"] == "train"]
        synth = [r for r in rows if r["origin"] == "dcgan"]
        assert len(synth) == 2 * target - len(train) and {r["upscaled"] for r in synth} == {up}
        images, labels = load_split(project / f"data/datasets/{name}", "train")
        assert images.shape == (2 * target, 24, 24, 3) and labels.sum() == target
    original = json.loads((project / "data/datasets/Original/stats.json").read_text())
    assert original["per_class"]["train"] == real


def test_val_and_test_identical_across_datasets(project):
    """A pack a dataset takes unchanged from decode is decode's file itself (a hardlink: one inode), and those are
    the bytes np.save writes for the array it holds (so linking changes no dataset's content or hash)."""
    import io

    real = project / "data/real24"
    for split in ("train", "val", "test"):
        src = real / f"{split}.npy"
        buf = io.BytesIO()
        np.save(buf, np.load(src))
        assert buf.getvalue() == src.read_bytes()  # decode's file is what build_dataset's np.save would write
        assert (project / f"data/datasets/Original/{split}.npy").stat().st_ino == src.stat().st_ino
    for split in ("val", "test"):
        inode = (real / f"{split}.npy").stat().st_ino
        for name in ("DCGAN", "DCGAN_Upscaled"):
            assert (project / f"data/datasets/{name}/{split}.npy").stat().st_ino == inode
    for name in ("DCGAN", "DCGAN_Upscaled"):  # a train pack with synthetic images added is the dataset's own file
        train = project / f"data/datasets/{name}/train.npy"
        assert train.stat().st_ino != (real / "train.npy").stat().st_ino and train.stat().st_nlink == 1
        rows = [r for r in read_csv(project / "data/datasets/DCGAN/manifest.csv") if r["split"] == split]
        assert {r["origin"] for r in rows} == {"real"}


@pytest.mark.parametrize("error", [errno.EXDEV, errno.EPERM, errno.EMLINK])
def test_packs_are_copied_where_the_filesystem_cannot_link(project, tmp_path, monkeypatch, error):
    """Another filesystem (EXDEV), a refused link (EPERM), the link limit (EMLINK): a copy with the same bytes."""
    real = project / "data/real24"

    def no_link(src, dst, **kw):
        raise OSError(error, os.strerror(error), str(src), None, str(dst))

    monkeypatch.setattr(os, "link", no_link)
    build_dataset("Original", P, real, project / "data/synthetic", tmp_path / "Original")
    for split in ("train", "val", "test"):
        out = tmp_path / f"Original/{split}.npy"
        assert out.stat().st_ino != (real / f"{split}.npy").stat().st_ino
        assert out.read_bytes() == (real / f"{split}.npy").read_bytes()


def test_link_or_copy_raises_what_is_not_a_filesystem_limit(tmp_path, monkeypatch):
    (tmp_path / "a").write_bytes(b"x")
    (tmp_path / "b").write_bytes(b"y")
    with pytest.raises(FileExistsError):  # never replaces a file
        link_or_copy(tmp_path / "a", tmp_path / "b")
    assert (tmp_path / "b").read_bytes() == b"y"

    def failing(src, dst, **kw):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "link", failing)
    with pytest.raises(OSError, match="Input/output error"):
        link_or_copy(tmp_path / "a", tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_pack_equals_decoding_the_images(project):
    images, _ = load_split(project / "data/datasets/Original", "val")
    for i, r in enumerate(read_csv(project / "data/splits/val.csv")):
        with Image.open(project / "data/raw" / r["path"]) as im:
            assert np.array_equal(images[i], resize(np.asarray(im.convert("RGB")), 24))


@pytest.mark.parametrize("tweak", ["exact", "brighter"])
def test_leakage_guard_fires_on_a_planted_val_image(project, tmp_path, tweak):
    import shutil

    shutil.copytree(project / "data/synthetic/dcgan", tmp_path / "dcgan")
    shard = np.load(tmp_path / "dcgan/malignant.npy")
    val = read_csv(project / "data/splits/val.csv")[0]
    size = shard.shape[1]  # build at the generator size, so the planted image is not resized again
    with Image.open(project / "data/raw" / val["path"]) as im:
        planted = Image.fromarray(resize(np.asarray(im.convert("RGB")), size))
    if tweak == "brighter":
        planted = ImageEnhance.Brightness(planted).enhance(1.05)
    shard[0] = np.asarray(planted)
    np.save(tmp_path / "dcgan/malignant.npy", shard)
    params = tiny_params(**{"upscale.method": "bicubic", "datasets.image_size": size})
    before = (project / "data/datasets/DCGAN/manifest.csv").read_bytes()
    expected = "identical to" if tweak == "exact" else "a near duplicate of"
    with pytest.raises(
        LeakageError, match=f"val image {val['id']} is {expected} training image dcgan_malignant_000000"
    ):
        build(project, "DCGAN", params, synthetic=tmp_path)
    assert (project / "data/datasets/DCGAN/manifest.csv").read_bytes() == before  # nothing half-written


def test_unreadable_or_short_synthetic_set_is_a_clear_error(project, tmp_path):
    (tmp_path / "dcgan").mkdir()
    (tmp_path / "dcgan/malignant.npy").write_bytes(b"not a numpy file")
    (tmp_path / "dcgan/benign.npy").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"cannot read synthetic images .*benign.npy"):
        build(project, "DCGAN", synthetic=tmp_path)
    np.save(tmp_path / "dcgan/benign.npy", np.zeros((50, 16, 16, 3), np.uint8))  # enough benign ones
    with pytest.raises(DatasetError, match=r"cannot read synthetic images .*malignant.npy"):
        build(project, "DCGAN", synthetic=tmp_path)
    np.save(tmp_path / "dcgan/malignant.npy", np.zeros((1, 16, 16, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"synthetic malignant images needed \(datasets.per_class\) but .* has 1"):
        build(project, "DCGAN", synthetic=tmp_path)


def test_plan_counts_what_build_dataset_builds(project):
    from melanoma.plan import describe, plan

    got = plan(P, project / "data/splits")
    stats = json.loads((project / "data/datasets/DCGAN/stats.json").read_text())
    assert {c: sum(got["datasets"]["DCGAN"][c]) for c in ("benign", "malignant")} == stats["per_class"]["train"]
    assert got["datasets"]["Original"] == {c: (n, 0) for c, n in got["real"].items()}
    table = describe(got, P)
    total = 2 * P["datasets"]["per_class"]
    assert re.search(rf"\nDCGAN +{total} +{stats['per_class']['train']['benign']} = ", table), table
    assert f"{P['classifiers']['train']['steps']} optimiser steps per cell and seed" in table


@pytest.mark.parametrize("damage", ["no splits", "empty test", "vanished image"])
def test_decode_refuses_missing_or_empty_splits_before_writing(project, tmp_path, damage):
    import shutil

    splits = tmp_path / "splits"
    shutil.copytree(project / "data/splits", splits)
    raw = project / "data/raw"
    if damage == "no splits":
        shutil.rmtree(splits)
        expected = r"splits/train.csv not found; run `dvc repro split` first"
    elif damage == "empty test":
        (splits / "test.csv").write_text((splits / "test.csv").read_text().splitlines()[0] + "\n")
        expected = r"test.csv lists no images: the pipeline needs split.test_fraction"
    else:
        shutil.copytree(raw, tmp_path / "raw")
        raw = tmp_path / "raw"
        (raw / read_csv(splits / "val.csv")[0]["path"]).write_bytes(b"not an image any more")
        expected = r"cannot be decoded .*rerun `dvc repro fetch split`"
    (tmp_path / "real").mkdir()
    (tmp_path / "real/keep.txt").write_text("previous output")
    with pytest.raises(DatasetError, match=expected):
        decode_real(splits, raw, 24, tmp_path / "real")
    assert (tmp_path / "real/keep.txt").read_text() == "previous output"  # nothing replaced


@pytest.mark.parametrize(
    "damage,expected",
    [
        ("truncated", r"cannot read .*train.npy"),
        ("pickle", r"cannot read .*train.npy"),
        ("float", r"is not a uint8 \(N, S, S, 3\) image pack \(got float64"),
        ("manifest", r"is not a pack manifest"),
    ],
)
def test_damaged_packs_are_one_error_never_unpickled(project, tmp_path, damage, expected):
    import shutil

    folder = tmp_path / "DCGAN"
    shutil.copytree(project / "data/datasets/DCGAN", folder)
    pack = folder / "train.npy"
    if damage == "truncated":
        pack.write_bytes(pack.read_bytes()[:200])
    elif damage == "pickle":
        np.save(pack, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif damage == "float":
        np.save(pack, np.load(pack).astype(np.float64))
    else:
        (folder / "manifest.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DatasetError, match=expected):
        load_split(folder, "train")


def test_plan_with_an_unreadable_train_csv_is_one_error(tmp_path):
    from melanoma.plan import plan

    (tmp_path / "train.csv").write_text("id,path\nx,y\n")  # no label column
    with pytest.raises(DatasetError, match=r"cannot read the labels in .*train.csv .*rerun `dvc repro split`"):
        plan(P, tmp_path)


def test_a_per_class_adding_too_small_a_share_is_named_with_its_fix():
    from melanoma.params import share_problem, synthetic_counts, synthetic_share

    balanced = {"benign": 105, "malignant": 105}
    said = share_problem(balanced, "1x", 0.25)
    assert said == (
        "params.yaml datasets.per_class: 1x adds no synthetic image to 105 benign + 105 malignant real "
        "train images, so every augmented dataset would equal Original; set a multiple of the larger "
        "class, e.g. `dvc exp run -S datasets.per_class=2x` (50% synthetic)"
    )
    assert share_problem(balanced, "1x", 0.0) == said  # a lower minimum cannot make it add anything
    assert "holds no real images" in share_problem({"benign": 0, "malignant": 0}, "3x", 0.25)
    # the issue's own-data run: 287 per class added 25 malignant images to 771 real ones (3 %)
    small = share_problem({"benign": 516, "malignant": 262}, 287, 0.25)
    assert "adds 25 synthetic images" in small and "3.1% of each augmented set" in small and "=2x" in small
    assert "or lower datasets.min_synthetic_share" in small
    assert share_problem(balanced, 0 + 140, 0.0) == "" and share_problem(balanced, 105, 0.0)  # adds nothing: refused
    assert not share_problem({"benign": 105, "malignant": 40}, "1x", 0.25)  # the minority class is filled: 31 %
    assert synthetic_counts({"benign": 279, "malignant": 139}, "3x") == {"benign": 558, "malignant": 698}
    assert round(synthetic_share({"benign": 279, "malignant": 139}, "3x"), 3) == 0.75


def test_steps_auto_sizes_the_budget_to_an_augmented_set():
    from melanoma.params import ParamsError, budget_problem, train_steps, validate

    tp = {**P["classifiers"]["train"], "steps": "auto", "passes": 2.0, "batch_size": 32, "warmup_steps": 4}
    assert train_steps(tp, {"benign": 420, "malignant": 315}, "3x") == 158  # ceil(2 x 2,520 / 32)
    assert train_steps({**tp, "steps": 24}, {"benign": 420, "malignant": 315}, "3x") == 24  # set by hand: kept
    assert budget_problem({**tp, "eval_every": 500}, 158) == ""  # the last step validates
    assert "warmup_steps (4) must be below the 3 optimiser steps" in budget_problem(tp, 3)
    with pytest.raises(ParamsError, match=r"datasets.per_class is 'balance'; it must be a number of images per class"):
        validate({**P, "datasets": {**P["datasets"], "per_class": "balance"}})

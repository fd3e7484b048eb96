"""Grouped, stratified, seeded splitting (melanoma.data.split)."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from melanoma.data.fetch import from_demo, write_raw
from melanoma.data.releases import read_folder
from melanoma.data.split import SplitError, assign, near_duplicate_pairs, split
from melanoma.io import read_csv
from tests.conftest import make_class_folders

DEMO = {"seed": 1, "n_benign": 60, "n_malignant": 30, "image_size": 48, "label_noise": 0.0, "repeat_fraction": 0.15}


def raw_from(offer, tmp_path):
    write_raw(offer, tmp_path / "raw", max_side=1024, max_reject_fraction=0.0, workers=1)
    return tmp_path / "raw"


def tables(out):
    return {s: read_csv(out / f"{s}.csv") for s in ("train", "val", "test")}


def split_of(t):
    return {r["id"]: s for s, rows in t.items() for r in rows}


def test_stratified_counts_and_report(tmp_path):
    raw = raw_from(from_demo(DEMO), tmp_path)
    rep = split(raw, tmp_path / "splits", seed=0, val_fraction=0.2, test_fraction=0.2, near_duplicate_corr=0.993)
    t = tables(tmp_path / "splits")
    assert sum(len(v) for v in t.values()) == 90
    for s, frac in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        c = Counter(r["label"] for r in t[s])
        assert abs(c["benign"] - frac * 60) <= 3 and abs(c["malignant"] - frac * 30) <= 3
    on_disk = json.loads((tmp_path / "splits" / "split_report.json").read_text())
    assert on_disk["counts"] == rep["counts"]
    assert on_disk["counts"]["train"]["benign"] == len([r for r in t["train"] if r["label"] == "benign"])


def test_same_lesion_never_spans_two_splits(tmp_path):
    raw = raw_from(from_demo(DEMO), tmp_path)
    rep = split(raw, tmp_path / "splits", 0, 0.2, 0.2, 0.993)
    assert rep["merges"]["lesion_id"] > 0
    where = split_of(tables(tmp_path / "splits"))
    by_lesion = {}
    for r in read_csv(raw / "manifest.csv"):
        by_lesion.setdefault(r["lesion_id"], set()).add(where[r["id"]])
    assert all(len(s) == 1 for s in by_lesion.values())


def test_duplicate_pairs_land_in_the_same_split(tmp_path, label_map):
    root = make_class_folders(tmp_path / "src", 40, 40)
    # an exact copy, and a smaller re-encoded copy (near duplicate), each under another name
    (root / "benign" / "copy_of_0.jpg").write_bytes((root / "benign" / "img_0.jpg").read_bytes())
    im = Image.open(root / "malignant" / "img_3.jpg")
    im.resize((44, 33)).save(root / "malignant" / "small_3.jpg", quality=60)
    raw = raw_from(read_folder(root, label_map), tmp_path)
    for seed in range(5):  # whatever the seed, pairs stay together
        rep = split(raw, tmp_path / f"s{seed}", seed, 0.3, 0.3, 0.993)
        where = split_of(tables(tmp_path / f"s{seed}"))
        assert where["benign__copy_of_0"] == where["benign__img_0"]
        assert where["malignant__small_3"] == where["malignant__img_3"]
        assert rep["merges"]["md5"] == 1 and rep["merges"]["near_duplicate"] == 1
        assert rep["groups_merged"] == 2


def test_near_duplicate_pairs_threshold():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16))
    flat = np.full((16, 16), 7)
    thumbs = np.stack([a, a // 2 + 40, rng.integers(0, 256, (16, 16)), flat, flat]).astype(np.uint8)
    assert near_duplicate_pairs(thumbs, 0.99) == [(0, 1)]  # gain/offset changes do not hide a duplicate
    # blockwise search finds the same pairs; flat images (no structure) never pair, not even with each other
    assert near_duplicate_pairs(thumbs, 0.5, block=2) == [(0, 1)]


def test_deterministic_and_seed_sensitive(tmp_path):
    raw = raw_from(from_demo(DEMO), tmp_path)
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        split(raw, tmp_path / name, seed, 0.2, 0.2, 0.993)
    for f in ("train.csv", "val.csv", "test.csv", "split_report.json"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    assert (tmp_path / "a" / "val.csv").read_bytes() != (tmp_path / "c" / "val.csv").read_bytes()


def test_external_test_kept_apart_and_overlaps_dropped(tmp_path, label_map):
    make_class_folders(tmp_path / "src" / "train", 20, 20, seed=0)
    make_class_folders(tmp_path / "src" / "test", 3, 3, seed=500)
    leak = tmp_path / "src" / "train" / "benign" / "leak.jpg"
    leak.write_bytes((tmp_path / "src" / "test" / "benign" / "img_1.jpg").read_bytes())
    raw = raw_from(read_folder(tmp_path / "src", label_map), tmp_path)
    rep = split(raw, tmp_path / "splits", 0, 0.2, 0.2, 0.993)
    ext = read_csv(tmp_path / "splits" / "external_test.csv")
    assert len(ext) == 6 and rep["external_test"] == {"benign": 3, "malignant": 3}
    assert rep["dropped_overlapping_external_test"] == ["train__benign__leak"]
    assert "train__benign__leak" not in split_of(tables(tmp_path / "splits"))


def test_too_few_images_for_a_split_is_a_clear_error(tmp_path, label_map):
    raw = raw_from(read_folder(make_class_folders(tmp_path / "src", 5, 1), label_map), tmp_path)
    with pytest.raises(SplitError, match="split 'val' would have no malignant images"):
        split(raw, tmp_path / "splits", 0, 0.2, 0.2, 0.993)
    assert not (tmp_path / "splits").exists()


def test_assign_puts_big_groups_whole():
    groups = {0: [0, 1, 2, 3], 1: [4], 2: [5], 3: [6], 4: [7], 5: [8], 6: [9]}
    where = assign(groups, dict.fromkeys(groups, "benign"), {"train": 0.6, "val": 0.2, "test": 0.2}, seed=0)
    sizes = Counter()
    for g, s in where.items():
        sizes[s] += len(groups[g])
    assert where[0] == "train" and sizes == {"train": 6, "val": 2, "test": 2}

"""The `decode` and `build_dataset` stages: the five datasets as packed uint8 tensors at the classifier size.

`decode` decodes and resizes every real image once (data/real/: one pack per split + manifest.csv); the five
`build_dataset` stages reuse those packs and add synthetic images. Original is the real train split; DCGAN,
DCGAN_Upscaled, DDPM and DDPM_Upscaled fill each class of the *training* split up to `datasets.per_class`
images with synthetic ones of that family. A pack a dataset takes unchanged from `decode` (val, test, external
test in all five; Original's train) is a hardlink to decode's file (melanoma.io.link_or_copy), not a second
copy: one file on disk, which the DVC cache already holds and leaves linked. Every image, real or synthetic,
goes through the same final resize, so resolution alone does not give a synthetic image away. Before writing,
the stage asserts that no val/test image (exact or near duplicate) appears among the training images.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from melanoma.data.images import md5_bytes
from melanoma.data.split import near_duplicate_pairs
from melanoma.errors import MelanomaError, first_line
from melanoma.io import atomic_dir, link_or_copy, read_csv, write_csv
from melanoma.params import DATASET_SOURCES, LABELS, synthetic_counts

EVAL_SPLITS = ("val", "test", "external_test")


class DatasetError(MelanomaError):
    """The inputs of a dataset are missing, unreadable or inconsistent with params."""


class LeakageError(DatasetError):
    """A val/test image (or a near duplicate of one) is among the training images."""


def real_train_counts(splits: Path) -> dict[str, int]:
    """Real train images per label, from data/splits/train.csv."""
    labels = [r["label"] for r in read_csv(splits / "train.csv")]
    return {c: labels.count(c) for c in LABELS}


def pack_real_counts(folder: Path) -> dict[str, int]:
    """Real train images per label in a dataset folder written by `build_dataset` (its manifest's rows of origin
    'real'): the counts the training budget is sized from. DatasetError when the manifest is unreadable."""
    rows = manifest(folder / "manifest.csv")
    return {c: sum(r["split"] == "train" and r["origin"] == "real" and r["label"] == c for r in rows) for c in LABELS}


def resize(im: np.ndarray, size: int) -> np.ndarray:
    """The one final resize every image goes through (Lanczos, antialiased)."""
    if im.shape[0] == size and im.shape[1] == size:
        return im
    return np.asarray(Image.fromarray(im).resize((size, size), Image.LANCZOS, reducing_gap=3.0))


# The subgroup attributes (melanoma.evaluation.subgroups): fetch stores a release's values as meta_<attribute>
# (melanoma.data.releases.META_COLUMNS); split keeps them; every pack manifest carries them for its real images
# (empty where the release states nothing; synthetic images have none)
SUBGROUP_ATTRIBUTES = ("sex", "age", "site", "skin_type")
META = [f"meta_{a}" for a in SUBGROUP_ATTRIBUTES]
COLUMNS = ["split", "index", "id", "label", "origin", "upscaled", "path", "md5", *META]


def _decode_split(splits: Path, raw: Path, split: str, size: int) -> tuple[list[dict[str, Any]], np.ndarray]:
    rows = read_csv(splits / f"{split}.csv")
    pack = np.empty((len(rows), size, size, 3), np.uint8)
    for i, r in enumerate(rows):
        try:
            with Image.open(raw / r["path"]) as im:
                pack[i] = resize(np.asarray(im.convert("RGB")), size)
        except (OSError, ValueError, SyntaxError) as e:  # fetch decoded it once: it changed since
            raise DatasetError(
                f"{raw / r['path']} (listed in {splits / split}.csv) cannot be decoded ({e}); "
                "rerun `dvc repro fetch split`"
            ) from None
    out = [
        {
            "id": r["id"],
            "split": split,
            "label": r["label"],
            "origin": "real",
            "upscaled": "no",
            "path": (raw / r["path"]).as_posix(),
            "md5": md5_bytes(pack[i].tobytes()),
            **{m: r.get(m, "") for m in META},
        }
        for i, r in enumerate(rows)
    ]
    return out, pack


NEEDED = {
    "train": "the training set",
    "val": "split.val_fraction (the threshold and model selection)",
    "test": "split.test_fraction (the evaluation)",
}


def decode_real(splits: Path, raw: Path, size: int, out: Path) -> dict[str, int]:
    """The `decode` stage: every real image of every split decoded and resized once to `size` px, written to
    `out` as `<split>.npy` (uint8 (N, size, size, 3)) + manifest.csv. Returns images per split.

    Raises DatasetError, before writing anything, when train, val or test is missing or empty (the split stage
    has not run, or a fraction of 0 left nothing for the evaluation) or a listed image cannot be decoded."""
    for split, why in NEEDED.items():
        if not (splits / f"{split}.csv").is_file():
            raise DatasetError(f"{splits / split}.csv not found; run `dvc repro split` first")
        if not read_csv(splits / f"{split}.csv"):
            raise DatasetError(
                f"{splits / split}.csv lists no images: the pipeline needs {why}; raise the "
                "fraction or add images, then rerun `dvc repro split`"
            )
    counts = {}
    with atomic_dir(out) as tmp:
        rows = []
        for split in ("train",) + EVAL_SPLITS:
            if (splits / f"{split}.csv").is_file():
                r, pack = _decode_split(splits, raw, split, size)
                np.save(tmp / f"{split}.npy", pack)
                rows += [{**row, "index": i} for i, row in enumerate(r)]
                counts[split] = len(r)
        write_csv(tmp / "manifest.csv", rows, COLUMNS)
    return counts


def _real(real: Path, size: int) -> tuple[dict[str, list[dict[str, Any]]], dict[str, np.ndarray]]:
    """The decoded real packs and their manifest rows per split; DatasetError when absent or of another size."""
    if not (real / "manifest.csv").is_file():
        raise DatasetError(f"{real}/manifest.csv not found; run `dvc repro decode` first")
    rows: dict[str, list[dict[str, Any]]] = {}
    for r in manifest(real / "manifest.csv"):
        rows.setdefault(r["split"], []).append({k: v for k, v in r.items() if k != "index"})
    packs = {s: load_pack(real / f"{s}.npy") for s in rows}
    for s, pack in packs.items():
        if pack.shape[1:] != (size, size, 3) or len(pack) != len(rows[s]):
            raise DatasetError(
                f"{real}/{s}.npy holds {pack.shape} but datasets.image_size is {size} and the "
                f"manifest lists {len(rows[s])}; rerun `dvc repro decode`"
            )
    return rows, packs


def _synthetic(folder: Path, label: str, n: int, size: int, upscaled: bool) -> tuple[list[dict[str, Any]], np.ndarray]:
    shard = folder / f"{label}.npy"
    try:
        images = np.load(shard, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(f"cannot read synthetic images {shard}: {e}; rerun `dvc repro synthesize upscale`") from None
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise DatasetError(f"{shard} is not a uint8 (N, H, W, 3) image shard (got {images.dtype} {images.shape})")
    if n > len(images):
        raise DatasetError(
            f"{n} synthetic {label} images needed (datasets.per_class) but {shard} has "
            f"{len(images)}; rerun `dvc repro synthesize` (it samples what datasets.per_class needs)"
        )
    pack = np.stack([resize(im, size) for im in images[:n]]) if n else np.empty((0, size, size, 3), np.uint8)
    origin = folder.name.removesuffix("_upscaled")
    out = [
        {
            "id": f"{folder.name}_{label}_{i:06d}",
            "split": "train",
            "label": label,
            "origin": origin,
            "upscaled": "yes" if upscaled else "no",
            "path": f"{shard.as_posix()}#{i}",
            "md5": md5_bytes(pack[i].tobytes()),
        }
        for i in range(n)
    ]
    return out, pack


def check_leakage(
    train: np.ndarray,
    train_rows: list[dict[str, Any]],
    held_out: np.ndarray,
    held_rows: list[dict[str, Any]],
    min_corr: float,
) -> None:
    """Stop if any val/test image is byte-identical or a near duplicate of a training image."""
    train_md5 = {r["md5"]: r["id"] for r in train_rows}
    for r in held_rows:
        if r["md5"] in train_md5:
            raise LeakageError(f"{r['split']} image {r['id']} is identical to training image {train_md5[r['md5']]}")
    if not len(train) or not len(held_out):
        return
    thumbs = np.concatenate([train, held_out])
    gray = np.stack([np.asarray(Image.fromarray(im).convert("L").resize((16, 16), Image.BOX)) for im in thumbs])
    n = len(train)
    for i, j in near_duplicate_pairs(gray, min_corr):
        if i < n <= j:
            raise LeakageError(
                f"{held_rows[j - n]['split']} image {held_rows[j - n]['id']} is a near duplicate of "
                f"training image {train_rows[i]['id']} (thumbnail correlation >= {min_corr})"
            )


def build_dataset(name: str, params: dict[str, Any], real: Path, synthetic: Path, out: Path) -> dict:
    """One of the five datasets from the decoded real packs (`real`, the decode stage's folder) and, for the
    augmented ones, the synthetic shards of its family under `synthetic`; writes `out` (packs, manifest.csv,
    stats.json) and returns the stats. Raises DatasetError, LeakageError."""
    if name not in DATASET_SOURCES:
        raise DatasetError(f"unknown dataset {name}; expected one of {', '.join(DATASET_SOURCES)}")
    d = params["datasets"]
    size = d["image_size"]
    rows, packs = _real(real, size)
    if "train" not in rows or "val" not in rows:
        raise DatasetError(f"{real} has no train or val images; rerun `dvc repro split decode`")
    source = DATASET_SOURCES[name]
    unchanged = {s: real / f"{s}.npy" for s in packs}  # packs written as they are: linked to decode's files
    if source:
        unchanged.pop("train")
        want = synthetic_counts({c: sum(r["label"] == c for r in rows["train"]) for c in LABELS}, d["per_class"])
        for label in LABELS:
            r, p = _synthetic(synthetic / source, label, want[label], size, source.endswith("_upscaled"))
            rows["train"] += r
            packs["train"] = np.concatenate([packs["train"], p])
    held = [s for s in EVAL_SPLITS if s in rows]
    check_leakage(
        packs["train"],
        rows["train"],
        np.concatenate([packs[s] for s in held]),
        [r for s in held for r in rows[s]],
        params["split"]["near_duplicate_corr"],
    )
    stats = {
        "dataset": name,
        "image_size": size,
        "counts": {
            s: {
                f"{label}/{origin}": n
                for (label, origin), n in sorted(Counter((r["label"], r["origin"]) for r in rs).items())
            }
            for s, rs in rows.items()
        },
        "per_class": {s: {c: sum(r["label"] == c for r in rs) for c in LABELS} for s, rs in rows.items()},
        "synthetic_share": {
            c: round(
                sum(r["origin"] != "real" for r in rows["train"] if r["label"] == c)
                / max(1, sum(r["label"] == c for r in rows["train"])),
                4,
            )
            for c in LABELS
        }
        | {"all": round(sum(r["origin"] != "real" for r in rows["train"]) / max(1, len(rows["train"])), 4)},
    }
    with atomic_dir(out) as tmp:
        for split, pack in packs.items():
            if split in unchanged:  # the bytes np.save would write: decode saved this very array the same way
                link_or_copy(unchanged[split], tmp / f"{split}.npy")
            else:
                np.save(tmp / f"{split}.npy", pack)
        all_rows = [{**r, "index": i} for s in rows for i, r in enumerate(rows[s])]
        write_csv(tmp / "manifest.csv", all_rows, COLUMNS)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def manifest(path: Path) -> list[dict[str, str]]:
    """The rows of a pack folder's manifest.csv; DatasetError when it is unreadable, lacks the columns, or names a
    split other than train/val/test/external_test."""
    try:
        rows = read_csv(path)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read {path} ({type(e).__name__}); rerun `dvc repro decode build_dataset`") from None
    bad = [
        r
        for r in rows
        if None in r
        or not {"split", "label"} <= set(r)
        or r["split"] not in ("train",) + EVAL_SPLITS
        or r["label"] not in LABELS
    ]
    if bad:
        raise DatasetError(
            f"{path} is not a pack manifest (a row with split {bad[0].get('split')!r}, label "
            f"{bad[0].get('label')!r}); rerun `dvc repro decode build_dataset`"
        )
    return rows


def load_pack(path: Path) -> np.ndarray:
    """A uint8 (N, S, S, 3) image pack written by `decode` or `build_dataset`; DatasetError (naming the file and
    the stage to rerun) when it is missing, damaged, pickled or not such a pack. Never unpickles."""
    try:
        pack = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise DatasetError(
            f"cannot read {path} ({first_line(e, empty=type(e).__name__)}); rerun the "
            "stage that writes it (`dvc repro decode build_dataset`)"
        ) from None
    if pack.ndim != 4 or pack.shape[-1] != 3 or pack.dtype != np.uint8:
        raise DatasetError(
            f"{path} is not a uint8 (N, S, S, 3) image pack (got {pack.dtype} {pack.shape}); rerun "
            "`dvc repro decode build_dataset`"
        )
    return pack


def load_split(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """A dataset split as (uint8 images (N, S, S, 3), int64 labels with 1 = malignant), straight from the pack."""
    images = load_pack(folder / f"{split}.npy")
    labels = np.array(
        [r["label"] == "malignant" for r in manifest(folder / "manifest.csv") if r["split"] == split], dtype=np.int64
    )
    if len(labels) != len(images):
        raise DatasetError(f"{folder}: {split}.npy has {len(images)} images but manifest.csv lists {len(labels)}")
    return images, labels

"""DVC stage `build_dataset@{Dataset}`: data/real + synthetic shards -> data/datasets/{Dataset}/ (packs, manifest,
stats)."""

import sys

from melanoma.paths import DATASETS_DIR, REAL_DIR, SYNTHETIC_DIR
from melanoma.stage import run_stage, stage_params


def main() -> str:
    from melanoma.data.datasets import build_dataset

    name = sys.argv[1]
    s = build_dataset(name, stage_params("build_dataset", key=name), REAL_DIR, SYNTHETIC_DIR, DATASETS_DIR / name)
    parts = "; ".join(f"{split} " + ", ".join(f"{n} {k}" for k, n in c.items()) for split, c in s["counts"].items())
    return f"build_dataset: {name} at {s['image_size']} px: {parts} -> {DATASETS_DIR / name}"


if __name__ == "__main__":
    run_stage("build_dataset", main)

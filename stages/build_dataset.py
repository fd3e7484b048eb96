"""DVC stage `build_dataset@{Dataset}`: data/real + synthetic shards -> data/datasets/{Dataset}/ (packs, manifest, stats)."""
import sys

from melanoma.data.datasets import build_dataset
from melanoma.params import load_params
from melanoma.paths import DATASETS, REAL, SYNTHETIC
from melanoma.stage import run_stage


def main() -> str:
    name = sys.argv[1]
    s = build_dataset(name, load_params(), REAL, SYNTHETIC, DATASETS / name)
    parts = "; ".join(f"{split} " + ", ".join(f"{n} {k}" for k, n in c.items()) for split, c in s["counts"].items())
    return f"build_dataset: {name} at {s['image_size']} px: {parts} -> {DATASETS / name}"


if __name__ == "__main__":
    run_stage("build_dataset", main)

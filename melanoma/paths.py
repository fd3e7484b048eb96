"""Where stages read and write: one place, so dvc.yaml, stages and tests agree."""
from pathlib import Path

RAW = Path("data/raw")
SPLITS = Path("data/splits")
THUMBNAILS = "thumbnails.npy"  # in RAW: 16x16 grayscale thumbnail of each manifest row, in manifest order
CARD = "dataset_card.json"  # in RAW: what fetch read (format, label mapping, rejects, skips, metadata)
GENERATORS = Path("models/generators")
CHECKPOINTS = Path("models/.checkpoints")  # untracked: survives a killed stage so the rerun can resume


def generator_dir(gen: str, label: str) -> Path:
    return GENERATORS / gen / f"{gen}_{label}"
SYNTHETIC = Path("data/synthetic")
GENERATOR_RESULTS = Path("results/generators")
UPSCALER = Path("models/upscaler")
UPSCALER_RESULTS = Path("results/upscaler")
REAL = Path("data/real")  # every real image decoded once at the classifier size (decode stage)
DATASETS = Path("data/datasets")
CLASSIFIERS = Path("models/classifiers")


def classifier_dir(arch: str, dataset: str) -> Path:
    """A grid cell's folder, in the study's layout: models/classifiers/<Arch>/<Arch>_<Dataset>/."""
    return CLASSIFIERS / arch / f"{arch}_{dataset}"
EXPORT = Path("models/export")  # the packaged cells (export stage): what predict and publish read
EVALUATION = Path("results/evaluation")
BASELINE = "Baseline"  # the colour/texture baseline's grid row: results/evaluation/Baseline/Baseline_Original/
REPORT = Path("results")


def evaluation_dir(arch: str, dataset: str) -> Path:
    return EVALUATION / arch / f"{arch}_{dataset}"

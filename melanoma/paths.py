"""Where stages read and write, relative to the checkout: one place, so dvc.yaml, stages and tests agree."""

from pathlib import Path

RAW_DIR = Path("data/raw")  # fetch: images/<label>/, external_test/, manifest.csv, rejected.csv
THUMBNAILS = "thumbnails.npy"  # in RAW_DIR: 16x16 grayscale thumbnail of each manifest row, in manifest order
CARD = "dataset_card.json"  # in RAW_DIR: what fetch read (format, label mapping, rejects, skips, metadata)
SPLITS_DIR = Path("data/splits")
GENERATORS_DIR = Path("models/generators")
CHECKPOINTS_DIR = Path("models/.checkpoints")  # untracked: survives a killed stage so the rerun can resume
SYNTHETIC_DIR = Path("data/synthetic")
GENERATOR_RESULTS_DIR = Path("results/generators")
UPSCALER_DIR = Path("models/upscaler")
UPSCALER_RESULTS_DIR = Path("results/upscaler")
REAL_DIR = Path("data/real")  # every real image decoded once at the classifier size (decode stage)
DATASETS_DIR = Path("data/datasets")
CLASSIFIERS_DIR = Path("models/classifiers")
EXPORT_DIR = Path("models/export")  # the packaged cells (export stage): what predict and publish read
EVALUATION_DIR = Path("results/evaluation")
BASELINE = "Baseline"  # the colour/texture baseline's grid row: results/evaluation/Baseline/Baseline_Original/
REPORT_DIR = Path("results")


def generator_dir(gen: str, label: str) -> Path:
    """One trained generator's folder: models/generators/<gen>/<gen>_<label>/."""
    return GENERATORS_DIR / gen / f"{gen}_{label}"


def classifier_dir(arch: str, dataset: str) -> Path:
    """A grid cell's folder, in the study's layout: models/classifiers/<Arch>/<Arch>_<Dataset>/."""
    return CLASSIFIERS_DIR / arch / f"{arch}_{dataset}"


def evaluation_dir(arch: str, dataset: str) -> Path:
    """A grid cell's evaluation: results/evaluation/<Arch>/<Arch>_<Dataset>/."""
    return EVALUATION_DIR / arch / f"{arch}_{dataset}"

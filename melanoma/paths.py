"""Where stages read and write: one place, so dvc.yaml, stages and tests agree."""
from pathlib import Path

RAW = Path("data/raw")
SPLITS = Path("data/splits")
THUMBNAILS = "thumbnails.npy"  # in RAW: 16x16 grayscale thumbnail of each manifest row, in manifest order

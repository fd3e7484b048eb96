"""Where stages read and write: one place, so dvc.yaml, stages and tests agree."""
from pathlib import Path

RAW = Path("data/raw")
SPLITS = Path("data/splits")

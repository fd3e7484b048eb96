"""DVC stage `decode`: data/splits + data/raw -> data/real/ (every real image decoded and resized once to
datasets.image_size, one uint8 pack per split + manifest.csv), which all five datasets share."""

from melanoma.paths import RAW_DIR, REAL_DIR, SPLITS_DIR
from melanoma.stage import run_stage, stage_params


def main() -> str:
    from melanoma.data.datasets import decode_real

    size = stage_params("decode")["datasets"]["image_size"]
    counts = decode_real(SPLITS_DIR, RAW_DIR, size, REAL_DIR)
    return f"decode: {', '.join(f'{n} {s}' for s, n in counts.items())} real images at {size} px -> {REAL_DIR}"


if __name__ == "__main__":
    run_stage("decode", main)

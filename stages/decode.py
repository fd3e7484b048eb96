"""DVC stage `decode`: data/splits + data/raw -> data/real/ (every real image decoded and resized once to
datasets.image_size, one uint8 pack per split + manifest.csv), which all five datasets share."""
from melanoma.data.datasets import decode_real
from melanoma.params import load_params
from melanoma.paths import RAW, REAL, SPLITS
from melanoma.stage import run_stage


def main() -> str:
    size = load_params()["datasets"]["image_size"]
    counts = decode_real(SPLITS, RAW, size, REAL)
    return f"decode: {', '.join(f'{n} {s}' for s, n in counts.items())} real images at {size} px -> {REAL}"


if __name__ == "__main__":
    run_stage("decode", main)

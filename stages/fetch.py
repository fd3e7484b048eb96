"""DVC stage `fetch`: params `data.*` -> data/raw/ (images, manifest.csv, rejected.csv)."""

from melanoma.paths import RAW_DIR
from melanoma.stage import run_stage, stage_params


def main() -> str:
    from melanoma.data.fetch import collect, write_raw

    data = stage_params("fetch")["data"]
    summary = write_raw(
        collect(data),
        RAW_DIR,
        data["max_side"],
        data["max_reject_fraction"],
        max_pixels=data["max_pixels"],
        max_file_mb=data["max_file_mb"],
    )
    return summary.line(data["source"], RAW_DIR)


if __name__ == "__main__":
    run_stage("fetch", main)

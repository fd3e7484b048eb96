"""DVC stage `fetch`: params `data.*` -> data/raw/ (images, manifest.csv, rejected.csv)."""
from melanoma.data.fetch import collect, write_raw
from melanoma.params import load_params
from melanoma.paths import RAW
from melanoma.stage import run_stage


def main() -> str:
    data = load_params()["data"]
    summary = write_raw(collect(data), RAW, data["max_side"], data["max_reject_fraction"],
                        max_pixels=data["max_pixels"], max_file_mb=data["max_file_mb"])
    return summary.line(data["source"], RAW)


if __name__ == "__main__":
    run_stage("fetch", main)

"""DVC stage `split`: data/raw/manifest.csv -> data/splits/{train,val,test}.csv + split_report.json."""

from melanoma.params import sizing_line, split_problem
from melanoma.paths import RAW_DIR, SPLITS_DIR
from melanoma.stage import run_stage, stage_params


def main() -> str:
    from melanoma.data.split import split, summary_line

    params = stage_params("split")
    p = params["split"]
    report = split(
        RAW_DIR,
        SPLITS_DIR,
        p["seed"],
        p["val_fraction"],
        p["test_fraction"],
        p["near_duplicate_corr"],
        p["conflicting_labels"],
        lambda real: split_problem(params, real),
    )
    return summary_line(report, SPLITS_DIR) + "\nsplit: " + sizing_line(params, report["counts"]["train"])


if __name__ == "__main__":
    run_stage("split", main)

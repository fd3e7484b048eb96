"""DVC stage `split`: data/raw/manifest.csv -> data/splits/{train,val,test}.csv + split_report.json."""
from melanoma.data.split import split, summary_line
from melanoma.params import load_params, sizing_line, split_problem
from melanoma.paths import RAW, SPLITS
from melanoma.stage import run_stage


def main() -> str:
    params = load_params()
    p = params["split"]
    report = split(RAW, SPLITS, p["seed"], p["val_fraction"], p["test_fraction"],
                   p["near_duplicate_corr"], p["conflicting_labels"], lambda real: split_problem(params, real))
    return summary_line(report, SPLITS) + "\nsplit: " + sizing_line(params, report["counts"]["train"])


if __name__ == "__main__":
    run_stage("split", main)

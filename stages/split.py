"""DVC stage `split`: data/raw/manifest.csv -> data/splits/{train,val,test}.csv + split_report.json."""
from melanoma.data.split import split, summary_line
from melanoma.params import load_params
from melanoma.paths import RAW, SPLITS
from melanoma.stage import run_stage


def main() -> str:
    params = load_params()
    p = params["split"]
    report = split(RAW, SPLITS, p["seed"], p["val_fraction"], p["test_fraction"],
                   p["near_duplicate_corr"], p["conflicting_labels"], params["datasets"]["per_class"])
    return summary_line(report, SPLITS)


if __name__ == "__main__":
    run_stage("split", main)

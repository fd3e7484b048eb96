"""DVC stage `report`: every evaluated cell (+ the dataset card and split report) -> results/grid.csv,
results/cells/, results/pooled/, results/metrics.json, results/verdict.json, results/report/, results/report.html."""
from melanoma.params import load_params
from melanoma.paths import DATASETS, EVALUATION, RAW, REPORT, SPLITS, SYNTHETIC
from melanoma.stage import run_stage


def main() -> str:
    from melanoma.evaluation.report import build_report

    r = build_report(load_params(), EVALUATION, REPORT, SYNTHETIC, DATASETS, SPLITS, RAW)
    for line in r["sentences"]:
        print(f"report: {line}")
    gains = sum(c["verdict"] == 1 for c in r["comparisons"])
    losses = sum(c["verdict"] == -1 for c in r["comparisons"])
    return (f"report: {r['cells']} cells -> results/grid.csv, results/cells/, results/pooled/, results/metrics.json, "
            "results/verdict.json, "
            f"results/report.html; after Holm correction {gains} of {len(r['comparisons'])} comparisons with "
            f"Original show a gain, {losses} a loss")


if __name__ == "__main__":
    run_stage("report", main)

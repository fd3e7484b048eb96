"""DVC stage `report`: every evaluated cell (+ the dataset card and split report) -> results/grid.csv, results/metrics.json, results/report/, results/report.html."""
from melanoma.params import load_params
from melanoma.paths import DATASETS, EVALUATION, RAW, REPORT, SPLITS, SYNTHETIC
from melanoma.stage import run_stage


def main() -> str:
    from melanoma.evaluation.report import build_report

    r = build_report(load_params(), EVALUATION, REPORT, SYNTHETIC, DATASETS, SPLITS, RAW)
    better = sum(c["verdict"].startswith("improvement") for c in r["comparisons"])
    return (f"report: {r['cells']} cells -> results/grid.csv, results/metrics.json, results/report.html; "
            f"{better} of {len(r['comparisons'])} augmented cells show an AUROC improvement over Original (CI above 0)")


if __name__ == "__main__":
    run_stage("report", main)

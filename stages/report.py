"""DVC stage `report`: every evaluated cell (+ the dataset card and split report) -> results/grid.csv,
results/cells/, results/pooled/, results/metrics.json, results/verdict.json, results/report/, results/report.html."""

from melanoma.paths import DATASETS_DIR, EVALUATION_DIR, RAW_DIR, REPORT_DIR, SPLITS_DIR, SYNTHETIC_DIR
from melanoma.stage import run_stage, stage_params


def main() -> str:
    from melanoma.evaluation.report import build_report

    r = build_report(
        stage_params("report"), EVALUATION_DIR, REPORT_DIR, SYNTHETIC_DIR, DATASETS_DIR, SPLITS_DIR, RAW_DIR
    )
    for line in r["sentences"] + r["subgroup_sentences"]:
        print(f"report: {line}")
    gains = sum(c["verdict"] == 1 for c in r["comparisons"])
    losses = sum(c["verdict"] == -1 for c in r["comparisons"])
    return (
        f"report: {r['cells']} cells -> results/grid.csv, results/cells/, results/pooled/, results/metrics.json, "
        "results/verdict.json, "
        f"results/report.html; after Holm correction {gains} of {len(r['comparisons'])} comparisons with "
        f"Original show a gain, {losses} a loss"
    )


if __name__ == "__main__":
    run_stage("report", main)

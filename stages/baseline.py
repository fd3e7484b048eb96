"""DVC stage `baseline`: data/datasets/Original -> results/evaluation/Baseline/Baseline_Original/: colour and
texture features + logistic regression, trained on the same train split and scored on the same held-out splits
as every cell (the grid's non-trivial baseline)."""

from melanoma.paths import BASELINE, DATASETS_DIR, EVALUATION_DIR
from melanoma.stage import run_stage, stage_params


def main() -> str:
    from melanoma.evaluation.baseline import run_baseline

    out = EVALUATION_DIR / BASELINE / f"{BASELINE}_Original"
    r = run_baseline(stage_params("baseline"), DATASETS_DIR / "Original", out)
    t = r["test"]
    return (
        f"baseline: {r['model']}: test AUROC {t['auroc']:.3f} [{t['ci95']['auroc'][0]:.3f}, "
        f"{t['ci95']['auroc'][1]:.3f}], sensitivity {t['sensitivity']:.3f}, specificity {t['specificity']:.3f} "
        f"(threshold {r['threshold']:.3f}, from val) -> {out}"
    )


if __name__ == "__main__":
    run_stage("baseline", main)

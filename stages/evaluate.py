"""DVC stage `evaluate@{arch}`: every trained cell of one arch + its dataset's val/test packs ->
results/evaluation/{arch}/{arch}_{dataset}/ for each dataset in classifiers.datasets.

One process per arch rather than per cell: a cell's evaluation is about a second of work on the demo, and
each process first spends ~6 s importing torch and timm.
"""

import sys

from melanoma.params import ARCHS, ParamsError
from melanoma.paths import DATASETS_DIR, EVALUATION_DIR, classifier_dir
from melanoma.stage import run_stage, stage_params


def main() -> str:
    if len(sys.argv) != 2 or sys.argv[1] not in ARCHS:
        raise ParamsError(f"usage: evaluate.py ARCH with ARCH in {', '.join(ARCHS)} (got {' '.join(sys.argv[1:])})")
    from melanoma.engine import runtime
    from melanoma.evaluation.evaluate import evaluate_cell
    from melanoma.io import atomic_dir

    arch = sys.argv[1]
    params = stage_params("evaluate", item=arch)
    # float32: the probabilities the packages (and their ONNX graphs) reproduce
    rt = runtime(bf16=False, device=params["device"])
    datasets = params["classifiers"]["datasets"]
    with atomic_dir(EVALUATION_DIR / arch) as tmp:  # all of the arch's cells, or none
        for dataset in datasets:
            out = tmp / f"{arch}_{dataset}"
            r = evaluate_cell(arch, dataset, params, classifier_dir(arch, dataset), DATASETS_DIR / dataset, out, rt)
            t = r["over_seeds"]["test"]
            print(
                f"evaluate: {out.name}: test AUROC {t['auroc']['mean']:.3f} ± {t['auroc']['sd']:.3f} over "
                f"{len(r['seeds'])} seeds [{t['auroc']['ci95'][0]:.3f}, {t['auroc']['ci95'][1]:.3f}], sensitivity "
                f"{t['sensitivity']['mean']:.3f}, specificity {t['specificity']['mean']:.3f} (thresholds "
                f"{r['threshold_rule']}, from val); packaged seed {r['seed']}",
                flush=True,
            )
    return f"evaluate: {arch}: {len(datasets)} cells -> {EVALUATION_DIR / arch}/"


if __name__ == "__main__":
    run_stage("evaluate", main)

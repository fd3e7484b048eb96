"""DVC stage `evaluate@{arch}-{dataset}`: a trained cell + its dataset's val/test packs -> results/evaluation/{arch}/{arch}_{dataset}/."""
import sys

from melanoma.cli import run_stage
from melanoma.params import ARCHS, DATASET_NAMES, ParamsError, load_params
from melanoma.paths import DATASETS, classifier_dir, evaluation_dir


def main() -> str:
    if len(sys.argv) != 3 or sys.argv[1] not in ARCHS or sys.argv[2] not in DATASET_NAMES:
        raise ParamsError(f"usage: evaluate.py ARCH DATASET with ARCH in {', '.join(ARCHS)} and "
                          f"DATASET in {', '.join(DATASET_NAMES)} (got {' '.join(sys.argv[1:])})")
    from melanoma.evaluate import evaluate_cell

    arch, dataset = sys.argv[1:]
    out = evaluation_dir(arch, dataset)
    r = evaluate_cell(arch, dataset, load_params(), classifier_dir(arch, dataset), DATASETS / dataset, out)
    t = r["test"]
    ci = t["ci95"]
    return (f"evaluate: {out.name}: test AUROC {t['auroc']:.3f} [{ci['auroc'][0]:.3f}, {ci['auroc'][1]:.3f}], "
            f"sensitivity {t['sensitivity']:.3f}, specificity {t['specificity']:.3f} at threshold "
            f"{r['threshold']:.3f} ({r['threshold_rule']}, from val) -> {out}")


if __name__ == "__main__":
    from melanoma.classifiers import WeightsMismatch
    from melanoma.datasets import DatasetError
    from melanoma.metrics import MetricError
    from melanoma.training import CheckpointError

    run_stage("evaluate", main, (DatasetError, MetricError, CheckpointError, WeightsMismatch))

"""DVC stage `train_classifier@{arch}-{dataset}`: data/datasets/{dataset} -> models/classifiers/{arch}/{arch}_{dataset}/.

With classifiers.train.processes > 1 the script relaunches itself under torchrun (one process per rank), so
dvc.yaml's command never names a process count or a GPU.
"""
import sys

from melanoma.launch import under_torchrun
from melanoma.params import ARCHS, DATASET_NAMES, ParamsError, load_params
from melanoma.paths import CHECKPOINTS, DATASETS, classifier_dir
from melanoma.stage import run_stage


def main() -> str:
    if len(sys.argv) != 3 or sys.argv[1] not in ARCHS or sys.argv[2] not in DATASET_NAMES:
        raise ParamsError(f"usage: train_classifier.py ARCH DATASET with ARCH in {', '.join(ARCHS)} and "
                          f"DATASET in {', '.join(DATASET_NAMES)} (got {' '.join(sys.argv[1:])})")
    arch, dataset = sys.argv[1:]
    params = load_params()
    tp = params["classifiers"]["train"]
    under_torchrun(tp["processes"], tp["batch_size"], "classifiers.train")
    from melanoma.classifiers.train import train_classifier
    from melanoma.engine import runtime

    rt = runtime(bf16=params["classifiers"]["train"]["bf16"])
    out = classifier_dir(arch, dataset)
    r = train_classifier(arch, dataset, params, DATASETS / dataset, out,
                         CHECKPOINTS / "classifiers" / out.name, rt, log=print if rt.main else lambda s: None)
    if not rt.main:
        raise SystemExit(0)
    return (f"train_classifier: {out.name}: {r['model']} ({r['parameters'] / 1e6:.1f} M params) best val AUROC "
            f"{r['val_auroc']:.4f} at epoch {r['best_epoch']}/{r['epochs_run']} on {r['n_train']} train images, "
            f"{r['processes']} process(es) on {r['device']} -> {out} [{r['seconds_this_run']:.0f} s]")


if __name__ == "__main__":
    run_stage("train_classifier", main)

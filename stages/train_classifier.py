"""DVC stage `train_classifier@{arch}-{dataset}`: data/datasets/{dataset} -> models/classifiers/{arch}/{arch}_{dataset}/
seed_<k>/ for every seed in classifiers.seeds (one process for all of them: a process start costs ~5 s).

With classifiers.train.processes > 1 the script relaunches itself under torchrun (one process per rank), so
dvc.yaml's command never names a process count or a GPU.
"""

import sys

from melanoma.launch import under_torchrun
from melanoma.params import ARCHS, DATASET_NAMES, ParamsError
from melanoma.paths import CHECKPOINTS_DIR, DATASETS_DIR, classifier_dir
from melanoma.stage import run_stage, stage_params


def main() -> str:
    if len(sys.argv) != 3 or sys.argv[1] not in ARCHS or sys.argv[2] not in DATASET_NAMES:
        raise ParamsError(
            f"usage: train_classifier.py ARCH DATASET with ARCH in {', '.join(ARCHS)} and "
            f"DATASET in {', '.join(DATASET_NAMES)} (got {' '.join(sys.argv[1:])})"
        )
    arch, dataset = sys.argv[1:]
    params = stage_params("train_classifier", item={"arch": arch, "dataset": dataset})
    tp = params["classifiers"]["train"]
    under_torchrun(tp["processes"], tp["batch_size"], "classifiers.train")
    from melanoma.classifiers.train import train_classifier
    from melanoma.engine import runtime

    rt = runtime(bf16=params["classifiers"]["train"]["bf16"], device=params["device"])
    out = classifier_dir(arch, dataset)
    r = train_classifier(
        arch,
        dataset,
        params,
        DATASETS_DIR / dataset,
        out,
        CHECKPOINTS_DIR / "classifiers" / out.name,
        rt,
        log=print if rt.main else lambda s: None,
    )
    if not rt.main:
        raise SystemExit(0)
    first = r["seeds"][0]
    best = ", ".join(f"{s['val_auroc']:.3f} at step {s['best_step']}/{s['steps_run']}" for s in r["seeds"])
    return (
        f"train_classifier: {out.name}: {first['model']} ({first['parameters'] / 1e6:.1f} M params), "
        f"{len(r['seeds'])} seed(s) x {first['steps']} steps of {first['batch_size']} on {first['n_train']} train "
        f"images ({first['imbalance']}); best val AUROC per seed: {best}; {first['processes']} process(es) on "
        f"{first['device']} -> {out} [{r['seconds_this_run']:.0f} s]"
    )


if __name__ == "__main__":
    run_stage("train_classifier", main)

"""DVC stage `train_generator@{gen}-{class}`: train split images of one class -> models/generators/{gen}/{gen}_{class}/.

With generators.ddpm.processes > 1 a DDPM stage relaunches itself under torchrun (one process per GPU), so
dvc.yaml's command never names a process count or a device.
"""

import sys

from melanoma.launch import under_torchrun
from melanoma.params import GENERATORS, LABELS, ParamsError
from melanoma.paths import CHECKPOINTS_DIR, RAW_DIR, SPLITS_DIR, generator_dir
from melanoma.stage import run_stage, stage_params


def main() -> str:
    if len(sys.argv) != 3 or sys.argv[1] not in GENERATORS or sys.argv[2] not in LABELS:
        raise ParamsError(
            f"usage: train_generator.py GEN CLASS with GEN in {', '.join(GENERATORS)} and CLASS in "
            f"{', '.join(LABELS)} (got {' '.join(sys.argv[1:])})"
        )
    gen, label = sys.argv[1], sys.argv[2]
    params = stage_params("train_generator", item={"gen": gen, "cls": label})
    if gen == "ddpm":
        d = params["generators"]["ddpm"]
        under_torchrun(d["processes"], d["batch_size"], "generators.ddpm")
    from melanoma.engine import runtime
    from melanoma.generators.train import train_generator

    rt = runtime(device=params["device"])
    out = generator_dir(gen, label)
    r = train_generator(
        gen,
        label,
        params,
        SPLITS_DIR,
        RAW_DIR,
        out,
        CHECKPOINTS_DIR / out.name,
        rt,
        log=print if rt.main else lambda s: None,
    )
    if not rt.main:
        raise SystemExit(0)
    final = ", ".join(f"{k} {v:.3g}" for k, v in r["training"]["final"].items())
    return (
        f"train_generator: {gen}_{label}: {r['training']['steps']} steps on {r['n_train_images']} train images "
        f"({final}), {rt.world} process(es) on {rt.device} -> {out} [{r['seconds']:.0f} s]"
    )


if __name__ == "__main__":
    run_stage("train_generator", main)

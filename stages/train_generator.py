"""DVC stage `train_generator@{gen}-{class}`: train split images of one class -> models/generators/{gen}/{gen}_{class}/."""
import sys

from melanoma.generators import train_generator
from melanoma.params import GENERATORS, LABELS, ParamsError, load_params
from melanoma.paths import CHECKPOINTS, RAW, SPLITS, generator_dir
from melanoma.stage import run_stage


def main() -> str:
    if len(sys.argv) != 3:
        raise ParamsError(f"usage: train_generator.py GEN CLASS with GEN in {', '.join(GENERATORS)} and CLASS in "
                          f"{', '.join(LABELS)} (got {' '.join(sys.argv[1:])})")
    gen, label = sys.argv[1], sys.argv[2]
    out = generator_dir(gen, label)
    r = train_generator(gen, label, load_params(), SPLITS, RAW, out, CHECKPOINTS / out.name)
    final = ", ".join(f"{k} {v:.3g}" for k, v in r["training"]["final"].items())
    return (f"train_generator: {gen}_{label}: {r['training']['steps']} steps on {r['n_train_images']} train images "
            f"({final}) -> {out} [{r['seconds']:.0f} s]")


if __name__ == "__main__":
    run_stage("train_generator", main)

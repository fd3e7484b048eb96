"""DVC stage `synthesize@{gen}`: both class generators -> data/synthetic/{gen}/ + results/generators/{gen}/."""
import sys

from melanoma.generators.synthesize import synthesize
from melanoma.params import load_params
from melanoma.paths import GENERATOR_RESULTS, GENERATORS, RAW, SPLITS, SYNTHETIC
from melanoma.stage import run_stage


def main() -> str:
    from melanoma.engine import runtime

    gen = sys.argv[1]
    params = load_params()
    r = synthesize(gen, params, SPLITS, RAW, GENERATORS, SYNTHETIC / gen, GENERATOR_RESULTS / gen,
                   runtime(device=params["device"]))
    return (f"synthesize: {gen}: {r['malignant']['generated']} malignant + {r['benign']['generated']} benign images "
            f"-> {SYNTHETIC / gen}, quality -> {GENERATOR_RESULTS / gen}/quality.json [{r['seconds']:.0f} s]")


if __name__ == "__main__":
    run_stage("synthesize", main)

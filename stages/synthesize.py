"""DVC stage `synthesize@{gen}`: both class generators -> data/synthetic/{gen}/ + results/generators/{gen}/."""

import sys

from melanoma.paths import GENERATOR_RESULTS_DIR, GENERATORS_DIR, RAW_DIR, SPLITS_DIR, SYNTHETIC_DIR
from melanoma.stage import run_stage, stage_params


def main() -> str:
    from melanoma.engine import runtime
    from melanoma.generators.synthesize import synthesize

    gen = sys.argv[1]
    params = stage_params("synthesize", item={"gen": gen})
    r = synthesize(
        gen,
        params,
        SPLITS_DIR,
        RAW_DIR,
        GENERATORS_DIR,
        SYNTHETIC_DIR / gen,
        GENERATOR_RESULTS_DIR / gen,
        runtime(device=params["device"]),
    )
    return (
        f"synthesize: {gen}: {r['malignant']['generated']} malignant + {r['benign']['generated']} benign images "
        f"-> {SYNTHETIC_DIR / gen}, quality -> {GENERATOR_RESULTS_DIR / gen}/quality.json [{r['seconds']:.0f} s]"
    )


if __name__ == "__main__":
    run_stage("synthesize", main)

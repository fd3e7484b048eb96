"""DVC stage `upscale@{gen}`: data/synthetic/{gen}/ -> data/synthetic/{gen}_upscaled/ by params `upscale.method`."""

import sys

from melanoma.paths import SYNTHETIC_DIR, UPSCALER_DIR, UPSCALER_RESULTS_DIR
from melanoma.stage import run_stage, stage_params


def main() -> str:
    from melanoma.engine import runtime
    from melanoma.generators.upscale import upscale

    gen = sys.argv[1]
    out = SYNTHETIC_DIR / f"{gen}_upscaled"
    params = stage_params("upscale", item={"gen": gen})
    r = upscale(
        gen,
        params,
        SYNTHETIC_DIR / gen,
        UPSCALER_DIR,
        out,
        UPSCALER_RESULTS_DIR / f"{gen}_comparison.png",
        runtime(device=params["device"]),
    )
    n = ", ".join(f"{v} {k}" for k, v in r["counts"].items())
    return f"upscale: {gen}: {n} images x{r['factor']} by {r['method']} -> {out}"


if __name__ == "__main__":
    run_stage("upscale", main)

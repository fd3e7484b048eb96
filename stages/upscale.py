"""DVC stage `upscale@{gen}`: data/synthetic/{gen}/ -> data/synthetic/{gen}_upscaled/ by params `upscale.method`."""
import sys

from melanoma.engine import runtime
from melanoma.generators.upscale import upscale
from melanoma.params import load_params
from melanoma.paths import SYNTHETIC, UPSCALER, UPSCALER_RESULTS
from melanoma.stage import run_stage


def main() -> str:
    gen = sys.argv[1]
    out = SYNTHETIC / f"{gen}_upscaled"
    params = load_params()
    r = upscale(gen, params, SYNTHETIC / gen, UPSCALER, out, UPSCALER_RESULTS / f"{gen}_comparison.png",
                runtime(device=params["device"]))
    n = ", ".join(f"{v} {k}" for k, v in r["counts"].items())
    return f"upscale: {gen}: {n} images x{r['factor']} by {r['method']} -> {out}"


if __name__ == "__main__":
    run_stage("upscale", main)

"""How often the verdict's test calls a difference that is not there, and how often it finds one that is.

    .venv/bin/python bench/verdict_calibration.py [--sims 400] [--boot 1000]

Simulated scores for a demo-sized test split (30 malignant, 60 benign): each seed's model ranks malignant above
benign with a seed-specific quality (sd `--seed-sd` in the score gap) plus per-image noise. "Null": augmented and
Original come from the same process, so every rejection at 0.05 (unadjusted, one comparison) is a false
positive; "gain": the augmented process has a larger score gap (about +0.1 AUROC). Prints the rejection rate per
number of seeds. Uses melanoma.evaluation.stats.auroc_difference, the function the report uses.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def scores(rng: np.random.Generator, y: np.ndarray, seeds: int, gap: float, seed_sd: float) -> np.ndarray:
    quality = gap + rng.normal(0, seed_sd, seeds)  # one model per seed: some seeds train better
    z = quality[:, None] * y[None, :] + rng.normal(0, 1, (seeds, len(y)))
    return 1 / (1 + np.exp(-z))


def main() -> None:
    from melanoma.evaluation.stats import auroc_difference

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=400)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--seed-sd", type=float, default=0.3)
    a = ap.parse_args()
    y = np.r_[np.ones(30), np.zeros(60)].astype(int)
    print(f"{a.sims} simulated test splits of 30 malignant / 60 benign, {a.boot} resamples, seed sd {a.seed_sd}")
    for seeds in (1, 2, 3, 5):
        rng = np.random.default_rng(seeds)
        rates = {}
        for name, gain in (("null", 0.0), ("gain", 0.45)):
            hits = 0
            for i in range(a.sims):
                base = scores(rng, y, seeds, 1.2, a.seed_sd)
                aug = scores(rng, y, seeds, 1.2 + gain, a.seed_sd)
                hits += auroc_difference(y, [(aug, base)], a.boot, i)["p_value"] < 0.05
            rates[name] = hits / a.sims
        print(
            f"{seeds} seed(s): false-positive rate {rates['null']:.3f} (nominal 0.05), "
            f"power for the planted gain {rates['gain']:.3f}"
        )


if __name__ == "__main__":
    main()

"""The `synthesize` stage: sample each class's generator, store the images as packed shards, measure quality.

Per generator family it writes `data/synthetic/<gen>/` (`<class>.npy` uint8 shards (N, S, S, 3) + manifest.csv),
`results/generators/<gen>/quality.json` (for `dvc metrics show`) and contact sheets and nearest-neighbour
pairs as PNGs, and what each metric means, in `results/generators/<gen>/details/`. Shards, not thousands of
PNGs, keep `dvc status` fast.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from melanoma.data.datasets import real_train_counts, synthetic_counts
from melanoma.data.images import grid, md5_bytes
from melanoma.engine import Runtime
from melanoma.errors import MelanomaError
from melanoma.generators.data import load_train_images
from melanoma.generators.loaded import load_generator
from melanoma.generators.quality import pairs_sheet, quality
from melanoma.io import atomic_dir, write_csv
from melanoma.params import LABELS


class SynthesisError(MelanomaError):
    """A generator does not fit the current params."""


def synthesize(
    gen: str,
    params: dict[str, Any],
    splits: Path,
    raw: Path,
    generators: Path,
    data_out: Path,
    results_out: Path,
    rt: Runtime = Runtime(),
    log=print,
) -> dict[str, Any]:
    """Sample both class generators of family `gen` (found under `generators`) on `rt`'s device, as many images
    per class as the augmented datasets need to reach `datasets.per_class`; store shards, measure quality (the
    C2ST critic trains on the same device). Raises SynthesisError, NonFiniteSamples, FileNotFoundError."""
    p = params["synthesize"]
    size = params["generators"]["image_size"]
    want = synthetic_counts(real_train_counts(splits), params["datasets"]["per_class"])
    rows, report, notes = [], {}, {}
    t0 = time.perf_counter()
    with atomic_dir(data_out) as data_tmp, atomic_dir(results_out / "details") as details_tmp:
        for label in LABELS:
            folder = generators / gen / f"{gen}_{label}"
            g = load_generator(folder, rt)
            if g.image_size != size:
                raise SynthesisError(
                    f"{folder} makes {g.image_size}px images but generators.image_size is {size}; rerun train_generator"
                )
            images = g.sample(want[label], seed=p["seed"], batch_size=p["batch_size"])
            np.save(data_tmp / f"{label}.npy", images)
            for i, im in enumerate(images):
                rows.append(
                    {
                        "id": f"{gen}_{label}_{i:06d}",
                        "generator": gen,
                        "class": label,
                        "seed": p["seed"],
                        "index": i,
                        "path": f"{label}.npy#{i}",
                        "md5": md5_bytes(im.tobytes()),
                    }
                )
            real, _ = load_train_images(splits, raw, label, size)
            n_eval = min(p["quality_samples"], len(real))
            extra = g.sample(max(0, n_eval - len(images)), seed=p["seed"] + 1, batch_size=p["batch_size"])
            fake = np.concatenate([images[:n_eval], extra])
            metrics, notes[label], worst = quality(real, fake, p["seed"], p["memorisation_ratio"], rt=rt)
            report[label] = {"generated": len(images), **metrics}
            grid(fake[:64]).save(details_tmp / f"{gen}_{label}_samples.png")
            pairs_sheet(fake, real, worst).save(details_tmp / f"{gen}_{label}_nearest_real.png")
            log(
                f"synthesize: {gen}_{label}: {len(images)} images, C2ST AUC {metrics['c2st_auc']:.3f}, "
                f"memorised {metrics['memorised_fraction']:.1%}, diversity ratio {metrics['diversity_ratio']:.2f}"
            )
        (details_tmp / "quality_notes.json").write_text(json.dumps(notes, indent=2) + "\n")
        write_csv(data_tmp / "manifest.csv", rows, ["id", "generator", "class", "seed", "index", "path", "md5"])
    (results_out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report

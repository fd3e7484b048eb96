"""FLOPs per image of the DCGAN's and the SR model's training steps and of SR inference, at the study's shapes.

    .venv/bin/python bench/step_flops.py [--out melanoma/reference/step_flops_<date>.jsonl]

The H200 reference measured the DCGAN's training rate (kind dcgan, 64 px, fp32) but nothing of the ESPCN SR model
(`train_upscaler`, `upscale@*`). melanoma/estimate.py gives those stages a labelled stand-in rate: the FLOP/s the
DCGAN's step reached on the H200 (its images/s x its FLOPs per image, counted here), divided by the SR step's FLOPs
per image. Both are small convolution nets, but the SR model is smaller still and works on larger maps, so the
stand-in is a rough one, never counted as covered. Each step is the project's own engine task (DCGANTask,
SRTask) and the upscaler's forward, counted with torch.utils.flop_counter.FlopCounterMode (forward and backward)
on the CPU at the study profile's sizes and batches, then divided by the batch. Seconds on a 2-core machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from melanoma.estimate import REFERENCE  # noqa: E402
from melanoma.profile import profile_params  # noqa: E402

COMMAND = "python bench/step_flops.py"


def counted(fn: Any) -> float:
    """FLOPs of calling `fn()` (forward and backward, whatever it runs)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def records(p: dict[str, Any]) -> list[dict[str, Any]]:
    """The three records: dcgan_train, sr_train, sr_infer (GFLOP per image) at the params' sizes."""
    import torch

    from melanoma.engine import Runtime
    from melanoma.generators.dcgan import DCGANTask
    from melanoma.generators.upscale import SRTask, downscale

    g, u = p["generators"], p["upscale"]
    size, factor = g["image_size"], u["factor"]
    rt = Runtime()
    dcgan = DCGANTask(g["dcgan"], torch.rand(2 * g["dcgan"]["batch_size"], 3, size, size) * 2 - 1, size, 0, rt)
    sr = SRTask(u["sr"], factor, torch.rand(2 * u["sr"]["batch_size"], 3, size * factor, size * factor), 0, rt)
    lr = downscale(torch.rand(1, 3, size * factor, size * factor), factor)
    with torch.no_grad():
        infer = counted(lambda: sr.model(lr))
    return [
        {"kind": "step_flops", "step": "dcgan_train", "size": size, "batch": g["dcgan"]["batch_size"],
         "ngf": g["dcgan"]["ngf"], "ndf": g["dcgan"]["ndf"],
         "gflop_per_image": round(counted(lambda: dcgan.step(0)) / g["dcgan"]["batch_size"] / 1e9, 4)},
        {"kind": "step_flops", "step": "sr_train", "size": size * factor, "factor": factor,
         "batch": u["sr"]["batch_size"], "channels": u["sr"]["channels"],
         "gflop_per_image": round(counted(lambda: sr.step(0)) / u["sr"]["batch_size"] / 1e9, 4)},
        {"kind": "step_flops", "step": "sr_infer", "size": size * factor, "factor": factor, "batch": 1,
         "channels": u["sr"]["channels"], "gflop_per_image": round(infer / 1e9, 4)},
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    """Count the three steps at the study profile's shapes and write their records."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="the .jsonl to write (default: melanoma/reference/...)")
    a = ap.parse_args(argv)
    today = datetime.date.today().isoformat()
    out = a.out or REFERENCE / f"step_flops_{today}.jsonl"
    common = {"counter": "torch.utils.flop_counter.FlopCounterMode", "t": today, "command": COMMAND}
    rows = [{**r, **common} for r in records(profile_params("study", ROOT / "profiles"))]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    for r in rows:
        print(f"{r['step']}: {r['gflop_per_image']} GFLOP per image at {r['size']} px")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

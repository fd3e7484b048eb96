"""FLOPs of one forward pass of the study's DDPM UNet, as the H200 reference measured it and as the study builds it.

    .venv/bin/python bench/unet_flops.py [--out melanoma/reference/unet_flops_<date>.jsonl]

The reference's DDPM training rate (melanoma/reference/gpu_anchor_h200_2026-11-27.jsonl, kind ddpm_train) was
measured on a 113.7 M-parameter UNet with self-attention only in its lowest (2 x 2) block; the study profile's
UNet attends at the blocks given by generators.ddpm.attention_resolutions. melanoma/estimate.py scales the
reference rate by the ratio of these two figures (compute per image; a rate in images/s goes as its inverse).
Both UNets are built by the project's own unet_config (block_out_channels, layers_per_block from the study
profile) and counted with torch.utils.flop_counter.FlopCounterMode at batch 1 on the CPU (a FLOP count does not
depend on the device). Seconds on a 2-core machine.
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

COMMAND = "python bench/unet_flops.py"


def count(image_size: int, ddpm: dict[str, Any], attention: list[int]) -> dict[str, Any]:
    """Parameters and FLOPs of one forward (batch 1) of the UNet `ddpm` describes with `attention`."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from melanoma.generators.ddpm import build_unet, unet_config

    unet = build_unet(unet_config(image_size, ddpm["block_out_channels"], ddpm["layers_per_block"], attention)).eval()
    x, t = torch.randn(1, 3, image_size, image_size), torch.tensor([500])
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        unet(x, t)
    return {
        "params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 2),
        "gflop_forward": round(fc.get_total_flops() / 1e9, 3),
    }


def main(argv: list[str] | None = None) -> None:
    """Count both UNets and write the two records."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="the .jsonl to write (default: melanoma/reference/...)")
    a = ap.parse_args(argv)
    today = datetime.date.today().isoformat()
    out = a.out or REFERENCE / f"unet_flops_{today}.jsonl"
    p = profile_params("study", ROOT / "profiles")
    size, ddpm = p["generators"]["image_size"], p["generators"]["ddpm"]
    lowest = size // 2 ** (len(ddpm["block_out_channels"]) - 1)
    records = [
        {
            "kind": "unet_flops",
            "config": "reference",
            "attention_resolutions": [lowest],
            "what": "the UNet the H200 ddpm_train record measured: attention only in the lowest block",
        },
        {
            "kind": "unet_flops",
            "config": "study",
            "attention_resolutions": list(ddpm["attention_resolutions"]),
            "what": "profiles/study.yaml's generators.ddpm",
        },
    ]
    common = {
        "size": size,
        "batch": 1,
        "block_out_channels": ddpm["block_out_channels"],
        "layers_per_block": ddpm["layers_per_block"],
        "counter": "torch.utils.flop_counter.FlopCounterMode",
        "t": today,
        "command": COMMAND,
    }
    records = [{**r, **count(size, ddpm, r["attention_resolutions"]), **common} for r in records]
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    for r in records:
        print(f"{r['config']}: attention at {r['attention_resolutions']} px, {r['params_m']} M params, "
              f"{r['gflop_forward']} GFLOP per forward at batch 1")  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""Per-stage GPU time and disk footprint (peak and final) estimates for the full-scale study on one NVIDIA H200,
line by line.

    .venv/bin/python bench/study_estimate.py [--profile study] [--reference DIR] [--json PATH]
        [--real-train-benign 730] [--real-train-malignant 370] [--real-val 165] [--real-test 165]
        [--external-test 659]

The arithmetic is melanoma/estimate.py's (the same `melanoma plan` totals); the rates are the records the package
ships in melanoma/reference/: measured on an H200 for the GPU work, by bench/cpu_rates.py on a 2-core machine for
the CPU work. The params are profile `--profile` (default study), resolved
without touching params.yaml. The real data sizes are assumptions (the defaults match an ISIC run with about
1,100 train images). About a second, no torch import.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from melanoma.estimate import (  # noqa: E402
    ASSUMED,
    MACHINE_DISK_BYTES,
    NOT_COVERED_EXTRA,
    REFERENCE,
    TARGET_BYTES,
    Disk,
    Estimate,
    Sizes,
    Times,
    load_reference,
    loader_ratio,
    print_disk,
    print_header,
    print_summary,
    print_times,
    stage_estimates,
)
from melanoma.profile import profile_params  # noqa: E402


def count(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (got {n})")
    return n


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The CLI: profile, reference folder, assumed real data sizes, JSON output."""
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--profile", default="study", help="the profile to estimate (default study)")
    ap.add_argument(
        "--reference",
        type=Path,
        default=REFERENCE,
        help="folder of the H200 reference .jsonl files (default: melanoma/reference)",
    )
    ap.add_argument("--real-train-benign", type=count, default=ASSUMED.train["benign"])
    ap.add_argument("--real-train-malignant", type=count, default=ASSUMED.train["malignant"])
    ap.add_argument("--real-val", type=count, default=ASSUMED.val)
    ap.add_argument("--real-test", type=count, default=ASSUMED.test)
    ap.add_argument("--external-test", type=count, default=ASSUMED.external)
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Estimate, print, and optionally write JSON."""
    a = parse_args(argv)
    if a.json and not a.json.parent.is_dir():
        raise SystemExit(f"study_estimate: the folder of --json ({a.json.parent}) does not exist")
    ref = load_reference(a.reference)
    sizes = Sizes(
        {"benign": a.real_train_benign, "malignant": a.real_train_malignant}, a.real_val, a.real_test, a.external_test
    )
    p = profile_params(a.profile, ROOT / "profiles")
    print_header(ref, sizes, p, loader_ratio(ref)[1], a.profile)
    est = stage_estimates(p, ref, sizes)
    print_times(est)
    t, missing = print_summary(est)
    d = print_disk(p, ref, sizes)
    if a.json:
        write_json(a.json, a, p, est, t, missing, d)
        print(f"wrote {a.json}")


def write_json(
    path: Path,
    a: argparse.Namespace,
    p: dict[str, Any],
    est: list[Estimate],
    t: Times,
    missing: list[str],
    d: Disk,
) -> None:
    """The same figures as the tables, machine-readable."""
    doc = {
        "assumptions": {k: v for k, v in vars(a).items() if k.startswith(("real_", "external"))},
        "profile": a.profile,
        "reference": str(a.reference),
        "study": {
            "generators_image_size": p["generators"]["image_size"],
            "datasets": p["datasets"],
            "train": p["classifiers"]["train"],
        },
        "stages": [asdict(e) for e in est],
        "covered_seconds": t.gpu,
        "stand_in_seconds": t.stand_in,
        "cpu_seconds": t.cpu,
        "gpu_hours": t.gpu / 3600,
        "cpu_hours": t.cpu / 3600,
        "total_hours": t.total / 3600,
        "not_covered": missing + NOT_COVERED_EXTRA,
        "disk": [asdict(i) for i in d.items],
        "disk_peak": [asdict(c) for c in d.peaks],
        "environment": [asdict(i) for i in d.env],
        "disk_final_bytes": d.final,
        "disk_peak_bytes": d.peak,
        "environment_bytes": d.environment,
        "disk_target_bytes": TARGET_BYTES,
        "machine_disk_bytes": MACHINE_DISK_BYTES,
        "fits": d.fits,
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

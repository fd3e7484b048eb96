"""What a run will build, before it runs: training images per dataset and synthetic images per generator and
class, from params.yaml and, once `split` has run, the real train counts in data/splits/train.csv.

    melanoma plan        # also printed by `./run.sh study` before `dvc repro`
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from melanoma.data.datasets import DatasetError, real_train_counts
from melanoma.params import DATASETS, LABELS, adds_nothing, synthetic_counts


def plan(params: dict[str, Any], splits: Path) -> dict[str, Any]:
    """{"per_class", "real" (per label, None before `split`), "datasets": {name: {label: (real, synthetic)} or
    None where unknown}, "synthesize": {label: count or None}}. Counts are numbers of training images."""
    per_class = params["datasets"]["per_class"]
    real = _real_counts(splits / "train.csv") if (splits / "train.csv").is_file() else None
    if real is not None and _split_source(splits / "train.csv") not in (None, params["data"]["source"]):
        real = None  # the split of another data source (e.g. the demo's, after `melanoma profile study`): stale
    if real is not None:
        fill = synthetic_counts(real, per_class)
    elif per_class != "balance":  # before split: each class is filled to per_class (if it has fewer real images)
        fill = {c: None for c in LABELS}
    else:
        fill = None
    out: dict[str, Any] = {"per_class": per_class, "real": real, "synthesize": fill, "datasets": {}}
    for name, source in DATASETS.items():
        if not source:
            out["datasets"][name] = {c: (real[c], 0) for c in LABELS} if real else None
        elif fill is None:
            out["datasets"][name] = None
        else:
            out["datasets"][name] = {c: ((real or {}).get(c), fill[c]) for c in LABELS}
    return out


def _split_source(path: Path) -> str | None:
    """The data.source the split in `path` was made from (its rows' `source`), None when it does not say."""
    from melanoma.io import read_csv

    try:
        sources = {r.get("source") for r in read_csv(path)}
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    return sources.pop() if len(sources) == 1 else None


def _real_counts(path: Path) -> dict[str, int]:
    """Real train images per label from the split stage's train.csv; DatasetError when it is unreadable."""
    try:
        return real_train_counts(path.parent)
    except (OSError, KeyError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read the labels in {path} ({type(e).__name__}: {e}); rerun `dvc repro split`") from None


def describe(p: dict[str, Any]) -> str:
    """The plan as a table (what `melanoma plan` prints)."""
    per_class, real = p["per_class"], p["real"]
    head = (f"plan: datasets.per_class = {per_class}; real train images: "
            + (", ".join(f"{real[c]} {c}" for c in LABELS) if real else "not known until `dvc repro split` has run"))
    lines = [head, f"{'dataset':<16}{'train images':>14}  " + "  ".join(f"{c + ' (real + synthetic)':<30}" for c in LABELS)]
    for name, counts in p["datasets"].items():
        if counts is None:
            lines.append(f"{name:<16}{'?':>14}  (needs the real counts: run `dvc repro split`)")
            continue
        cells, total = [], 0
        for c in LABELS:
            r, s = counts[c]
            if r is None:  # before split, with a numeric target
                cells.append(f"{per_class} (real, then synthetic)")
                total = None
            else:
                cells.append(f"{r + s} = {r} + {s}")
                total = None if total is None else total + r + s
        shown = str(total) if total is not None else (f"{2 * per_class}*" if DATASETS[name] else "all real")
        lines.append(f"{name:<16}{shown:>14}  " + "  ".join(f"{x:<30}" for x in cells))
    fill = p["synthesize"]
    if fill is not None:
        each = ", ".join(f"{c} {'up to ' + str(per_class) if n is None else n}" for c, n in fill.items())
        lines.append(f"synthesize@dcgan, synthesize@ddpm: {each} synthetic images per generator family")
    if real is None and per_class != "balance":
        lines.append(f"* when each class has at most {per_class} real train images (more real ones are all kept)")
    if real is not None and adds_nothing(real, per_class):
        lines.append(f"! {adds_nothing(real, per_class)} (`dvc repro split` refuses this)")
    return "\n".join(lines)

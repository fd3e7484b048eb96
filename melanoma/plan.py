"""What a run will build and cost, before it runs: the profile in effect, the grid (archs x datasets x seeds =
trainings), training images per dataset and synthetic images per generator and class, the DVC stages that
will run, and the estimated GPU time and disk on one H200 (melanoma.estimate, from the reference rates this
package ships). Real counts come from data/splits once `split` has run; before that they are assumed.

    melanoma plan        # also printed by `./run.sh study` (and all that `./run.sh study --dry` does)
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from melanoma.data.datasets import DatasetError, real_train_counts
from melanoma.errors import first_line
from melanoma.params import DATASET_SOURCES, LABELS, passes, split_problem, synthetic_counts, train_size, train_steps

if TYPE_CHECKING:
    from melanoma.estimate import Sizes


def plan(params: dict[str, Any], splits: Path) -> dict[str, Any]:
    """{"real": real train images per label (None before `split`, or when the split is another source's),
    "counts": the real counts the plan uses (the split's, else assumed_counts'), "assumed": what the assumed
    counts rest on ('' for the split's own), "datasets": {name: {label: (real, synthetic)}}, "steps": optimiser
    steps per cell and seed}. Counts are numbers of training images."""
    real = _real_counts(splits / "train.csv") if (splits / "train.csv").is_file() else None
    if real is not None and _split_source(splits / "train.csv") not in (None, params["data"]["source"]):
        real = None  # the split of another data source (e.g. the demo's, after `melanoma profile study`): stale
    counts, basis = (real, "") if real is not None else assumed_counts(params)
    per_class = params["datasets"]["per_class"]
    fill = synthetic_counts(counts, per_class)
    return {
        "real": real,
        "counts": counts,
        "assumed": basis,
        "steps": train_steps(params["classifiers"]["train"], counts, per_class),
        "datasets": {
            name: {c: (counts[c], fill[c] if source else 0) for c in LABELS} for name, source in DATASET_SOURCES.items()
        },
    }


def assumed_counts(params: dict[str, Any]) -> tuple[dict[str, int], str]:
    """Real train images per label before `split` has run, and what they rest on: the demo's own sizes times the
    train fraction, or for any other source an ISIC run of ~1,100 train images (melanoma.estimate.ASSUMED)."""
    from melanoma.estimate import ASSUMED

    if params["data"]["source"] == "demo":
        frac = 1 - params["split"]["val_fraction"] - params["split"]["test_fraction"]
        demo = params["data"]["demo"]
        return (
            {c: round(demo[f"n_{c}"] * frac) for c in LABELS},
            "data.demo's n_benign and n_malignant x the train fraction",
        )
    return dict(ASSUMED.train), "an ISIC run of ~1,100"


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
        raise DatasetError(
            f"cannot read the labels in {path} ({type(e).__name__}: {e}); rerun `dvc repro split`"
        ) from None


def describe(p: dict[str, Any], params: dict[str, Any]) -> str:
    """The images-per-dataset table of a plan: real + synthetic per class, the synthetic share, and the training
    budget (steps, and passes over each dataset); '!' lines for what `split` refuses or what trains too little."""
    d, tp, real, steps = params["datasets"], params["classifiers"]["train"], p["counts"], p["steps"]
    budget = (
        f"{tp['steps']:,} optimiser steps of {tp['batch_size']} per cell and seed"
        if tp["steps"] != "auto"
        else f"steps: auto = {tp['passes']:g} passes over an augmented set, in batches of {tp['batch_size']}"
    )
    lines = [
        f"plan: datasets.per_class = {d['per_class']} (augmented sets: every real train image, each class "
        f"filled with synthetic ones to {_target(d['per_class'])}); training: {budget}",
        (
            f"real train images ASSUMED ({p['assumed']}; the split's own counts once `dvc repro split` has run): "
            if p["assumed"]
            else "real train images: "
        )
        + f"{', '.join(f'{real[c]:,} {c}' for c in LABELS)}; {steps:,} optimiser steps per cell and seed "
        f"({steps * tp['batch_size']:,} images seen)",
        f"{'dataset':<16}{'train images':>13}  "
        + "".join(f"{c + ' (real + synthetic)':<30}" for c in LABELS)
        + f"{'synthetic':>10}{'passes':>8}",
    ]
    for name, counts in p["datasets"].items():
        total = sum(r + s for r, s in counts.values())
        synth = sum(s for _, s in counts.values())
        per_label = [f"{r + s:,} = {r:,} + {s:,} ({s / max(r + s, 1):.0%})" for r, s in counts.values()]
        lines.append(
            f"{name:<16}{total:>13,}  "
            + "".join(f"{x:<30}" for x in per_label)
            + f"{synth / max(total, 1):>10.0%}{passes(steps * tp['batch_size'], total):>8}"
        )
    problem = split_problem(params, real)
    if problem:
        lines.append(
            f"! {problem} (`dvc repro split` refuses this"
            + (" if the real counts are as assumed)" if p["assumed"] else ")")
        )
    largest = train_size("DCGAN", real, d["per_class"])
    if steps * tp["batch_size"] < largest and params["data"]["source"] != "demo":
        lines.append(
            f"! {steps:,} steps of {tp['batch_size']} are under one pass over an augmented set's {largest:,} "
            "images: too little training for real data (the demo's budget); `melanoma profile own-data` "
            "sizes it to the data (classifiers.train.steps: auto)"
        )
    return "\n".join(lines)


def _target(per_class: int | str) -> str:
    return f"{per_class[:-1]} x the larger real class" if isinstance(per_class, str) else f"{per_class:,} per class"


def grid_line(params: dict[str, Any]) -> str:
    """archs x datasets x seeds = trainings, each list spelled out."""
    c = params["classifiers"]
    n = len(c["archs"]) * len(c["datasets"]) * len(c["seeds"])
    return (
        f"grid: {len(c['archs'])} archs x {len(c['datasets'])} datasets x {len(c['seeds'])} seeds = {n} trainings "
        f"({', '.join(c['archs'])} x {', '.join(c['datasets'])} x seeds {', '.join(map(str, c['seeds']))})"
    )


def stages_line(status: dict[str, Any], total: int) -> str:
    """The stages `dvc status` reports as changed, counted per stage name (the part before '@')."""
    kinds: dict[str, int] = {}
    for name in status:
        kinds[name.split("@")[0]] = kinds.get(name.split("@")[0], 0) + 1
    listed = ", ".join(k if n == 1 else f"{k} x{n}" for k, n in kinds.items())
    return f"stages to run (dvc status): {len(status)} of {total}" + (f": {listed}" if listed else "; all up to date")


def dvc_status() -> tuple[dict[str, Any], int] | None:
    """({stage: changes} for every stage that `dvc repro` would run, the number of stages in dvc.yaml); None
    outside a DVC project."""
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    try:
        with Repo(".") as repo:
            return repo.status(), len(repo.index.stages)
    except NotDvcRepoError:
        return None
    except (DvcException, OSError) as e:  # a broken dvc.yaml, dvc.lock or .dvc/config: `dvc status` says the same
        raise DatasetError(
            f"dvc status failed ({type(e).__name__}: {first_line(e)}); run `dvc status` to see where"
        ) from None


def sizes_of(splits: Path, real: dict[str, int] | None) -> tuple[Sizes, str]:
    """The real image counts the estimate uses: the split's when it has run (for the current data source),
    else the assumed ISIC run of bench/study_estimate.py's defaults; and a note saying which."""
    from melanoma.estimate import ASSUMED, Sizes
    from melanoma.io import read_csv

    if real is None:
        a = ASSUMED
        return a, (
            f"real data assumed ({a.train['benign']} + {a.train['malignant']} train, {a.val} val, "
            f"{a.test} test, {a.external} external) until `dvc repro split` has run"
        )
    try:
        rows = {
            name: len(read_csv(splits / f"{name}.csv")) if (splits / f"{name}.csv").is_file() else 0
            for name in ("val", "test", "external_test")
        }
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(
            f"cannot read the split in {splits} ({type(e).__name__}: {first_line(e)}); rerun `dvc repro split`"
        ) from None
    return Sizes(real, rows["val"], rows["test"], rows["external_test"]), "real counts from data/splits"


def estimate_line(params: dict[str, Any], splits: Path, real: dict[str, int] | None) -> str:
    """GPU time on one H200 and the CPU stages' time (from the shipped reference rates), and disk (final and peak
    outputs, the environment beside them); only for `device: cuda` runs (the GPU rates say nothing about a CPU
    run, and the demo's 32 px members have none)."""
    from melanoma.estimate import GB, totals

    if params["device"] != "cuda":
        return (
            f"estimate: none for device: {params['device']} (GPU time and disk are estimated for device: cuda "
            "runs, from H200 rates: e.g. `./run.sh study --dry`)"
        )
    sizes, how = sizes_of(splits, real)
    t = totals(params, sizes)
    stand = (
        f" + {t['stand_in_seconds'] / 3600:.1f} h rated with a stand-in model's rate ({', '.join(t['stand_ins'])})"
        if t["stand_ins"]
        else ""
    )
    target, final, peak = t["disk_target_bytes"], t["disk_final_bytes"], t["disk_peak_bytes"]
    fits = "fits" if max(final, peak) <= target else "over"
    whole = peak + t["environment_bytes"]
    gpu = (
        f"GPU time {t['gpu_seconds'] / 3600:.1f} h{stand}"
        if t["gpu_seconds"] or t["stand_ins"]
        else "GPU time: no reference rate matches these models and sizes"
    )
    untimed = (
        ", ".join(t["not_covered"]) or "no stage"
    ) + " (nor the Drive download, the report's figures, each cell's compile: bench/study_estimate.py lists them)"
    return "\n".join(
        [
            "estimate on one NVIDIA H200 (reference rates in melanoma/reference/: the GPU's measured on an H200 "
            "2026-11-27, the CPU's on a 2-core machine 2026-12-07; every line: python bench/study_estimate.py):",
            f"  {gpu}; CPU time {t['cpu_seconds'] / 3600:.1f} h (2-core rates: an upper bound); total "
            f"{(t['gpu_seconds'] + t['cpu_seconds']) / 3600:.1f} h; not timed: {untimed}",
            f"  disk of outputs: final {final / GB:.1f} GB, peak {peak / GB:.1f} GB during {t['peak_stage']} ({fits} "
            f"the {target / GB:.0f} GB target); with the environment (.venv, Hugging Face cache) "
            f"{t['environment_bytes'] / GB:.1f} GB: {whole / GB:.1f} GB at the peak of the GPU machine's "
            f"{t['machine_disk_bytes'] / 2**30:.0f} GiB",
            f"  {how}",
        ]
    )


def data_warning(params: dict[str, Any]) -> str | None:
    """A line when the folder a local source reads does not exist (fetch would stop on it)."""
    d = params["data"]
    folder = {"local": d["local"]["path"], "isic_csv": d["isic_csv"]["images"]}.get(d["source"])
    if folder is None or Path(folder).is_dir():
        return None
    key = "data.local.path" if d["source"] == "local" else "data.isic_csv.images"
    return f"! {key} {folder} does not exist yet: `fetch` stops there; put the images there first"


def report(params: dict[str, Any], splits: Path, status: tuple[dict[str, Any], int] | None) -> str:
    """Everything `melanoma plan` prints."""
    from melanoma.profile import in_effect, short

    name, extra = in_effect(params)
    device = params["device"]
    lines = [
        f"profile in effect: {name}; device: {device}"
        + (
            " (opted in to the CPU)"
            if device == "cpu"
            else " (refuses to start without a usable GPU)"
            if device == "cuda"
            else " (CUDA when usable, else the CPU)"
        )
    ]
    if extra:
        lines.append(
            "! values no profile sets (a leftover `dvc exp run -S` or an edit): "
            + "; ".join(f"{k} = {short(v)}" for k, v in sorted(extra.items()))
        )
    warning = data_warning(params)
    if warning:
        lines.append(warning)
    p = plan(params, splits)
    lines += [grid_line(params), describe(p, params)]
    lines.append(stages_line(*status) if status is not None else "stages to run: unknown (not in a DVC project)")
    lines.append(estimate_line(params, splits, p["real"]))
    return "\n".join(lines)

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
from melanoma.params import DATASETS, LABELS, adds_nothing, synthetic_counts

if TYPE_CHECKING:
    from melanoma.estimate import Sizes


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
    """The images-per-dataset table of a plan."""
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


def grid_line(params: dict[str, Any]) -> str:
    """archs x datasets x seeds = trainings, each list spelled out."""
    c = params["classifiers"]
    n = len(c["archs"]) * len(c["datasets"]) * len(c["seeds"])
    return (f"grid: {len(c['archs'])} archs x {len(c['datasets'])} datasets x {len(c['seeds'])} seeds = {n} trainings "
            f"({', '.join(c['archs'])} x {', '.join(c['datasets'])} x seeds {', '.join(map(str, c['seeds']))})")


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
        raise DatasetError(f"dvc status failed ({type(e).__name__}: {first_line(e)}); run `dvc status` to see "
                           "where") from None


def sizes_of(splits: Path, real: dict[str, int] | None) -> tuple[Sizes, str]:
    """The real image counts the estimate uses: the split's when it has run (for the current data source),
    else the assumed ISIC run of bench/study_estimate.py's defaults; and a note saying which."""
    from melanoma.estimate import ASSUMED, Sizes
    from melanoma.io import read_csv

    if real is None:
        a = ASSUMED
        return a, (f"real data assumed ({a.train['benign']} + {a.train['malignant']} train, {a.val} val, "
                   f"{a.test} test, {a.external} external) until `dvc repro split` has run")
    try:
        rows = {name: len(read_csv(splits / f"{name}.csv")) if (splits / f"{name}.csv").is_file() else 0
                for name in ("val", "test", "external_test")}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DatasetError(f"cannot read the split in {splits} ({type(e).__name__}: {first_line(e)}); rerun "
                           "`dvc repro split`") from None
    return Sizes(real, rows["val"], rows["test"], rows["external_test"]), "real counts from data/splits"


def estimate_line(params: dict[str, Any], splits: Path, real: dict[str, int] | None) -> str:
    """GPU time and disk on one H200, from the shipped reference rates; only for `device: cuda` runs (the rates
    say nothing about a CPU, and the demo's 32 px members have none)."""
    from melanoma.estimate import GB, totals

    if params["device"] != "cuda":
        return (f"estimate: none for device: {params['device']} (GPU time and disk are estimated for device: cuda "
                "runs, from H200 rates: e.g. `./run.sh study --dry`)")
    sizes, how = sizes_of(splits, real)
    t = totals(params, sizes)
    stand = (f" + {t['stand_in_seconds'] / 3600:.1f} h rated with a stand-in model's rate "
             f"({', '.join(t['stand_ins'])})" if t["stand_ins"] else "")
    fits = "fits" if t["disk_bytes"] <= t["disk_target_bytes"] else "over"
    gpu = (f"GPU time {t['gpu_seconds'] / 3600:.1f} h{stand}" if t["gpu_seconds"] or t["stand_ins"] else
           "GPU time: no reference rate matches these models and sizes")
    return "\n".join([
        "estimate on one NVIDIA H200 (reference rates measured 2026-11-27, melanoma/reference/; every line: "
        "python bench/study_estimate.py):",
        f"  {gpu}; not timed: {', '.join(t['not_covered']) or 'nothing'}",
        f"  disk {t['disk_bytes'] / GB:.1f} GB of outputs ({fits} the {t['disk_target_bytes'] / GB:.0f} GB target; "
        "the venv and caches come on top)",
        f"  {how}"])


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
    lines = [f"profile in effect: {name}; device: {device}"
             + (" (opted in to the CPU)" if device == "cpu" else " (refuses to start without a usable GPU)"
                if device == "cuda" else " (CUDA when usable, else the CPU)")]
    if extra:
        lines.append("! values no profile sets (a leftover `dvc exp run -S` or an edit): "
                     + "; ".join(f"{k} = {short(v)}" for k, v in sorted(extra.items())))
    warning = data_warning(params)
    if warning:
        lines.append(warning)
    p = plan(params, splits)
    lines += [grid_line(params), describe(p)]
    lines.append(stages_line(*status) if status is not None else "stages to run: unknown (not in a DVC project)")
    lines.append(estimate_line(params, splits, p["real"]))
    return "\n".join(lines)

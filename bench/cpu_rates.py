"""Measure the study's CPU work on this machine and write it as reference records for melanoma/estimate.py.

    .venv/bin/python bench/cpu_rates.py [--out melanoma/reference/cpu_<machine>_<date>.jsonl] [--isic DIR]

The GPU reference (melanoma/reference/gpu_*.jsonl) says nothing about the stages that run on the CPU, so the
estimate used to leave them out. This script times the project's own functions, at the study's shapes where that
is affordable on a small machine, and per image where the work grows with the images:

- fetch, split, decode and baseline on the real ISIC sample (300 images: data.source local, the study's
  max_side, 224 px): seconds per image;
- build_dataset of an augmented set at the study's assumed size (2,089 real images, 5,470 synthetic at 256 px,
  random pixels: the work does not depend on them) and of Original (links only): seconds per build;
- the bootstrap of the report's comparisons and of evaluate's CIs (stats.auroc_difference, stats.cell_intervals)
  on random scores of 5 seeds at the study's split sizes, as seconds per (resample x seed x malignant-benign pair),
  the unit their cost grows with;
- export of each study member at 224 px from scratch weights (the ONNX export, its weights made external data, and
  P(malignant) of 16 real images through PyTorch and onnxruntime), and a stage process's `import torch, timm`;
- the results' bytes: evaluate's files per prediction row and per held-out image from this checkout's demo run;
  the report's: a 224 px GradCAM overlay of real ISIC images as evaluate writes it (PNG) and as the report
  embeds it (JPEG data URI), the generators' contact sheets at 64 and 256 px (ISIC images resized, as stand-ins
  for synthetic ones), and the rest of the page from this checkout's demo results/report.html when it exists.

Each record carries the command and the machine. A 2-core machine's seconds are an upper bound for a 16-core GPU
machine's CPU. About 5 minutes on a 2-core machine, most of it the export of the six study members.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from melanoma.estimate import ASSUMED, REFERENCE  # noqa: E402
from melanoma.profile import profile_params  # noqa: E402

COMMAND = "python bench/cpu_rates.py"
STUDY_MEMBERS = {  # arch -> the study's model (BioViT builds the same network as ViT)
    "ViT": "vit_base_patch16_224",
    "DenseNet": "densenet121",
    "ResNet": "resnet50",
    "Swin": "swin_base_patch4_window7_224",
    "MedViT": "medvit_small",
}
EXPORT_IMAGES = 16  # real images scored through both runtimes per member (the stage scores the val split)


def machine() -> dict[str, Any]:
    """The machine and software the figures belong to."""
    import torch

    cpu = "unknown"
    info = Path("/proc/cpuinfo")
    if info.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", info.read_text(), re.M)
        cpu = found.group(1).strip() if found else cpu
    return {
        "arch": platform.machine(),
        "cpus": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def default_out() -> Path:
    """melanoma/reference/cpu_<arch>_<n>core_<date>.jsonl."""
    m = machine()
    return REFERENCE / f"cpu_{m['arch']}_{m['cpus']}core_{datetime.date.today().isoformat()}.jsonl"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def pipeline_front(isic: Path, tmp: Path, params: dict[str, Any]) -> tuple[list[dict[str, Any]], Path]:
    """fetch, split, decode, build_dataset@Original and baseline on the ISIC sample; returns the records and the
    Original dataset folder."""
    from melanoma.data.datasets import build_dataset, decode_real
    from melanoma.data.fetch import collect, write_raw
    from melanoma.data.split import split
    from melanoma.evaluation.baseline import run_baseline

    data = {**params["data"], "source": "local", "local": {**params["data"]["local"], "path": str(isic / "folder")}}
    raw, splits, real = tmp / "raw", tmp / "splits", tmp / "real"
    s_fetch, summary = timed(
        lambda: write_raw(
            collect(data),
            raw,
            data["max_side"],
            data["max_reject_fraction"],
            max_pixels=data["max_pixels"],
            max_file_mb=data["max_file_mb"],
        )
    )
    n = sum(summary.counts.values())
    sp = params["split"]
    s_split, _ = timed(
        lambda: split(raw, splits, sp["seed"], sp["val_fraction"], sp["test_fraction"], sp["near_duplicate_corr"])
    )
    size = params["datasets"]["image_size"]
    s_decode, counts = timed(lambda: decode_real(splits, raw, size, real))
    n_real = sum(counts.values())
    s_original, _ = timed(lambda: build_dataset("Original", params, real, tmp / "synthetic", tmp / "Original"))
    s_base, _ = timed(lambda: run_baseline(params, tmp / "Original", tmp / "baseline"))
    what = f"the ISIC sample's {n_real} images, data.source local, max_side {data['max_side']}, {size} px"
    return [
        stage_record("fetch", n, s_fetch, f"{what}: decode, cap, JPEG q95, md5 (no download)"),
        stage_record("split", n_real, s_split, f"{what}: md5s, thumbnails, grouping, stratified split"),
        stage_record("decode", n_real, s_decode, f"{what}: every split decoded and resized once"),
        stage_record("baseline", n_real, s_base, f"{what}: features of every split, the fit, the scoring"),
        {
            "kind": "cpu_stage",
            "stage": "build_dataset",
            "dataset": "Original",
            "real": n_real,
            "seconds": round(s_original, 3),
            "what": f"{what}: packs linked to decode's, leakage check",
        },
    ], tmp / "Original"


def stage_record(stage: str, images: int, seconds: float, what: str) -> dict[str, Any]:
    return {
        "kind": "cpu_stage",
        "stage": stage,
        "images": images,
        "seconds": round(seconds, 3),
        "s_per_image": seconds / images,
        "what": what,
    }


def augmented_build(tmp: Path, params: dict[str, Any]) -> dict[str, Any]:
    """build_dataset@DCGAN_Upscaled at the study's assumed size: decode's packs of 2,089 real images at 224 px and
    5,470 synthetic images at 256 px (random pixels), written as the stages write them."""
    from melanoma.data.datasets import COLUMNS, build_dataset
    from melanoma.io import write_csv
    from melanoma.params import LABELS, synthetic_counts

    rng = np.random.default_rng(0)
    size, real = params["datasets"]["image_size"], tmp / "real_study"
    real.mkdir()
    parts = {
        "train": ASSUMED.train,
        "val": split_counts(ASSUMED.val),
        "test": split_counts(ASSUMED.test),
        "external_test": split_counts(ASSUMED.external),
    }
    rows = []
    for split, counts in parts.items():
        labels = [c for c in LABELS for _ in range(counts[c])]
        np.save(real / f"{split}.npy", rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8))
        rows += [
            {
                "split": split,
                "index": i,
                "id": f"{split}_{i}",
                "label": c,
                "origin": "real",
                "upscaled": "no",
                "path": f"{split}_{i}.jpg",
                "md5": f"{split}{i}",
            }  # fmt: skip
            for i, c in enumerate(labels)
        ]
    write_csv(real / "manifest.csv", rows, COLUMNS)
    fill = synthetic_counts(ASSUMED.train, params["datasets"]["per_class"])
    side = params["generators"]["image_size"] * params["upscale"]["factor"]
    shards = tmp / "synthetic_study" / "dcgan_upscaled"
    shards.mkdir(parents=True)
    for c, n in fill.items():
        np.save(shards / f"{c}.npy", rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8))
    seconds, _ = timed(lambda: build_dataset("DCGAN_Upscaled", params, real, shards.parent, tmp / "DCGAN_Upscaled"))
    return {
        "kind": "cpu_stage",
        "stage": "build_dataset",
        "dataset": "DCGAN_Upscaled",
        "real": ASSUMED.real_total,
        "synthetic": sum(fill.values()),
        "synthetic_size": side,
        "size": size,
        "seconds": round(seconds, 3),
        "what": "an augmented set at the study's assumed size (random pixels): synthetic images resized, leakage "
        "check over all of them, packs written (real ones linked)",
    }


def split_counts(n: int) -> dict[str, int]:
    """A held-out split of `n` images with the assumed train's malignant share (the split is stratified)."""
    share = ASSUMED.train["malignant"] / sum(ASSUMED.train.values())
    m = round(n * share)
    return {"benign": n - m, "malignant": m}


def bootstrap(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's per-architecture comparison and evaluate's CIs at the study's shapes, on random scores."""
    from melanoma.evaluation.stats import auroc_difference, cell_intervals
    from melanoma.evaluation.verdict import resamples_for

    c, ep = params["classifiers"], params["evaluate"]
    seeds = len(c["seeds"])
    tests = len(c["archs"]) * (len(c["datasets"]) - 1) * 2  # test and external_test
    resamples = resamples_for(tests, ep["bootstrap"])
    rng = np.random.default_rng(0)
    out = []
    for split, n in (("test", ASSUMED.test), ("external_test", ASSUMED.external)):
        k = split_counts(n)
        y = np.r_[np.ones(k["malignant"]), np.zeros(k["benign"])].astype(int)
        a, b = rng.random((seeds, n)), rng.random((seeds, n))
        pairs = k["malignant"] * k["benign"]
        s_diff, _ = timed(lambda y=y, a=a, b=b: auroc_difference(y, [(a, b)], resamples, 0))
        units = 2 * resamples * seeds * pairs  # both models' draws
        out.append(
            {
                "kind": "cpu_bootstrap",
                "fn": "stats.auroc_difference",
                "split": split,
                "images": n,
                "malignant": k["malignant"],
                "seeds": seeds,
                "resamples": resamples,
                "seconds": round(s_diff, 3),
                "s_per_unit": s_diff / units,
                "unit": "one resample x one seed x one malignant-benign pair, per model compared",
            }
        )
        thr = np.full(seeds, 0.5)
        s_ci, _ = timed(lambda y=y, a=a, thr=thr: cell_intervals(y, a, thr, ep["bootstrap"], 0))
        out.append(
            {
                "kind": "cpu_bootstrap",
                "fn": "stats.cell_intervals",
                "split": split,
                "images": n,
                "malignant": k["malignant"],
                "seeds": seeds,
                "resamples": ep["bootstrap"],
                "seconds": round(s_ci, 3),
                "s_per_unit": s_ci / (ep["bootstrap"] * seeds * pairs),
                "unit": "one resample x one seed x one malignant-benign pair",
            }
        )
    return out


def export_rates(isic: Path, tmp: Path) -> list[dict[str, Any]]:
    """Each study member at 224 px from scratch weights: the ONNX export with its weights made external data, and
    P(malignant) of EXPORT_IMAGES real images through PyTorch (float32, CPU) and onnxruntime."""
    import torch
    from safetensors.torch import save_file

    from melanoma.classifiers.registry import build_model
    from melanoma.serving.package import Served, onnx_probabilities, prepare, share_weights, torch_probabilities
    from melanoma.serving.package import write_onnx as export

    files = sorted((isic / "folder").rglob("*.jpg"))[:EXPORT_IMAGES]
    x = np.stack([prepare(f, 224, 1024) for f in files])
    out = []
    for arch, model in STUDY_MEMBERS.items():
        torch.manual_seed(0)
        built = build_model(arch, {"model": model, "pretrained": False, "kwargs": {}}, 2, 224)
        norm = built.info["normalisation"]
        net = Served(built.model.eval(), norm["mean"], norm["std"]).eval()
        folder = tmp / f"export_{arch}"
        folder.mkdir()

        def package(net: Served = net, folder: Path = folder) -> None:
            state = {k: v.detach().contiguous() for k, v in net.model.state_dict().items()}
            save_file(state, str(folder / "model.safetensors"))
            export(net, 224, folder / "model.onnx", 17)
            share_weights(folder / "model.onnx", folder / "model.safetensors")

        s_export, _ = timed(package)
        s_torch, _ = timed(lambda net=net: torch_probabilities(net, x))
        s_ort, _ = timed(lambda folder=folder: onnx_probabilities(folder / "model.onnx", x))
        out.append(
            {
                "kind": "cpu_export",
                "model": model,
                "size": 224,
                "export_s": round(s_export, 3),
                "images": len(x),
                "torch_s_per_image": s_torch / len(x),
                "ort_s_per_image": s_ort / len(x),
                "what": "safetensors + torch.onnx.export (opset 17) + share_weights; then P(malignant) of real "
                "images through PyTorch float32 on the CPU and onnxruntime (the stage's parity check)",
            }
        )
        shutil.rmtree(folder)
    return out


def startup() -> dict[str, Any]:
    """A fresh interpreter importing torch and timm, as every model stage does: the median of 3."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch, timm"], check=True)
        times.append(time.perf_counter() - t0)
    return {
        "kind": "cpu_startup",
        "what": "python -c 'import torch, timm' (a stage process's start), median of 3",
        "seconds": round(statistics.median(times), 3),
    }


def report_bytes(isic: Path, tmp: Path, params: dict[str, Any]) -> dict[str, Any]:
    """Bytes the report embeds per GradCAM overlay and per contact sheet at the study's sizes, and the rest of
    the page from this checkout's demo report."""
    from PIL import Image

    from melanoma.evaluation import gradcam
    from melanoma.evaluation.report import _array_uri, _jpeg_uri, sample_sheet
    from melanoma.serving.package import prepare

    rng = np.random.default_rng(0)
    files = sorted((isic / "folder").rglob("*.jpg"))
    size = params["datasets"]["image_size"]
    png, jpeg = [], []
    for f in files[:8]:
        coarse = Image.fromarray(rng.random((7, 7)).astype(np.float32), mode="F")  # a GradCAM map: 7 x 7 cells
        heat = np.asarray(coarse.resize((size, size), Image.BILINEAR))
        pixels = gradcam.overlay(prepare(f, size, 1024), heat / heat.max(), caption="TP  P=0.87")
        buf = _png_bytes(pixels)
        png.append(len(buf))
        jpeg.append(len(_jpeg_uri(buf)))
    g, factor = params["generators"]["image_size"], params["upscale"]["factor"]
    small = np.stack([prepare(f, g, 1024) for f in files[:16]])
    big = np.stack([np.asarray(Image.fromarray(im).resize((g * factor,) * 2, Image.BICUBIC)) for im in small])
    sheets = {}
    for name, shard in (("plain", small), ("upscaled", big)):
        np.save(tmp / f"{name}.npy", shard)
        sheets[name] = len(_array_uri(sample_sheet(tmp / f"{name}.npy")))
    rest, source = None, "no results/report.html in this checkout"
    page = ROOT / "results" / "report.html"
    if page.is_file():  # the same grid's page: its text and figures, less what the study's sizes change
        text = page.read_text()
        uri = r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+"
        start = text.find("<h2>GradCAM")
        overlays = re.findall(uri, text[start:]) if start >= 0 else []
        shown = re.findall(r"first 16 synthetic images\)' src='(" + uri + ")", text)
        rest = len(text) - sum(map(len, overlays)) - sum(map(len, shown))
        source = (
            f"this checkout's demo results/report.html ({len(text):,} B) without its {len(overlays)} overlays and "
            f"{len(shown)} contact sheets"
        )
    return {
        "kind": "report_bytes",
        "size": size,
        "overlay_png_bytes": round(statistics.mean(png)),
        "overlay_jpeg_uri_bytes": round(statistics.mean(jpeg)),
        "sheet_uri_bytes": {f"{g}px": sheets["plain"], f"{g * factor}px": sheets["upscaled"]},
        "page_and_figures_bytes": rest,
        "page_source": source,
        "what": f"the mean of 8 real ISIC images' {size} px GradCAM overlays (a random 7 x 7 map, bilinear) as "
        "evaluate writes them (PNG) and as the report embeds them (JPEG data URI); contact sheets of 16 ISIC "
        "images at the generator size and upscaled (bicubic), as the report embeds them",
    }


def results_bytes() -> dict[str, Any] | None:
    """Per-row and per-image bytes of evaluate's files in this checkout's demo results/evaluation: the prediction
    CSVs (a row per seed and image) and the rest of each cell's folder but its GradCAM overlays (curves, confusion
    PNGs, metrics), per held-out image. None without a demo run here."""
    ev = ROOT / "results" / "evaluation"
    cells = [c for c in ev.glob("*/*") if (c / "metrics.json").is_file()] if ev.is_dir() else []
    if not cells:
        return None
    size = rows = other = held = 0
    for cell in cells:
        for f in cell.glob("seed_*/predictions_*.csv"):
            size += f.stat().st_size
            rows += len(f.read_text().splitlines()) - 1
        other += sum(f.stat().st_size for f in cell.iterdir() if f.is_file())
        first = sorted(cell.glob("seed_*"))[0]
        scored = [f for f in first.glob("predictions_*.csv") if f.name != "predictions_val.csv"]
        held += sum(len(f.read_text().splitlines()) - 1 for f in scored)
    return {
        "kind": "results_bytes",
        "cells": len(cells),
        "prediction_row_bytes": size / rows,
        "other_bytes_per_held_out_image": other / held,
        "what": "this checkout's demo results/evaluation: prediction CSV bytes per row, and each cell's other files "
        "(curves, confusion PNGs, reports, metrics.json; not gradcam/) per held-out image scored",
    }


def _png_bytes(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    """Measure and write the records (one JSON object a line)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="the .jsonl to write (default: melanoma/reference/...)")
    default_isic = os.environ.get("MELANOMA_ISIC_SAMPLE") or ROOT.parent / "shared" / "data" / "isic-sample"
    ap.add_argument("--isic", type=Path, default=Path(default_isic), help="the ISIC sample (its folder/ layout)")
    a = ap.parse_args(argv)
    if not (a.isic / "folder").is_dir():
        raise SystemExit(f"cpu_rates: no ISIC sample at {a.isic} (give --isic or MELANOMA_ISIC_SAMPLE)")
    out = a.out or default_out()
    params = profile_params("study", ROOT / "profiles")
    today = datetime.date.today().isoformat()
    records: list[dict[str, Any]] = [
        {"kind": "cpu_env", "t": today, "command": COMMAND, **machine()},
    ]
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        front, _ = pipeline_front(a.isic, tmp, params)
        records += front
        records.append(augmented_build(tmp, params))
        records += bootstrap(params)
        records += export_rates(a.isic, tmp)
        records.append(startup())
        records.append(report_bytes(a.isic, tmp, params))
    found = results_bytes()
    records += [found] if found else []
    lines = [json.dumps({**r, "t": today, "command": COMMAND}) for r in records]
    out.write_text("\n".join(lines) + "\n")
    for r in records:
        print(json.dumps({k: v for k, v in r.items() if k not in ("what", "unit", "page_source")}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

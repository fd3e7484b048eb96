"""`melanoma predict`: image files -> P(malignant) and the decision at the model's stored threshold (or at a
site's own threshold from `melanoma calibrate`'s threshold file: `--threshold-file`).

Images go through exactly the pipeline's preprocessing (`package.prepare`), so a file scores as it would have
in the test split. A file that cannot be read is reported with its reason, and the others are still scored.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from melanoma.data.images import IMAGE_SUFFIXES, ImageRejected
from melanoma.errors import os_error_line, printable
from melanoma.evaluation import gradcam
from melanoma.io import owner_lock
from melanoma.serving.package import PackageError, load, pixels, prepare, served, torch_probabilities
from melanoma.serving.thresholds import apply_threshold_file, read_threshold_file
from melanoma.text import safe_id

PROGRESS_FROM = 10  # files: fewer are read without a progress bar
DECODE_THREADS = min(4, os.cpu_count() or 1)  # images decoded at once (bench/predict_speed.py measures 1 vs 2)


def _prepared(path: Path, size: int, max_side: int) -> tuple[np.ndarray | None, str | None]:
    """(the model's input pixels, None) or (None, why the file was rejected)."""
    try:
        return prepare(path, size, max_side), None
    except ImageRejected as e:
        return None, str(e)


@dataclass
class Prediction:
    path: str
    p_malignant: float | None = None
    decision: str | None = None
    gradcam: str | None = None
    error: str | None = None  # the file was refused (not scored)
    gradcam_error: str | None = None  # scored, but its overlay could not be written (e.g. a full disk)


def expand(inputs: list[Path]) -> list[Path]:
    """Files as given; folders -> their image files (by suffix, recursively, sorted). A FIFO, socket or broken
    link named like an image is kept, so that it is listed as refused rather than silently dropped."""
    out = []
    for p in inputs:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and not f.is_dir())
        else:
            out.append(p)
    return out


def writable_dir(folder: Path, what: str) -> None:
    """Create `folder` if needed and check a file can be written in it; PackageError naming `what` otherwise.
    Run before the work whose results would go there, so a bad path never costs the work."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise PackageError(f"{what} {folder}: cannot write there ({e.strerror or e}); choose another folder") from None


def predict(
    files: list[Path], folder: Path, gradcam_dir: Path | None = None, threshold_file: Path | None = None
) -> tuple[list[Prediction], dict[str, Any]]:
    """Score `files` with the packaged model in `folder`; unreadable files come back with `error` set.

    Decisions use the package's threshold, or with `threshold_file` (written by `melanoma calibrate` for this
    package) that file's; the returned config then carries it as `threshold`, and `threshold_source` says which.
    Raises PackageError (damaged package, NaN/Inf outputs, an unwritable `gradcam_dir`: checked first),
    OutputBusy (another live predict writing overlays into `gradcam_dir`: checked first) or CalibrationError (a
    malformed threshold file, or one written for another package: checked before scoring)."""
    if gradcam_dir is None:
        return _predict(files, folder, None, threshold_file)
    writable_dir(gradcam_dir, "--gradcam")
    with owner_lock(gradcam_dir):  # one predict writes overlays into a folder at a time: checked before scoring
        return _predict(files, folder, gradcam_dir, threshold_file)


def _predict(
    files: list[Path], folder: Path, gradcam_dir: Path | None, threshold_file: Path | None
) -> tuple[list[Prediction], dict[str, Any]]:
    if threshold_file is not None:
        record = read_threshold_file(threshold_file)
    model, cfg = load(folder)
    if threshold_file is not None:
        cfg = apply_threshold_file(threshold_file, record, folder, cfg)
    else:
        cfg = {**cfg, "threshold_source": {"from": "package", "path": str(folder)}}
    size, max_side = cfg["input_size"], cfg["preprocessing"]["max_side"]
    results, ok, images = [], [], []
    with ThreadPoolExecutor(DECODE_THREADS) as pool:  # Pillow's decoder releases the GIL
        decoded = pool.map(lambda f: _prepared(f, size, max_side), files)
        for f, (x, error) in tqdm(
            zip(files, decoded),
            total=len(files),
            desc="predict",
            unit="img",
            file=sys.stderr,
            disable=len(files) < PROGRESS_FROM,
            leave=False,
        ):
            r = Prediction(str(f), error=error)
            if x is not None:
                images.append(x)
                ok.append(r)
            results.append(r)
    if images:
        x = np.stack(images)
        probs = torch_probabilities(served(model, cfg), x)
        if not np.isfinite(probs).all():  # NaN compares false with the threshold: it would read as "benign"
            raise PackageError(
                f"the model in {folder} produced NaN/Inf probabilities: its weights are damaged "
                "or diverged; export or download it again"
            )
        thr = cfg["threshold"]
        for r, p in zip(ok, probs):
            r.p_malignant = float(p)
            r.decision = cfg["classes"][int(p >= thr)]
        if gradcam_dir is not None:
            _gradcam(model, cfg, x, ok, gradcam_dir, files)
    return results, cfg


GRADCAM_MARK = "melanoma predict --gradcam"  # PNG text chunk 'Software' of every overlay: the files we may replace


def _ours(f: Path) -> bool:
    """True for an overlay an earlier `predict --gradcam` wrote (replacing it is a rerun, not a loss)."""
    from PIL import Image

    try:
        with Image.open(f) as im:
            return im.format == "PNG" and im.info.get("Software") == GRADCAM_MARK
    except Exception:  # noqa: BLE001 - anything unreadable is not ours, so it is never replaced
        return False


def _gradcam(
    model: torch.nn.Module,
    cfg: dict[str, Any],
    x: np.ndarray,
    rows: list[Prediction],
    out: Path,
    inputs: list[Path] = (),
) -> None:
    """One overlay per scored image, explaining the malignant class (what made it look malignant). Names are
    `<safe stem>_gradcam.png` (safe_id: any file name fits); a name held by an input or by a file this command did
    not write gets a number instead, so no user file is ever replaced."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Software", GRADCAM_MARK)
    taken = {os.path.realpath(f) for f in inputs}

    out.mkdir(parents=True, exist_ok=True)
    net = served(model, cfg)
    xt = (pixels(x) - net.mean) / net.std  # what the model itself sees
    at = gradcam.target(cfg["arch"], model, cfg["input_size"])
    heat = np.concatenate(
        [gradcam.cams(cfg["arch"], model, xt[i : i + 16], [1] * len(xt[i : i + 16]), at) for i in range(0, len(xt), 16)]
    )
    scale = gradcam.view_scale(cfg["input_size"])
    used: set[str] = set()

    def free(name: str) -> bool:
        f = out / name
        return (
            name not in used
            and os.path.realpath(f) not in taken
            and (not os.path.lexists(f) or not os.path.islink(f) and _ours(f))
        )  # never written through a link

    for i, r in enumerate(rows):
        stem = safe_id(Path(r.path).stem)
        name = f"{stem}_gradcam.png"
        n = 1
        while not free(name):  # same file name in two folders, an input, or a file of the user's
            n += 1
            name = f"{stem}_{n}_gradcam.png"
        used.add(name)
        caption = f"{r.decision}  P={r.p_malignant:.2f}"
        try:
            Image.fromarray(gradcam.overlay(x[i], heat[i], scale, caption)).save(out / name, pnginfo=info)
        except OSError as e:  # a full disk mid-way: the scores stand, this overlay is reported as missing
            (out / name).unlink(missing_ok=True)  # absent or ours before (free()): never a user's file
            r.gradcam_error = os_error_line(OSError(e.errno, e.strerror, str(out / name)) if e.filename is None else e)
            continue
        r.gradcam = str(out / name)


def as_json(results: list[Prediction], cfg: dict[str, Any], model: str) -> str:
    return json.dumps(
        {
            "model": model,
            "cell": f"{cfg['arch']}_{cfg['dataset']}",
            "threshold": cfg["threshold"],
            "threshold_rule": cfg["threshold_rule"],
            "threshold_source": cfg.get("threshold_source"),
            "positive_class": cfg["positive_class"],
            "predictions": [asdict(r) for r in results],
        },
        indent=2,
    )


def _where_threshold(cfg: dict[str, Any]) -> str:
    src = cfg.get("threshold_source") or {}
    if src.get("from") != "threshold_file":
        return f"{cfg['threshold_rule']}, chosen on val"
    return (
        f"{cfg['threshold_rule']} on {src.get('n')} labelled images of {src.get('labels')}, from --threshold-file "
        f"{src['path']}; the package's own is {src['package_threshold']:.4f}"
    )


def as_table(results: list[Prediction], cfg: dict[str, Any], model: str) -> str:
    head = (
        f"# {cfg['arch']}_{cfg['dataset']} from {model}; malignant if p_malignant >= {cfg['threshold']:.4f} "
        f"({_where_threshold(cfg)}). Research use only, not a medical device."
        + (
            " DEMO MODEL: trained on synthetic demo images, meaningless on real lesions."
            if cfg["data"]["source"] == "demo"
            else ""
        )
    )
    shown = [printable(r.path) for r in results]  # a name's newline or ANSI escape cannot forge a row
    width = max([len("image")] + [len(p) for p in shown])
    lines = [
        printable(head),
        f"{'image':<{width}}  p_malignant  decision"
        + ("  gradcam" if any(r.gradcam or r.gradcam_error for r in results) else ""),
    ]
    for r, path in zip(results, shown):
        if r.error:
            lines.append(f"{path:<{width}}  {'-':>11}  refused: {printable(r.error)}")
        else:
            row = f"{path:<{width}}  {r.p_malignant:>11.4f}  {r.decision}"
            mark = printable(r.gradcam) if r.gradcam else "not written" if r.gradcam_error else ""
            lines.append(f"{row:<{width + 24}}  {mark}" if mark else row)
    return "\n".join(lines)

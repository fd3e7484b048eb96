"""A trained cell as a product: one self-contained, pickle-free folder that predict, publish, timm and ONNX
runtimes read without this repository's training outputs.

    model.safetensors   the selected (best-on-val) weights: a hardlink to the training cell's file (a copy only
                        where the filesystem cannot link), so one file on disk and one DVC cache object
    model.onnx          [0, 1] RGB pixels (N, 3, H, W) -> logits (N, 2) and p_malignant (N); normalisation inside;
                        its weights are ONNX external data pointing into model.safetensors (one copy on disk)
    config.json         timm's Hub config (timm families only): `timm.create_model('hf-hub:<repo>', pretrained=True)`
    model_config.json   how it was built and trained, the preprocessing, the decision threshold chosen on val,
                        the evaluation (with CIs) and the ONNX parity measured at export

The ONNX graph takes pixels, not normalised tensors, so a consumer cannot get the mean/std wrong; the same
function (`prepare`) turns any image file into those pixels for predict as the pipeline did for training.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from melanoma.classifiers.inference import load_classifier, read_config, rebuild
from melanoma.classifiers.registry import family, load_strict
from melanoma.data.datasets import resize
from melanoma.data.images import decode_pixels
from melanoma.engine import Runtime
from melanoma.errors import MelanomaError, first_line
from melanoma.params import LABELS

WEIGHTS, ONNX, TIMM_CONFIG, CONFIG = "model.safetensors", "model.onnx", "config.json", "model_config.json"
PIXELS, LOGITS, PROBABILITY = "pixels", "logits", "p_malignant"
PARITY_TOLERANCE = 1e-4  # max |P_onnx - P_torch| over the cell's real val images


class PackageError(MelanomaError):
    """A package folder is missing, incomplete, or its ONNX graph disagrees with PyTorch."""


class Served(nn.Module):
    """The classifier as it is shipped: [0, 1] RGB pixels in, logits and P(malignant) out."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model((pixels - self.mean) / self.std)
        return logits, torch.softmax(logits, 1)[:, 1]


def served(model: nn.Module, cfg: dict[str, Any]) -> Served:
    norm = cfg["normalisation"]
    return Served(model, norm["mean"], norm["std"]).eval()


def pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [0, 1]: the ONNX input."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).contiguous()


DRAFT_FACTOR = 4  # a JPEG is decoded at a reduced scale no smaller than this many times the input size (4 and 8
# give the same mean pixel difference, 0.16/255, at 224 px on the ISIC sample; 4 decodes twice as fast there)


def prepare(path: Path, input_size: int, max_side: int) -> np.ndarray:
    """An image file -> the (input_size, input_size, 3) uint8 pixels the pipeline would have trained on.

    The same two steps as fetch + build_dataset: decode to upright 8-bit RGB capped at `max_side` (RGBA, CMYK,
    16-bit, EXIF rotation, huge scans), then the one Lanczos resize, with every check fetch makes. Two shortcuts
    for speed, both measured in bench/predict_speed.py: the capped image is not re-encoded as JPEG (fetch stores it
    at quality 95), and a large JPEG is decoded at a reduced DCT scale that keeps at least DRAFT_FACTOR x the
    input size (Pillow's draft mode). Raises images.ImageRejected with the reason.
    """
    return resize(decode_pixels(path, max_side, draft=DRAFT_FACTOR * input_size), input_size)


@torch.no_grad()
def torch_probabilities(model: Served, images: np.ndarray, batch: int = 64, rt: Runtime = Runtime()) -> np.ndarray:
    """P(malignant) as float64 (N,) from the PyTorch graph on the runtime's device, in float32: no autocast and,
    on CUDA, no TF32, because this is the reference the ONNX graph is held to within 1e-4."""
    model = model.to(rt.device)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=False):
        out = [model(pixels(images[i : i + batch]).to(rt.device))[1].cpu() for i in range(0, len(images), batch)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.empty(0)


def onnx_probabilities(path: Path, images: np.ndarray, batch: int = 64) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = [
        session.run([PROBABILITY], {PIXELS: pixels(images[i : i + batch]).numpy()})[0]
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(out).astype(np.float64) if out else np.empty(0)


def write_onnx(model: Served, input_size: int, path: Path, opset: int) -> None:
    """Export with a dynamic batch axis (TorchScript-based exporter: the dynamo one needs onnxscript), on the
    CPU, without constant folding: every weight then stays the exact tensor of the state dict, which is what
    lets `share_weights` point the graph at model.safetensors. onnxruntime folds constants when it loads."""
    example = torch.rand(2, 3, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(
            model.cpu(),
            (example,),
            str(path),
            dynamo=False,
            opset_version=opset,
            do_constant_folding=False,
            input_names=[PIXELS],
            output_names=[LOGITS, PROBABILITY],
            dynamic_axes={PIXELS: {0: "batch"}, LOGITS: {0: "batch"}, PROBABILITY: {0: "batch"}},
        )


def _safetensors_regions(path: Path) -> dict[str, tuple[int, int]]:
    """md5 of each tensor's bytes -> (absolute offset, length) in a safetensors file. The layout is the
    format's published one (8-byte little-endian header length, a JSON header whose `data_offsets` are
    relative to the end of the header); the safetensors package reads tensors but does not expose offsets."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    start = 8 + n
    out = {}
    for name, meta in json.loads(raw[8:start]).items():
        if name != "__metadata__":
            b, e = meta["data_offsets"]
            out[hashlib.md5(raw[start + b : start + e]).hexdigest()] = (start + b, e - b)
    return out


def share_weights(graph: Path, weights: Path) -> tuple[int, int]:
    """Rewrite the ONNX file `graph` so that every initializer whose bytes equal a tensor of `weights` (a
    safetensors file in the same folder) is stored as ONNX external data at that tensor's offset, instead of
    as a second copy inside the graph (onnx's external-data fields: location, offset, length). Returns
    (initializers shared, initializers in all). Measured on the demo members of all six families: every
    weight matches, and the graph shrinks from 9-21 MB to under 0.2 MB."""
    import onnx
    from onnx.external_data_helper import set_external_data

    regions = _safetensors_regions(weights)
    model = onnx.load(str(graph))
    shared = 0
    for t in model.graph.initializer:
        where = regions.get(hashlib.md5(t.raw_data).hexdigest()) if t.raw_data else None
        if where is not None and where[1] == len(t.raw_data):
            set_external_data(t, weights.name, offset=where[0], length=where[1])
            t.ClearField("raw_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            shared += 1
    onnx.save(model, str(graph))
    return shared, len(model.graph.initializer)


def timm_config(model: nn.Module, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """timm's own Hub config for this model, describing our weights (not the ImageNet tag it was built from)."""
    if not family(cfg["arch"]).timm_loadable:
        return None  # timm alone cannot rebuild it: load it with melanoma.serving.package.load
    import tempfile

    from timm.models._hub import save_config_for_hf

    size = cfg["input_size"]  # CNNs take any size, so timm would otherwise keep the ImageNet default 224
    data = {
        "input_size": (3, size, size),
        "mean": tuple(cfg["normalisation"]["mean"]),
        "std": tuple(cfg["normalisation"]["std"]),
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "interpolation": "lanczos",
    }  # as build_dataset
    with tempfile.TemporaryDirectory() as tmp:
        save_config_for_hf(
            model,
            Path(tmp) / TIMM_CONFIG,
            model_config={
                "label_names": list(cfg["classes"]),
                "pretrained_cfg": {**data, "tag": None, "license": "cc-by-nc-4.0"},
            },
        )
        out = json.loads((Path(tmp) / TIMM_CONFIG).read_text())
    out["pretrained_cfg"] = {k: v for k, v in out["pretrained_cfg"].items() if v is not None}
    return out


def write_package(
    model: nn.Module,
    cfg: dict[str, Any],
    val_images: np.ndarray,
    out: Path,
    opset: int,
    weights: Path,
    rt: Runtime = Runtime(),
) -> dict[str, Any]:
    """Write the package of one trained cell into the empty folder `out`; returns the ONNX parity record.

    `weights` is the float32 safetensors file `model` was loaded from (the packaged seed's model.safetensors): the
    package's model.safetensors is a hardlink to it (melanoma.io.link_or_copy), and the ONNX graph reads its
    weights from that file. `cfg` must already carry the threshold and evaluation; `val_images` (real, uint8
    NHWC at the input size) are what the ONNX graph is checked on, against PyTorch on the runtime's device.
    Raises PackageError when ONNX and PyTorch disagree, or when `weights` does not hold the model's float32
    weights (the graph would then keep its own copy of them).
    """
    from safetensors.torch import load_file

    from melanoma.io import link_or_copy

    model = model.cpu().eval()
    state = model.state_dict()
    stored = load_file(str(weights))
    if stored.keys() != state.keys() or any(
        stored[k].dtype != v.dtype or not torch.equal(stored[k], v) for k, v in state.items()
    ):
        raise PackageError(
            f"{weights} does not hold {cfg['arch']}_{cfg['dataset']}'s weights as the model has them (float32); "
            "rerun `dvc repro train_classifier evaluate export`"
        )
    link_or_copy(weights, out / WEIGHTS)
    tc = timm_config(model, cfg)
    if tc is not None:
        (out / TIMM_CONFIG).write_text(json.dumps(tc, indent=2) + "\n")
    net = served(model, cfg)
    write_onnx(net, cfg["input_size"], out / ONNX, opset)
    shared, total = share_weights(out / ONNX, out / WEIGHTS)
    p_torch = torch_probabilities(net, val_images, rt=rt)
    p_onnx = onnx_probabilities(out / ONNX, val_images)
    worst = float(np.max(np.abs(p_torch - p_onnx))) if len(p_torch) else 0.0
    if not worst <= PARITY_TOLERANCE:
        raise PackageError(
            f"{cfg['arch']}_{cfg['dataset']}: ONNX and PyTorch disagree by {worst:.2e} on P(malignant) "
            f"(tolerance {PARITY_TOLERANCE}); try another export.opset"
        )
    parity = {
        "images": int(len(val_images)),
        "max_abs_diff": worst,
        "tolerance": PARITY_TOLERANCE,
        "on": "the real val split",
    }
    net.cpu()
    cfg = {
        **cfg,
        "weights_sha256": weights_sha256(out / WEIGHTS),
        "onnx": {
            "file": ONNX,
            "opset": opset,
            "input": f"{PIXELS}: float32 (batch, 3, {cfg['input_size']}, {cfg['input_size']}), RGB in [0, 1]",
            "outputs": [f"{LOGITS}: (batch, 2)", f"{PROBABILITY}: (batch,)"],
            "external_data": f"{shared} of {total} initializers are read from {WEIGHTS}",
            "parity": parity,
        },
    }
    (out / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return parity


def weights_sha256(path: Path) -> str:
    """Hex sha256 of a weights file, read in 4 MiB chunks: what model_config.json's weights_sha256 records."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _numbers(v: Any, n: int, positive: bool) -> bool:
    return (
        isinstance(v, list)
        and len(v) == n
        and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and (x > 0 or not positive)
            for x in v
        )
    )


def check_package_fields(cfg: dict[str, Any], where: Path) -> None:
    """The fields a package needs to predict, all required and checked before it is used: the class order
    (malignant is class 1), the threshold (a number in [0, 1], not a bool) and its rule, the normalisation (3
    finite means, 3 positive stds), the preprocessing cap, the weights' sha256 (64 hex digits: without it the
    integrity check could not run), the dataset and the data source it names. A training folder (no threshold)
    is refused as one. Raises PackageError naming the field."""

    def bad(field: str, want: str) -> PackageError:
        return PackageError(
            f"{where}: {field} is {first_line(repr(cfg.get(field, 'missing')), 60)}; it must be "
            f"{want}; export or download the package again"
        )

    if "threshold" not in cfg and "classes" in cfg:
        raise PackageError(
            f"{where.parent} has no decision threshold (a training output, not a package): use "
            "models/export/<Arch>/<Arch>_<Dataset>/ from `dvc repro`, or a downloaded Hub folder"
        )
    if cfg.get("classes") != list(LABELS):
        raise bad("classes", f"{list(LABELS)} (malignant is class 1)")
    if cfg.get("positive_class") != LABELS[1]:
        raise bad("positive_class", repr(LABELS[1]))
    t = cfg.get("threshold")
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and 0 <= t <= 1):
        raise bad("threshold", "a number in [0, 1]")
    for field in ("threshold_rule", "dataset"):
        if not (isinstance(cfg.get(field), str) and cfg[field].isprintable()):
            raise bad(field, "one line of text")
    if not (isinstance(cfg.get("weights_sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", cfg["weights_sha256"])):
        raise bad("weights_sha256", "the sha256 of model.safetensors (64 hex digits)")
    if not (isinstance(cfg.get("data"), dict) and isinstance(cfg["data"].get("source"), str)):
        raise bad("data", "a mapping with the source the model was trained on")
    norm = cfg.get("normalisation")
    if not (isinstance(norm, dict) and _numbers(norm.get("mean"), 3, False) and _numbers(norm.get("std"), 3, True)):
        raise bad("normalisation", "{'mean': 3 numbers, 'std': 3 positive numbers}")
    pre = cfg.get("preprocessing")
    if not (
        isinstance(pre, dict)
        and isinstance(pre.get("max_side"), int)
        and not isinstance(pre.get("max_side"), bool)
        and 64 <= pre["max_side"] <= 20000
    ):
        raise bad("preprocessing", "{'max_side': an integer in [64, 20000]}")


def load(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a package (or training) folder's model_config.json; load its weights strictly.

    Reads model.safetensors (a package and a training cell both have it): never a pickle.
    """
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise PackageError(
            f"{folder} has no {CONFIG}: not a model folder (expected the export stage's "
            "models/export/<Arch>/<Arch>_<Dataset>/, a downloaded Hub folder, or a training output)"
        )
    cfg = read_config(folder / CONFIG)
    check_package_fields(cfg, folder / CONFIG)
    model = rebuild(cfg)
    if (folder / WEIGHTS).is_file():
        from safetensors import SafetensorError

        # the ONNX graph reads its weights at fixed offsets of this file: a rewritten file (even with the same
        # tensors) would make it compute garbage, so a package's file must be the one exported
        if weights_sha256(folder / WEIGHTS) != cfg["weights_sha256"]:
            raise PackageError(
                f"{folder / WEIGHTS} is not the file this package was exported with (sha256 differs "
                f"from {CONFIG}); its ONNX graph would compute garbage. Export or download it again"
            )
        from safetensors.torch import load_file

        try:
            state = load_file(str(folder / WEIGHTS))
        except SafetensorError as e:
            raise PackageError(
                f"{folder / WEIGHTS} is not a readable safetensors file ({e}); download it again"
            ) from None
        load_strict(model, state, str(folder / WEIGHTS))
    else:
        raise PackageError(f"{folder} has {CONFIG} but no weights ({WEIGHTS})")
    return model.eval(), cfg


def export_cell(
    model_dir: Path,
    eval_dir: Path,
    data_dir: Path,
    out: Path,
    opset: int,
    data: dict[str, Any],
    rt: Runtime = Runtime(),
) -> dict[str, Any]:
    """One trained and evaluated cell -> its package in the empty folder `out`; returns the parity record.

    The threshold and metrics come from the cell's evaluation (chosen on val, measured on test), so a package
    always decides as the report says it does. `data` (source, preprocessing) is recorded for the model card.
    """
    from melanoma.data.datasets import load_split

    metrics_file = eval_dir / "metrics.json"
    if not metrics_file.is_file():
        raise PackageError(f"no evaluation in {eval_dir}; run `dvc repro evaluate` first")
    ev = json.loads(metrics_file.read_text())
    seed_dir = model_dir / f"seed_{ev['seed']}"  # the packaged seed: best val AUROC
    model, cfg = load_classifier(seed_dir)
    cfg = {k: v for k, v in cfg.items() if k != "history"}
    cfg.update(
        {
            "threshold": ev["threshold"],
            "threshold_rule": ev["threshold_rule"],
            "decision": f"malignant if p_malignant >= threshold ({ev['threshold_rule']}, chosen on val)",
            "preprocessing": {
                "decode": "upright 8-bit RGB (EXIF applied, alpha over white)",
                "max_side": data["max_side"],
                "resize": f"Lanczos to {cfg['input_size']}x{cfg['input_size']} (no crop)",
            },
            "data": {k: v for k, v in data.items() if k != "max_side"},
            "evaluation": {s: ev[s] for s in ("val", "test", "external_test") if s in ev}
            | {
                "bootstrap": ev["bootstrap"],
                "seeds": ev["seeds"],
                "packaged_seed": ev["seed"],
                "over_seeds": ev["over_seeds"],
            },
        }
    )
    stats = json.loads((data_dir / "stats.json").read_text())
    cfg["data"]["training_set"] = {
        "dataset": stats["dataset"],
        "per_class": stats["per_class"]["train"],
        "by_origin": stats["counts"]["train"],
    }
    val_images, _ = load_split(data_dir, "val")
    return write_package(model, cfg, val_images, out, opset, seed_dir / WEIGHTS, rt)


def export_all(params: dict[str, Any], out: Path, rt: Runtime = Runtime()) -> dict[str, float]:
    """The `export` stage: package every cell of the grid into `out`; returns each cell's ONNX parity. The
    PyTorch side of the parity check runs on `rt`'s device; the ONNX export and onnxruntime on the CPU."""
    from melanoma.io import atomic_dir
    from melanoma.paths import DATASETS_DIR, classifier_dir, evaluation_dir

    c = params["classifiers"]
    from melanoma.paths import SPLITS_DIR

    report = json.loads((SPLITS_DIR / "split_report.json").read_text())
    data = {
        "source": params["data"]["source"],
        "max_side": params["data"]["max_side"],
        "split": {k: report[k] for k in ("seed", "fractions", "counts")},
        "split_rule": "lesion-grouped (near-duplicates and images of one lesion stay in one split); val and "
        "test are real images only; synthetic images are added to train only",
    }
    worst = {}
    with atomic_dir(out) as tmp:
        for arch in c["archs"]:
            for ds in c["datasets"]:
                cell = tmp / arch / f"{arch}_{ds}"
                cell.mkdir(parents=True)
                parity = export_cell(
                    classifier_dir(arch, ds),
                    evaluation_dir(arch, ds),
                    DATASETS_DIR / ds,
                    cell,
                    params["export"]["opset"],
                    data,
                    rt,
                )
                worst[f"{arch}_{ds}"] = parity["max_abs_diff"]
    return worst

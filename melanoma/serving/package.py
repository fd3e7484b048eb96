"""A trained cell as a product: one self-contained, pickle-free folder that predict, publish, timm and ONNX
runtimes read without this repository's training outputs.

    model.safetensors   the selected (best-on-val) weights
    model.onnx          [0, 1] RGB pixels (N, 3, H, W) -> logits (N, 2) and p_malignant (N); normalisation inside
    config.json         timm's Hub config (timm families only): `timm.create_model('hf-hub:<repo>', pretrained=True)`
    model_config.json   how it was built and trained, the preprocessing, the decision threshold chosen on val,
                        the evaluation (with CIs) and the ONNX parity measured at export

The ONNX graph takes pixels, not normalised tensors, so a consumer cannot get the mean/std wrong; the same
function (`prepare`) turns any image file into those pixels for predict as the pipeline did for training.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from melanoma.classifiers import family, load_strict
from melanoma.classifiers.inference import load_classifier, rebuild
from melanoma.data.datasets import resize
from melanoma.data.images import decode_image
from melanoma.errors import MelanomaError

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


def prepare(path: Path, input_size: int, max_side: int) -> np.ndarray:
    """An image file -> the (input_size, input_size, 3) uint8 pixels the pipeline would have trained on.

    The same two steps as fetch + build_dataset: decode to upright 8-bit RGB capped at `max_side` (RGBA, CMYK,
    16-bit, EXIF rotation, huge scans), then the one Lanczos resize. Raises images.ImageRejected with the reason.
    """
    from PIL import Image

    stored = decode_image(path, max_side)
    with Image.open(io.BytesIO(stored.data)) as im:
        return resize(np.asarray(im.convert("RGB")), input_size)


@torch.no_grad()
def torch_probabilities(model: Served, images: np.ndarray, batch: int = 64) -> np.ndarray:
    out = [model(pixels(images[i:i + batch]))[1] for i in range(0, len(images), batch)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.empty(0)


def onnx_probabilities(path: Path, images: np.ndarray, batch: int = 64) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = [session.run([PROBABILITY], {PIXELS: pixels(images[i:i + batch]).numpy()})[0]
           for i in range(0, len(images), batch)]
    return np.concatenate(out).astype(np.float64) if out else np.empty(0)


def write_onnx(model: Served, input_size: int, path: Path, opset: int) -> None:
    """Export with a dynamic batch axis (TorchScript-based exporter: the dynamo one needs onnxscript)."""
    example = torch.rand(2, 3, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notices
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[PIXELS], output_names=[LOGITS, PROBABILITY],
                          dynamic_axes={PIXELS: {0: "batch"}, LOGITS: {0: "batch"}, PROBABILITY: {0: "batch"}})


def timm_config(model: nn.Module, cfg: dict[str, Any]) -> dict[str, Any] | None:
    """timm's own Hub config for this model, describing our weights (not the ImageNet tag it was built from)."""
    if not family(cfg["arch"]).timm_loadable:
        return None  # timm alone cannot rebuild it: load it with melanoma.serving.package.load
    import tempfile

    from timm.models._hub import save_config_for_hf

    size = cfg["input_size"]  # CNNs take any size, so timm would otherwise keep the ImageNet default 224
    data = {"input_size": (3, size, size), "mean": tuple(cfg["normalisation"]["mean"]),
            "std": tuple(cfg["normalisation"]["std"]),
            "crop_pct": 1.0, "crop_mode": "squash", "interpolation": "lanczos"}  # as build_dataset
    with tempfile.TemporaryDirectory() as tmp:
        save_config_for_hf(model, Path(tmp) / TIMM_CONFIG,
                           model_config={"label_names": list(cfg["classes"]),
                                         "pretrained_cfg": {**data, "tag": None, "license": "cc-by-nc-4.0"}})
        out = json.loads((Path(tmp) / TIMM_CONFIG).read_text())
    out["pretrained_cfg"] = {k: v for k, v in out["pretrained_cfg"].items() if v is not None}
    return out


def write_package(model: nn.Module, cfg: dict[str, Any], val_images: np.ndarray, out: Path, opset: int) -> dict[str, Any]:
    """Write the package of one trained cell into the empty folder `out`; returns the ONNX parity record.

    `cfg` must already carry the threshold and evaluation; `val_images` (real, uint8 NHWC at the input size)
    are what the ONNX graph is checked on.
    """
    from safetensors.torch import save_file

    model = model.eval()
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS))
    tc = timm_config(model, cfg)
    if tc is not None:
        (out / TIMM_CONFIG).write_text(json.dumps(tc, indent=2) + "\n")
    net = served(model, cfg)
    write_onnx(net, cfg["input_size"], out / ONNX, opset)
    p_torch = torch_probabilities(net, val_images)
    p_onnx = onnx_probabilities(out / ONNX, val_images)
    worst = float(np.max(np.abs(p_torch - p_onnx))) if len(p_torch) else 0.0
    if not worst <= PARITY_TOLERANCE:
        raise PackageError(f"{cfg['arch']}_{cfg['dataset']}: ONNX and PyTorch disagree by {worst:.2e} on P(malignant) "
                           f"(tolerance {PARITY_TOLERANCE}); try another export.opset")
    parity = {"images": int(len(val_images)), "max_abs_diff": worst, "tolerance": PARITY_TOLERANCE,
              "on": "the real val split"}
    cfg = {**cfg, "onnx": {"file": ONNX, "opset": opset, "input": f"{PIXELS}: float32 (batch, 3, {cfg['input_size']}, "
                           f"{cfg['input_size']}), RGB in [0, 1]", "outputs": [f"{LOGITS}: (batch, 2)",
                                                                            f"{PROBABILITY}: (batch,)"],
                           "parity": parity}}
    (out / CONFIG).write_text(json.dumps(cfg, indent=2) + "\n")
    return parity


def load(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model from a package (or training) folder's model_config.json; load its weights strictly.

    Reads model.safetensors when present, else a training folder's model_best.pth with weights_only=True:
    never an arbitrary pickle.
    """
    folder = Path(folder)
    if not (folder / CONFIG).is_file():
        raise PackageError(f"{folder} has no {CONFIG}: not a model folder (expected the export stage's "
                           "models/export/<Arch>/<Arch>_<Dataset>/, a downloaded Hub folder, or a training output)")
    cfg = json.loads((folder / CONFIG).read_text())
    model = rebuild(cfg)
    if (folder / WEIGHTS).is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(folder / WEIGHTS))
        except SafetensorError as e:
            raise PackageError(f"{folder / WEIGHTS} is not a readable safetensors file ({e}); download it again") from None
        load_strict(model, state, str(folder / WEIGHTS))
    elif (folder / "model_best.pth").is_file():
        from melanoma.engine import load_checkpoint

        load_strict(model, load_checkpoint(folder / "model_best.pth"), str(folder / "model_best.pth"))
    else:
        raise PackageError(f"{folder} has {CONFIG} but no weights ({WEIGHTS} or model_best.pth)")
    return model.eval(), cfg


def export_cell(model_dir: Path, eval_dir: Path, data_dir: Path, out: Path, opset: int,
                data: dict[str, Any]) -> dict[str, Any]:
    """One trained and evaluated cell -> its package in the empty folder `out`; returns the parity record.

    The threshold and metrics come from the cell's evaluation (chosen on val, measured on test), so a package
    always decides as the report says it does. `data` (source, preprocessing) is recorded for the model card.
    """
    from melanoma.data.datasets import load_split

    metrics_file = eval_dir / "metrics.json"
    if not metrics_file.is_file():
        raise PackageError(f"no evaluation in {eval_dir}; run `dvc repro evaluate` first")
    model, cfg = load_classifier(model_dir)
    ev = json.loads(metrics_file.read_text())
    cfg = {k: v for k, v in cfg.items() if k != "history"}
    cfg.update({"threshold": ev["threshold"], "threshold_rule": ev["threshold_rule"],
                "decision": f"malignant if p_malignant >= threshold ({ev['threshold_rule']}, chosen on val)",
                "preprocessing": {"decode": "upright 8-bit RGB (EXIF applied, alpha over white)",
                                  "max_side": data["max_side"],
                                  "resize": f"Lanczos to {cfg['input_size']}x{cfg['input_size']} (no crop)"},
                "data": {k: v for k, v in data.items() if k != "max_side"},
                "evaluation": {s: ev[s] for s in ("val", "test", "external_test") if s in ev} | {
                    "bootstrap": ev["bootstrap"]}})
    stats = json.loads((data_dir / "stats.json").read_text())
    cfg["data"]["training_set"] = {"dataset": stats["dataset"], "per_class": stats["per_class"]["train"],
                                   "by_origin": stats["counts"]["train"]}
    val_images, _ = load_split(data_dir, "val")
    return write_package(model, cfg, val_images, out, opset)


def export_all(params: dict[str, Any], out: Path) -> dict[str, float]:
    """The `export` stage: package every cell of the grid into `out`; returns each cell's ONNX parity."""
    from melanoma.io import atomic_dir
    from melanoma.paths import DATASETS, classifier_dir, evaluation_dir

    c = params["classifiers"]
    from melanoma.paths import SPLITS

    report = json.loads((SPLITS / "split_report.json").read_text())
    data = {"source": params["data"]["source"], "max_side": params["data"]["max_side"],
            "split": {k: report[k] for k in ("seed", "fractions", "counts")},
            "split_rule": "lesion-grouped (near-duplicates and images of one lesion stay in one split); val and "
                          "test are real images only; synthetic images are added to train only"}
    worst = {}
    with atomic_dir(out) as tmp:
        for arch in c["archs"]:
            for ds in c["datasets"]:
                cell = tmp / arch / f"{arch}_{ds}"
                cell.mkdir(parents=True)
                parity = export_cell(classifier_dir(arch, ds), evaluation_dir(arch, ds), DATASETS / ds, cell,
                                     params["export"]["opset"], data)
                worst[f"{arch}_{ds}"] = parity["max_abs_diff"]
    return worst

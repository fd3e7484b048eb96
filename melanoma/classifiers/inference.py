"""Running a trained classifier: rebuild it from its folder, and P(malignant) for a batch of uint8 images.

Used by validation during training, by `evaluate`, by `export` (the PyTorch side of the ONNX check) and by
`melanoma predict`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from melanoma.classifiers.registry import build_model, load_strict
from melanoma.engine import CheckpointError, Runtime
from melanoma.errors import MelanomaError
from melanoma.io import read_small
from melanoma.params import ARCHS


def standardise(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) pixels -> float32 (x / 255 - mean) / std; mean/std broadcast as (1, 3, 1, 1)."""
    return (x_uint8.float() / 255 - mean) / std


@torch.no_grad()
def probabilities(
    model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, batch: int, rt: Runtime = Runtime()
) -> torch.Tensor:
    """P(malignant), float32 (N,) on the CPU, for uint8 (N, 3, H, W) images already on the model's device.

    Under torchrun each rank scores every world-th image and the parts are gathered, so all ranks return the
    whole vector. Runs under the runtime's autocast (bf16 on CUDA); the softmax is taken in float32.
    """
    model.eval()
    idx = torch.arange(rt.rank, images.shape[0], rt.world)
    out = []
    for i in range(0, len(idx), batch):
        xb = standardise(images[idx[i : i + batch].to(images.device)], mean, std)
        with rt.autocast():
            logits = model(xb)
        out.append(torch.softmax(logits.float(), 1)[:, 1])
    mine = torch.cat(out) if out else torch.empty(0, device=images.device)
    probs = torch.empty(images.shape[0])
    for r, part in enumerate(rt.gather(mine)):
        probs[torch.arange(r, images.shape[0], rt.world)] = part.cpu()
    return probs


def packaged_seed(val_auroc: dict[int, float], seeds: list[int]) -> int:
    """The seed of a cell that `export` packages: the best training-time val AUROC (model_config.json's
    `val_auroc`; test is never read), ties going to the first in `seeds` (classifiers.seeds' order). The one rule
    train_classifier (which stores that seed's weights in float32, the others in bfloat16) and evaluate (which
    names it in metrics.json) both apply. Raises KeyError when a seed of `seeds` has no val AUROC."""
    return max(seeds, key=lambda k: (val_auroc[k], -seeds.index(k)))


def load_classifier(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained cell from its model_config.json and load model.safetensors (strict).

    Returns (model in eval mode on the CPU, float32 parameters and buffers, the config dict): weights stored in
    bfloat16 (a cell's non-packaged seeds, `weights_dtype` in model_config.json) are upcast exactly by
    load_state_dict's copy. Raises CheckpointError for an unreadable weights file and WeightsMismatch when the
    weights do not fit the recorded architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg = read_config(folder / "model_config.json")
    model = rebuild(cfg)
    path = folder / "model.safetensors"
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CheckpointError(
            f"{path} is missing or not a readable safetensors file ({e}); rerun "
            "`dvc repro train_classifier` or `dvc pull` it"
        ) from None
    load_strict(model, state, str(path))
    return model.eval(), cfg


class ConfigError(MelanomaError):
    """A model_config.json that is unreadable or asks for something a package may not (checked before building)."""


MAX_INPUT_SIZE = 1024  # px; the study trains at 224


CONFIG_MAX_BYTES = 1 << 20  # a model_config.json is a few kB


def read_config(path: Path) -> dict[str, Any]:
    """A model_config.json, parsed and checked (check_config); ConfigError naming the file otherwise."""
    try:
        cfg = json.loads(read_small(path, "model config", CONFIG_MAX_BYTES).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:  # deep nesting: RecursionError
        raise ConfigError(f"{path} is not readable JSON ({type(e).__name__}); export or download it again") from None
    check_config(cfg, path)
    return cfg


def check_config(cfg: Any, where: Path | str) -> None:
    """A model config may name only a registry family and a plain timm model (no 'hf-hub:' or other loader
    prefix: nothing is fetched), with 2 classes, an input size in [16, MAX_INPUT_SIZE] px and kwargs free of
    loader arguments (the registry refuses those). Raises ConfigError naming the field."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: not a JSON object")
    rules = {
        "arch": lambda v: v in ARCHS,
        "model": lambda v: isinstance(v, str) and re.fullmatch(r"[\w.-]+", v),
        "kwargs": lambda v: isinstance(v, dict),
        "num_classes": lambda v: v == 2,
        "input_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and 16 <= v <= MAX_INPUT_SIZE,
    }
    for key, ok in rules.items():
        if key not in cfg or not ok(cfg[key]):
            raise ConfigError(
                f"{where}: field '{key}' is {cfg.get(key, 'missing')!r}; a package needs arch one of "
                f"{', '.join(ARCHS)}, a plain timm model name, kwargs as an object, num_classes 2 and "
                f"input_size 16-{MAX_INPUT_SIZE}"
            )


def rebuild(cfg: dict[str, Any]) -> nn.Module:
    """The untrained network a model_config.json describes (arch, model, kwargs, num_classes, input_size),
    built through the registry without pretrained weights: the caller loads the trained ones."""
    check_config(cfg, "model_config.json")
    spec = {"model": cfg["model"], "pretrained": False, "kwargs": cfg["kwargs"], "lr": 0.0}
    return build_model(cfg["arch"], spec, cfg["num_classes"], cfg["input_size"]).model

"""One loader for params.yaml: every stage reads its section through `load_params`.

DVC writes `dvc exp run -S key=value` straight into params.yaml, so validating here is what makes a typo in
`-S` fail with a message instead of running a 20-minute pipeline on a silently wrong value.
The schema is declared once below; unknown keys, wrong types and out-of-range values all fail with the key
path and what is allowed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from melanoma.device import DEVICES
from melanoma.errors import MelanomaError

LABELS = ("benign", "malignant")
SEED_MAX = 2**32 - 1  # numpy's legacy seeding and the CUDA generators take no more
PLACEHOLDER_IDS = {"", "nan", "none", "null", "na", "n/a", "-", "?", "unknown"}  # what tables write for "no id"
SOURCES = ("demo", "local", "isic_csv", "gdrive")
# data.format: how a local or downloaded folder is read (melanoma.data.releases)
FORMATS = ("auto", "folders", "isic2016", "isic2017", "isic2018", "isic2019", "isic2020", "ham10000", "ph2",
           "isic_archive")
SAMPLERS = ("ddpm", "ddim", "dpmsolver++")
GENERATORS = ("dcgan", "ddpm")  # generator families, each trained once per label
ARCHS = ("BioViT", "DenseNet", "ResNet", "Swin", "ViT", "MedViT")  # classifier families (the grid's rows)
# the grid's columns -> the synthetic folder (data/synthetic/<name>) each adds to train; None: real images only
DATASETS = {"Original": None, "DCGAN": "dcgan", "DCGAN_Upscaled": "dcgan_upscaled", "DDPM": "ddpm",
            "DDPM_Upscaled": "ddpm_upscaled"}
DATASET_NAMES = tuple(DATASETS)


class ParamsError(MelanomaError, ValueError):
    """A params.yaml value is missing, unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class Field:
    """One leaf of the schema: its type and the values it may take."""

    kind: type | tuple[type, ...]
    choices: tuple[Any, ...] = ()
    min: float | None = None
    max: float | None = None
    nullable: bool = False
    values: tuple[str, ...] = ()  # for dict fields: allowed values of the mapping
    item: type | None = None  # for list fields: the type of every element


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
               list: "a list"}
_PLURALS = {int: "integers", float: "numbers", str: "strings"}


SCHEMA: dict[str, Any] = {
    "device": Field(str, choices=DEVICES),  # auto | cuda (refuse without a usable GPU) | cpu (melanoma.device)
    "data": {
        "source": Field(str, choices=SOURCES),
        "max_side": Field(int, min=64, max=20000),
        "max_pixels": Field(int, min=1_000_000, max=1_000_000_000),  # images declaring more are refused unread
        "max_file_mb": Field(int, min=1, max=100_000),
        "max_reject_fraction": Field(float, min=0.0, max=1.0),
        "label_map": Field(dict, values=LABELS + ("reject",)),
        "format": Field(str, choices=FORMATS),
        "demo": {
            "seed": Field(int, min=0, max=SEED_MAX),
            "n_benign": Field(int, min=1, max=1_000_000),
            "n_malignant": Field(int, min=1, max=1_000_000),
            "image_size": Field(int, min=32, max=1024),
            "label_noise": Field(float, min=0.0, max=0.5),
            "repeat_fraction": Field(float, min=0.0, max=0.5),
        },
        "local": {"path": Field(str)},
        "isic_csv": {"images": Field(str), "csv": Field(str)},
        "gdrive": {"folder_id": Field(str), "download_dir": Field(str)},
    },
    "generators": {
        "image_size": Field(int, min=16, max=256),
        "seed": Field(int, min=0, max=SEED_MAX),
        "threads": Field(int, min=0, max=256),  # 0: torch's default
        "checkpoint_every": Field(int, min=1),
        "dcgan": {
            "nz": Field(int, min=1, max=1024),
            "ngf": Field(int, min=4, max=512),
            "ndf": Field(int, min=4, max=512),
            "steps": Field(int, min=1),
            "batch_size": Field(int, min=2, max=4096),
            "lr": Field(float, min=1e-7, max=1.0),
            "beta1": Field(float, min=0.0, max=0.999),
            "beta2": Field(float, min=0.0, max=0.9999),
            "lr_floor": Field(float, min=0.01, max=1.0),
            "label_smoothing": Field(float, min=0.0, max=0.5),
            "diff_augment": Field(bool),
            "ema_decay": Field(float, min=0.0, max=0.9999),
            "divergence_steps": Field(int, min=1),
        },
        "ddpm": {
            "block_out_channels": Field(list, item=int),
            "layers_per_block": Field(int, min=1, max=4),
            "attention": Field(bool),
            "steps": Field(int, min=1),
            "batch_size": Field(int, min=1, max=4096),
            "lr": Field(float, min=1e-7, max=1.0),
            "weight_decay": Field(float, min=0.0, max=1.0),
            "warmup_steps": Field(int, min=0),
            "lr_floor": Field(float, min=0.01, max=1.0),
            "num_train_timesteps": Field(int, min=10, max=10000),
            "beta_schedule": Field(str, choices=("linear", "scaled_linear", "squaredcos_cap_v2")),
            "ema_decay": Field(float, min=0.0, max=0.9999),
            "grad_clip": Field(float, min=0.0),
            "min_snr_gamma": Field(float, min=0.0, max=100.0),
            "pretrained": Field(str),
            "sampler": Field(str, choices=SAMPLERS),
            "sampling_steps": Field(int, min=1, max=1000),
            "processes": Field(int, min=1, max=1024),
        },
    },
    "synthesize": {
        "seed": Field(int, min=0, max=SEED_MAX),
        "batch_size": Field(int, min=1, max=4096),
        "quality_samples": Field(int, min=8, max=100_000),
        "memorisation_ratio": Field(float, min=0.0, max=1.0),
    },
    "upscale": {
        "method": Field(str, choices=("bicubic", "lanczos", "sr", "hub")),
        "factor": Field(int, min=2, max=8),
        "seed": Field(int, min=0, max=SEED_MAX),
        "sr": {
            "channels": Field(int, min=4, max=512),
            "steps": Field(int, min=1),
            "batch_size": Field(int, min=1, max=4096),
            "lr": Field(float, min=1e-7, max=1.0),
        },
        "hub": {"model": Field(str)},
    },
    "datasets": {
        "image_size": Field(int, min=16, max=1024),
        "per_class": Field((int, str), choices=("balance",), min=1, max=1_000_000),
    },
    "classifiers": {
        "archs": Field(list, item=str, choices=ARCHS),
        "datasets": Field(list, item=str, choices=DATASET_NAMES),
        "seeds": Field(list, item=int, min=0, max=SEED_MAX),  # every cell is trained once per seed
        "train": {
            "steps": Field(int, min=1, max=10_000_000),  # optimiser steps per cell, the same for every dataset
            "eval_every": Field(int, min=1, max=10_000_000),  # steps between validations (val AUROC)
            "batch_size": Field(int, min=2, max=65_536),
            "eval_batch_size": Field(int, min=1, max=65_536),
            "weight_decay": Field(float, min=0.0, max=1.0),
            "warmup_steps": Field(int, min=0, max=10_000_000),
            "lr_floor": Field(float, min=0.0, max=1.0),
            "patience": Field(int, min=1),  # validations without a better val AUROC before stopping
            "imbalance": Field(str, choices=("weighted_loss", "balanced_sampling", "none")),
            "augment": {
                "hflip": Field(bool),
                "rot90": Field(bool),
                "rotate_degrees": Field(float, min=0.0, max=180.0),
                "scale": Field(float, min=0.0, max=0.5),
                "translate": Field(float, min=0.0, max=0.5),
                "color_jitter": Field(float, min=0.0, max=0.9),
            },
            "threads": Field(int, min=0, max=256),
            "processes": Field(int, min=1, max=1024),
            "compile": Field(bool),
            "bf16": Field(bool),
        },
        "models": {arch: {
            "model": Field(str),
            "pretrained": Field(bool),
            "lr": Field(float, min=1e-8, max=1.0),
            "kwargs": Field(dict),
        } for arch in ARCHS},
    },
    "evaluate": {
        "threshold": Field(str, choices=("youden", "sensitivity")),
        "target_sensitivity": Field(float, min=0.01, max=1.0),
        "bootstrap": Field(int, min=10, max=100_000),
        "seed": Field(int, min=0, max=SEED_MAX),
        "calibration_bins": Field(int, min=2, max=100),
        "gradcam_per_group": Field(int, min=0, max=100),
    },
    "export": {"opset": Field(int, min=14, max=20)},
    "publish": {"repo": Field(str), "private": Field(bool)},
    "split": {
        "seed": Field(int, min=0, max=SEED_MAX),
        "val_fraction": Field(float, min=0.01, max=0.5),  # val picks the threshold and the best step
        "test_fraction": Field(float, min=0.01, max=0.5),  # every cell is scored on test
        "conflicting_labels": Field(str, choices=("drop", "fail")),
        "near_duplicate_corr": Field(float, min=0.5, max=1.0),
    },
}


def _describe(f: Field) -> str:
    if f.choices and f.kind is str:
        return "one of " + ", ".join(map(str, f.choices))
    kinds = f.kind if isinstance(f.kind, tuple) else (f.kind,)
    text = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
    if f.min is not None and f.max is not None:
        text += f" in [{f.min}, {f.max}]"
    elif f.min is not None:
        text += f" >= {f.min}"
    elif f.max is not None:
        text += f" <= {f.max}"
    if f.values:
        text += " with values in " + ", ".join(f.values)
    if f.choices:
        text += " or one of " + ", ".join(map(str, f.choices))
    return text


def _check_leaf(path: str, value: Any, f: Field) -> Any:
    if value is None:
        if f.nullable:
            return None
        raise ParamsError(f"{path} is null; it must be {_describe(f)}")
    kinds = f.kind if isinstance(f.kind, tuple) else (f.kind,)
    ok = any(
        isinstance(value, k) and not (k in (int, float) and isinstance(value, bool)) for k in kinds
    ) or (float in kinds and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ParamsError(f"{path} is {value!r} ({type(value).__name__}); it must be {_describe(f)}")
    if float in kinds and isinstance(value, int):
        value = float(value)
    if f.choices and f.item is None and isinstance(value, str) and value not in f.choices:
        raise ParamsError(f"{path} must be one of {', '.join(map(str, f.choices))} (got {value!r})")
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if numeric and not math.isfinite(value):
        raise ParamsError(f"{path} is {value!r}; it must be {_describe(f)}")
    if numeric and (f.min is not None and value < f.min or f.max is not None and value > f.max):
        raise ParamsError(f"{path} is {value!r}; it must be {_describe(f)}")
    if f.item is not None:
        if not value or any(not isinstance(v, f.item) or isinstance(v, bool) for v in value):
            raise ParamsError(f"{path} is {value!r}; it must be a non-empty list of {_PLURALS[f.item]}")
        if f.item is int and any(f.min is not None and v < f.min or f.max is not None and v > f.max for v in value):
            raise ParamsError(f"{path} is {value!r}; each item must be {_describe(f)}")
        wrong = [v for v in value if f.choices and v not in f.choices]
        if wrong:
            raise ParamsError(f"{path} has {wrong[0]!r}; each item must be one of {', '.join(f.choices)}")
        if f.choices and len(set(value)) != len(value):
            raise ParamsError(f"{path} lists an item twice: {value!r}")
    if f.values:
        value = {str(k): v for k, v in value.items()}  # YAML reads folder names like 4 as integers
        for k, v in value.items():
            if v not in f.values:
                raise ParamsError(
                    f"{path}.{k} is {v!r}; each value must be one of {', '.join(f.values)}"
                )
    return value


# Input sides each classifier family can take: (smallest, multiple of); the registry (melanoma.classifiers)
# enforces the same table when it builds a model. MedViT's patch merging needs exact division by 32; DenseNet's
# five stride-2 steps leave nothing below 32 px; ViT-style families need a multiple of their patch size.
INPUT_SIDES = {"MedViT": (32, 32), "DenseNet": (32, 1)}
# kwargs that size a network (timm's ViT/Swin/DenseNet, our MedViT): whole numbers >= 1, or lists of them
STRUCTURAL_KWARGS = {"depth", "depths", "num_heads", "embed_dim", "patch_size", "window_size", "widths", "stem_chs",
                     "ltb_widths", "block_config", "growth_rate", "mlp_ratio_int"}


def input_rule(arch: str, kwargs: dict[str, Any]) -> tuple[int, int]:
    """(smallest side, multiple) a family's member built with `kwargs` takes (px)."""
    if arch in ("ViT", "BioViT"):
        patch = kwargs.get("patch_size")
        patch = patch if isinstance(patch, int) and patch > 0 else 16
        return patch, patch
    return INPUT_SIDES.get(arch, (16, 1))


def cross_check(p: dict[str, Any]) -> None:
    """Rules between keys, checked whenever params load so that `dvc exp run -S` fails before any stage runs.

    Raises ParamsError naming the keys and the values that would work."""
    size = p["generators"]["image_size"]
    if size & (size - 1):
        raise ParamsError(f"generators.image_size is {size}; the DCGAN doubles its way up, so it must be a power "
                          "of two (32, 64, 128, 256)")
    ddpm = p["generators"]["ddpm"]
    if any(c <= 0 for c in ddpm["block_out_channels"]):
        raise ParamsError("generators.ddpm.block_out_channels must all be positive, e.g. [128, 128, 256, 256, 512, 512]")
    halvings = len(ddpm["block_out_channels"]) - 1  # the UNet halves the side between consecutive blocks
    if size % 2 ** halvings:
        raise ParamsError(f"generators.image_size {size} cannot be halved {halvings} times, as the "
                          f"{len(ddpm['block_out_channels'])} generators.ddpm.block_out_channels need; use fewer blocks "
                          f"or a larger size")
    if ddpm["sampler"] != "ddpm" and ddpm["sampling_steps"] > ddpm["num_train_timesteps"]:
        raise ParamsError(f"generators.ddpm.sampling_steps ({ddpm['sampling_steps']}) exceeds "
                          f"generators.ddpm.num_train_timesteps ({ddpm['num_train_timesteps']})")
    for key in ("local.path", "isic_csv.images", "isic_csv.csv", "gdrive.folder_id", "gdrive.download_dir"):
        section, leaf = key.split(".")
        if not p["data"][section][leaf].strip():
            raise ParamsError(f"data.{key} is empty; name a path (an empty one would mean the project folder)")
    if not p["publish"]["repo"].strip():
        raise ParamsError("publish.repo is empty; give a Hub repo id template such as you/melanoma-{cell}")
    for arch, spec in p["classifiers"]["models"].items():
        if not spec["model"].strip() or len(spec["model"]) > 200:
            raise ParamsError(f"classifiers.models.{arch}.model is {spec['model'][:40]!r}; name a timm model")
        for k, v in spec["kwargs"].items():
            values = v if isinstance(v, list) else [v]
            if k in STRUCTURAL_KWARGS and not all(isinstance(x, int) and not isinstance(x, bool)
                                                  and 1 <= x <= 65_536 for x in values):
                raise ParamsError(f"classifiers.models.{arch}.kwargs.{k} is {v!r}; it sizes the network: whole "
                                  "numbers from 1 to 65536")
    if any(c > 65_536 for c in ddpm["block_out_channels"]):
        raise ParamsError("generators.ddpm.block_out_channels must be at most 65536 each")
    seeds, tp = p["classifiers"]["seeds"], p["classifiers"]["train"]
    if len(set(seeds)) != len(seeds):
        raise ParamsError(f"classifiers.seeds lists a seed twice: {seeds}; each repeat needs its own seed")
    if tp["eval_every"] > tp["steps"] or tp["warmup_steps"] >= tp["steps"]:
        raise ParamsError(f"classifiers.train.eval_every ({tp['eval_every']}) and warmup_steps ({tp['warmup_steps']}) "
                          f"must be below classifiers.train.steps ({tp['steps']})")
    px = p["datasets"]["image_size"]
    for arch in p["classifiers"]["archs"]:
        smallest, multiple = input_rule(arch, p["classifiers"]["models"][arch]["kwargs"])
        if px < smallest or px % multiple:
            raise ParamsError(f"datasets.image_size is {px}, which {arch} cannot take: it needs at least {smallest} "
                              f"px and a multiple of {multiple}; change datasets.image_size or drop {arch} from "
                              "classifiers.archs")


def validate(tree: Any, schema: dict[str, Any] = SCHEMA, prefix: str = "") -> dict[str, Any]:
    """Check a whole params tree against the schema (and, at the top, the rules between keys) and return it with
    numbers normalised."""
    if not isinstance(tree, dict):
        where = prefix or "params.yaml"
        raise ParamsError(f"{where} must be a mapping of keys, got {type(tree).__name__}")
    unknown = sorted(set(tree) - set(schema))
    if unknown:
        known = ", ".join(sorted(schema))
        raise ParamsError(f"unknown key {prefix}{unknown[0]}; allowed keys here are: {known}")
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        path = f"{prefix}{key}"
        if key not in tree:
            what = "a section" if isinstance(spec, dict) else _describe(spec)
            raise ParamsError(f"{path} is missing from params.yaml (expected {what})")
        if isinstance(spec, dict):
            out[key] = validate(tree[key], spec, prefix=f"{path}.")
        else:
            out[key] = _check_leaf(path, tree[key], spec)
    if schema is SCHEMA:
        cross_check(out)
    return out


def synthetic_counts(real: dict[str, int], per_class: int | str) -> dict[str, int]:
    """Synthetic training images per class for an augmented dataset: each class is filled up to `per_class`
    images, real ones first ('balance': up to the larger real class). A class with more real images than the
    target gets none (no real image is ever dropped). `real`: real train images per label; keys: LABELS."""
    target = max(real.get(c, 0) for c in LABELS) if per_class == "balance" else int(per_class)
    return {c: max(0, target - real.get(c, 0)) for c in LABELS}


def adds_nothing(real: dict[str, int], per_class: int | str) -> str:
    """'' when `datasets.per_class` adds synthetic images to the real train counts `real`; else the one-line
    error that stops the run before any generator is trained (every augmented dataset would equal Original)."""
    if sum(synthetic_counts(real, per_class).values()):
        return ""
    counts = " and ".join(f"{real.get(c, 0)} {c}" for c in LABELS)
    return (f"params.yaml datasets.per_class: {per_class} adds no synthetic image to a train split of {counts} images, "
            "so every augmented dataset would equal Original; set it above the larger class, e.g. "
            f"`dvc exp run -S datasets.per_class={2 * max(real.get(c, 0) for c in LABELS)}`")


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read and validate params.yaml; every error names the key path and what it allows."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path} not found; run from the project root (where dvc.yaml is)")
    try:
        tree = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ParamsError(f"{path} cannot be read as UTF-8 text ({type(e).__name__}: {e}); save it as UTF-8") from None
    return validate(tree)

"""One loader for params.yaml: every stage reads its section through `load_params`.

DVC writes `dvc exp run -S key=value` straight into params.yaml, so validating here is what makes a typo in
`-S` fail with a message instead of running a 20-minute pipeline on a silently wrong value.
The schema is declared once below; unknown keys, wrong types and out-of-range values all fail with the key
path and what is allowed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import yaml

from melanoma.device import DEVICES
from melanoma.errors import MelanomaError
from melanoma.io import read_small

LABELS = ("benign", "malignant")
SEED_MAX = 2**32 - 1  # numpy's legacy seeding and the CUDA generators take no more
PLACEHOLDER_IDS = {"", "nan", "none", "null", "na", "n/a", "-", "?", "unknown"}  # what tables write for "no id"
SOURCES = ("demo", "local", "isic_csv", "gdrive")
# data.format: how a local or downloaded folder is read (melanoma.data.releases)
FORMATS = (
    "auto",
    "folders",
    "isic2016",
    "isic2017",
    "isic2018",
    "isic2019",
    "isic2020",
    "ham10000",
    "ph2",
    "isic_archive",
)
SAMPLERS = ("ddpm", "ddim", "dpmsolver++")
GENERATORS = ("dcgan", "ddpm")  # generator families, each trained once per label
ARCHS = ("BioViT", "DenseNet", "ResNet", "Swin", "ViT", "MedViT")  # classifier families (the grid's rows)
# the grid's columns -> the synthetic folder (data/synthetic/<name>) each adds to train; None: real images only
DATASET_SOURCES = {
    "Original": None,
    "DCGAN": "dcgan",
    "DCGAN_Upscaled": "dcgan_upscaled",
    "DDPM": "ddpm",
    "DDPM_Upscaled": "ddpm_upscaled",
}
DATASET_NAMES = tuple(DATASET_SOURCES)
COUNT_MAX = 10_000_000  # the ceiling of every integer count the schema gives no other (10 M optimiser steps: days
# of GPU time at the study's shapes); a budget above it is a typo, not a plan
PER_CLASS = (
    "a number of images per class from 1 to 1000000 (e.g. 3250) or a multiple of the larger real train "
    "class from 1x to 1000x (e.g. 3x)"
)


# Keys every stage may read without declaring them in dvc.yaml (melanoma.stage.stage_params): they change how a run
# goes, never what it produces, so a change must rerun nothing. checkpoint_minutes: a resumed run ends with the
# same weights as an uninterrupted one wherever it was checkpointed (tests/test_engine.py).
RUN_SETTINGS = ("checkpoint_minutes",)


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
    empty: bool = False  # for list fields: whether [] is allowed
    doc: str = ""  # what the field takes, in words, where the types alone would mislead

    def __post_init__(self) -> None:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if int in kinds and float not in kinds and self.max is None:  # counts: steps, intervals, patience
            object.__setattr__(self, "max", COUNT_MAX)


_TYPE_NAMES = {
    int: "an integer",
    float: "a number",
    str: "a string",
    bool: "true or false",
    dict: "a mapping",
    list: "a list",
}
_PLURALS = {int: "integers", float: "numbers", str: "strings"}


SCHEMA: dict[str, Any] = {
    "device": Field(str, choices=DEVICES),  # auto | cuda (refuse without a usable GPU) | cpu (melanoma.device)
    "checkpoint_minutes": Field((int, float), min=0, max=24 * 60),  # a run setting (RUN_SETTINGS)
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
            "attention_resolutions": Field(list, item=int, empty=True),
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
        "per_class": Field((int, str), min=1, max=1_000_000, doc=PER_CLASS),  # see per_class_target
        "min_synthetic_share": Field(float, min=0.0, max=0.99),  # `split` refuses augmented sets below it
    },
    "classifiers": {
        "archs": Field(list, item=str, choices=ARCHS),
        "datasets": Field(list, item=str, choices=DATASET_NAMES),
        "seeds": Field(list, item=int, min=0, max=SEED_MAX),  # every cell is trained once per seed
        "train": {
            "steps": Field(
                (int, str),
                choices=("auto",),
                min=1,
                max=10_000_000,  # per cell and seed (train_steps)
                doc="a number of optimiser steps from 1 to 10000000, or auto (`passes` over an augmented set)",
            ),
            "passes": Field(float, min=0.01, max=100_000.0),  # steps: auto -> passes over an augmented set
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
        "models": {
            arch: {
                "model": Field(str),
                "pretrained": Field(bool),
                "lr": Field(float, min=1e-8, max=1.0),
                "kwargs": Field(dict),
            }
            for arch in ARCHS
        },
    },
    "evaluate": {
        "threshold": Field(str, choices=("youden", "sensitivity")),
        "target_sensitivity": Field(float, min=0.01, max=1.0),
        "bootstrap": Field(int, min=10, max=100_000),
        "seed": Field(int, min=0, max=SEED_MAX),
        "calibration_bins": Field(int, min=2, max=100),
        "gradcam_per_group": Field(int, min=0, max=100),
        "subgroups": {
            # a subgroup gets estimates only with at least this many held-out images of each class
            "min_per_class": Field(int, min=2, max=10_000),
            "age_edges": Field(list, item=int, doc="ascending ages in years, e.g. [40, 60]"),
        },
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
    if f.doc:
        return f.doc
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
    ok = any(isinstance(value, k) and not (k in (int, float) and isinstance(value, bool)) for k in kinds) or (
        float in kinds and isinstance(value, int) and not isinstance(value, bool)
    )
    if not ok:
        raise ParamsError(f"{path} is {value!r} ({type(value).__name__}); it must be {_describe(f)}")
    if float in kinds and isinstance(value, int):
        value = float(value)
    if f.choices and f.item is None and isinstance(value, str) and value not in f.choices:
        if f.doc:
            raise ParamsError(f"{path} is {value!r}; it must be {f.doc}")
        raise ParamsError(f"{path} must be one of {', '.join(map(str, f.choices))} (got {value!r})")
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if numeric and not math.isfinite(value):
        raise ParamsError(f"{path} is {value!r}; it must be {_describe(f)}")
    if numeric and (f.min is not None and value < f.min or f.max is not None and value > f.max):
        raise ParamsError(f"{path} is {value!r}; it must be {_describe(f)}")
    if f.item is not None:
        if not (value or f.empty) or any(not isinstance(v, f.item) or isinstance(v, bool) for v in value):
            raise ParamsError(
                f"{path} is {value!r}; it must be a {'' if f.empty else 'non-empty '}list of {_PLURALS[f.item]}"
            )
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
                raise ParamsError(f"{path}.{k} is {v!r}; each value must be one of {', '.join(f.values)}")
    return value


# Input sides each classifier family can take: (smallest, multiple of); the registry (melanoma.classifiers)
# enforces the same table when it builds a model. MedViT's patch merging needs exact division by 32; DenseNet's
# five stride-2 steps leave nothing below 32 px; ViT-style families need a multiple of their patch size.
INPUT_SIDES = {"MedViT": (32, 32), "DenseNet": (32, 1)}
# kwargs that size a network (timm's ViT/Swin/DenseNet, our MedViT): whole numbers >= 1, or lists of them
STRUCTURAL_KWARGS = {
    "depth",
    "depths",
    "num_heads",
    "embed_dim",
    "patch_size",
    "window_size",
    "widths",
    "stem_chs",
    "ltb_widths",
    "block_config",
    "growth_rate",
    "mlp_ratio_int",
}


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
        raise ParamsError(
            f"generators.image_size is {size}; the DCGAN doubles its way up, so it must be a power "
            "of two (32, 64, 128, 256)"
        )
    ddpm = p["generators"]["ddpm"]
    if any(c <= 0 for c in ddpm["block_out_channels"]):
        raise ParamsError(
            "generators.ddpm.block_out_channels must all be positive, e.g. [128, 128, 256, 256, 512, 512]"
        )
    halvings = len(ddpm["block_out_channels"]) - 1  # the UNet halves the side between consecutive blocks
    if size % 2**halvings:
        raise ParamsError(
            f"generators.image_size {size} cannot be halved {halvings} times, as the "
            f"{len(ddpm['block_out_channels'])} generators.ddpm.block_out_channels need; use fewer blocks "
            f"or a larger size"
        )
    if ddpm["sampler"] != "ddpm" and ddpm["sampling_steps"] > ddpm["num_train_timesteps"]:
        raise ParamsError(
            f"generators.ddpm.sampling_steps ({ddpm['sampling_steps']}) exceeds "
            f"generators.ddpm.num_train_timesteps ({ddpm['num_train_timesteps']})"
        )
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
            if k in STRUCTURAL_KWARGS and not all(
                isinstance(x, int) and not isinstance(x, bool) and 1 <= x <= 65_536 for x in values
            ):
                raise ParamsError(
                    f"classifiers.models.{arch}.kwargs.{k} is {v!r}; it sizes the network: whole "
                    "numbers from 1 to 65536"
                )
    if any(c > 65_536 for c in ddpm["block_out_channels"]):
        raise ParamsError("generators.ddpm.block_out_channels must be at most 65536 each")
    seeds, tp = p["classifiers"]["seeds"], p["classifiers"]["train"]
    if len(set(seeds)) != len(seeds):
        raise ParamsError(f"classifiers.seeds lists a seed twice: {seeds}; each repeat needs its own seed")
    if tp["steps"] != "auto" and budget_problem(tp, tp["steps"]):
        raise ParamsError(budget_problem(tp, tp["steps"]))
    per_class = p["datasets"]["per_class"]
    if isinstance(per_class, str) and not (MULTIPLE.fullmatch(per_class) and float(per_class[:-1]) <= 1000):
        raise ParamsError(f"datasets.per_class is {per_class!r}; it must be {PER_CLASS}")
    edges = p["evaluate"]["subgroups"]["age_edges"]
    if not edges or any(not 0 < e <= 120 for e in edges) or edges != sorted(set(edges)):
        raise ParamsError(
            f"evaluate.subgroups.age_edges is {edges}; it must be ages in years between 1 and 120 in ascending "
            "order, e.g. [40, 60] for the bands <40, 40-59, 60+"
        )
    px = p["datasets"]["image_size"]
    for arch in p["classifiers"]["archs"]:
        smallest, multiple = input_rule(arch, p["classifiers"]["models"][arch]["kwargs"])
        if px < smallest or px % multiple:
            raise ParamsError(
                f"datasets.image_size is {px}, which {arch} cannot take: it needs at least {smallest} "
                f"px and a multiple of {multiple}; change datasets.image_size or drop {arch} from "
                "classifiers.archs"
            )


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


MULTIPLE = re.compile(r"(?:[1-9]\d{0,2}|1000)(?:\.\d{1,3})?x")  # datasets.per_class as a multiple: 1x ... 1000x


def per_class_target(real: dict[str, int], per_class: int | str) -> int:
    """Training images per class in every augmented dataset: `per_class` itself when it is a count, else
    ('<m>x') m times the larger real class of the train split, rounded half up. `real`: real train images per label."""
    if isinstance(per_class, str):  # exact decimal arithmetic, half up: 2.5x of 17 is 43, 1.13x of 50 is 57
        m = Decimal(per_class[:-1]) * max(real.get(c, 0) for c in LABELS)
        return int(m.to_integral_value(rounding=ROUND_HALF_UP))
    return int(per_class)


def synthetic_counts(real: dict[str, int], per_class: int | str) -> dict[str, int]:
    """Synthetic training images per class for an augmented dataset: each class is filled up to
    per_class_target images, real ones first. A class with more real images than the target gets none (no real
    image is ever dropped). `real`: real train images per label; keys: LABELS."""
    target = per_class_target(real, per_class)
    return {c: max(0, target - real.get(c, 0)) for c in LABELS}


def train_size(dataset: str, real: dict[str, int], per_class: int | str) -> int:
    """Training images in one dataset: Original = the real train images; augmented = real + synthetic fill."""
    added = sum(synthetic_counts(real, per_class).values()) if DATASET_SOURCES[dataset] else 0
    return sum(real.get(c, 0) for c in LABELS) + added


def synthetic_share(real: dict[str, int], per_class: int | str) -> float:
    """Fraction of an augmented training set that is synthetic, in [0, 1) (0 for an empty split)."""
    total = train_size("DCGAN", real, per_class)
    return sum(synthetic_counts(real, per_class).values()) / total if total else 0.0


def share_problem(real: dict[str, int], per_class: int | str, min_share: float) -> str:
    """'' when the augmented datasets add synthetic images and are at least `min_share` synthetic; else the
    one-line error that stops `split` before any generator is trained: the augmented sets would equal Original,
    or differ from it too little for the verdict to test anything."""
    share, counts = synthetic_share(real, per_class), " + ".join(f"{real.get(c, 0)} {c}" for c in LABELS)
    if share >= min_share and share > 0:
        return ""
    if not max(real.get(c, 0) for c in LABELS):
        return f"the train split holds no real images ({counts}): there is nothing to augment; rerun `dvc repro split`"
    m = next(m for m in range(1, 1001) if synthetic_share(real, f"{m}x") >= max(min_share, 0.01))
    fix = (
        f"set a multiple of the larger class, e.g. `dvc exp run -S datasets.per_class={m}x` "
        f"({synthetic_share(real, f'{m}x'):.0%} synthetic)"
    )
    added = sum(synthetic_counts(real, per_class).values())
    if not added:
        return (
            f"params.yaml datasets.per_class: {per_class} adds no synthetic image to {counts} real train images, "
            f"so every augmented dataset would equal Original; {fix}"
        )
    return (
        f"params.yaml datasets.per_class: {per_class} adds {added} synthetic images to {counts} real train "
        f"images: {share:.1%} of each augmented set, below datasets.min_synthetic_share {min_share:g}, so the "
        f"augmented datasets would hardly differ from Original; {fix}, or lower datasets.min_synthetic_share "
        "for a deliberate small-share run"
    )


def train_steps(tp: dict[str, Any], real: dict[str, int], per_class: int | str) -> int:
    """Optimiser steps per cell and seed, the same for every dataset: `classifiers.train.steps` when it is a
    number; for `auto`, `passes` passes over an augmented training set (the largest: every real image plus the
    synthetic fill), rounded up to whole batches. `tp`: classifiers.train; `real`: real train images per label."""
    if tp["steps"] != "auto":
        return int(tp["steps"])
    return max(1, math.ceil(tp["passes"] * train_size("DCGAN", real, per_class) / tp["batch_size"]))


def budget_problem(tp: dict[str, Any], steps: int) -> str:
    """'' when the training budget of `steps` optimiser steps holds warmup_steps (and, for a number of steps set
    by hand, eval_every); else the one-line error naming them. With steps: auto a budget shorter than eval_every
    is fine: the last step always validates."""
    fits_eval = tp["steps"] == "auto" or tp["eval_every"] <= steps
    if fits_eval and tp["warmup_steps"] < steps:
        return ""
    if tp["steps"] == "auto":
        return (
            f"classifiers.train.warmup_steps ({tp['warmup_steps']}) must be below the {steps} optimiser steps "
            f"that steps: auto ({tp['passes']:g} passes) makes for this data; lower it or raise passes"
        )
    return (
        f"classifiers.train.eval_every ({tp['eval_every']}) and warmup_steps ({tp['warmup_steps']}) must be "
        f"below classifiers.train.steps ({steps})"
    )


def split_problem(p: dict[str, Any], real: dict[str, int]) -> str:
    """What `split` refuses for this train split (checked again by `melanoma plan`): a synthetic share below
    datasets.min_synthetic_share, or a training budget that eval_every/warmup_steps do not fit; '' when fine."""
    d, tp = p["datasets"], p["classifiers"]["train"]
    return share_problem(real, d["per_class"], d["min_synthetic_share"]) or budget_problem(
        tp, train_steps(tp, real, d["per_class"])
    )


def sizing_line(p: dict[str, Any], real: dict[str, int]) -> str:
    """One line on what the augmented datasets and the training budget come to for the real train counts `real`:
    images per class, the synthetic number and share, steps and passes (split's output, `melanoma plan`)."""
    d, tp = p["datasets"], p["classifiers"]["train"]
    fill, target = synthetic_counts(real, d["per_class"]), per_class_target(real, d["per_class"])
    n_real, n_aug = train_size("Original", real, d["per_class"]), train_size("DCGAN", real, d["per_class"])
    steps = train_steps(tp, real, d["per_class"])
    seen = steps * tp["batch_size"]
    how = f"steps: auto, {tp['passes']:g} passes" if tp["steps"] == "auto" else "classifiers.train.steps"
    return (
        f"augmented sets: datasets.per_class {d['per_class']} = {target:,} images per class ("
        + ", ".join(f"{c} {real.get(c, 0):,} real + {fill[c]:,} synthetic" for c in LABELS)
        + f"): {sum(fill.values()):,} of {n_aug:,} synthetic ({synthetic_share(real, d['per_class']):.0%}); "
        f"training: {steps:,} optimiser steps of {tp['batch_size']} ({how}) = {passes(seen, n_real)} passes "
        f"over Original's {n_real:,} images, {passes(seen, n_aug)} over an augmented set's {n_aug:,}"
    )


def passes(seen: int, images: int) -> str:
    """Images seen over a set's size, for people: 0.46, 1.8, 20, 115."""
    x = seen / max(images, 1)
    return f"{x:.2f}" if x < 1 else f"{x:.1f}" if x < 10 else f"{x:.0f}"


PARAMS_MAX_BYTES = 1 << 20  # params.yaml is about 10 kB; 1 MB is no params file


MAX_DEPTH = 32  # params.yaml nests 5 levels; a deeper tree is an accident or an attack (PyYAML recurses per level)


def plain_yaml(text: str, path: Path) -> None:
    """Refuse YAML that does not mean one plain tree: anchors and aliases (`&a` / `*a`: nested aliases expand
    exponentially, a "billion laughs" of a few lines, in our loader and in DVC's own reading of params.yaml),
    merge keys (`<<`), a key given twice in one mapping (PyYAML keeps the last silently) and nesting deeper than
    MAX_DEPTH. Raises ParamsError naming the line. Works on PyYAML's event stream, which expands nothing; a
    syntax error is left to the loader that follows, which reports it with its position."""
    stack: list[list[Any]] = []  # per open collection: [keys seen (None for a sequence), next node is a key]
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            line = f"{path} line {event.start_mark.line + 1}"
            if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
                raise ParamsError(
                    f"{line}: YAML anchors and aliases (&name, *name) are not allowed in params; write the values out"
                )
            if isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)) and stack and stack[-1][0] is not None:
                keys, is_key = stack[-1]
                if is_key and isinstance(event, yaml.ScalarEvent):
                    if event.value == "<<":
                        raise ParamsError(
                            f"{line}: YAML merge keys (<<) are not allowed in params; write the values out"
                        )
                    if event.value in keys:
                        raise ParamsError(f"{line}: key {event.value!r} is given twice in one mapping; keep one")
                    keys.add(event.value)
                stack[-1][1] = not is_key
            if isinstance(event, yaml.CollectionStartEvent):
                stack.append([set() if isinstance(event, yaml.MappingStartEvent) else None, True])
                if len(stack) > MAX_DEPTH:
                    raise ParamsError(f"{line}: nested deeper than {MAX_DEPTH} levels; params.yaml is a shallow tree")
            elif isinstance(event, yaml.CollectionEndEvent):
                stack.pop()
    except yaml.YAMLError:
        return


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read and validate params.yaml; every error names the key path and what it allows."""
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found; run from the project root (where dvc.yaml is)")
    try:
        text = read_small(path, "params file", PARAMS_MAX_BYTES).decode("utf-8")
        plain_yaml(text, path)
        tree = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ParamsError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ParamsError(f"{path} cannot be read as UTF-8 text ({type(e).__name__}: {e}); save it as UTF-8") from None
    return validate(tree)

"""The classifier registry: one family name -> one constructor, each taking num_classes, input size and pretrained.

The grid's rows are *families* (ResNet, DenseNet, ViT, Swin, MedViT, BioViT); params name the exact member
(`resnet50` in the study, `resnet18` in the CPU demo), and model_config.json records what was really built,
so a row called "ResNet" never silently holds a different network than the one reported.

BioViT is a ViT-B/16 whose weights come from BiomedCLIP's vision tower (an open_clip checkpoint around a timm
ViT trunk); its keys are mapped onto timm's ViT and loaded with strict=True. Without `pretrained: true` it is a
randomly initialised ViT, and the config says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from melanoma.errors import MelanomaError, PretrainedUnavailable, first_line
from melanoma.params import ARCHS, ParamsError, input_rule

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
BIOMEDCLIP = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
BIOMEDCLIP_FILE = "open_clip_pytorch_model.bin"
BIOMEDCLIP_TRUNK = "visual.trunk."


class WeightsMismatch(MelanomaError, ValueError):
    """A state dict does not fit the model it is loaded into (names the missing/unexpected/misshapen keys)."""


@dataclass
class Built:
    """A constructed model and the facts model_config.json records about it."""

    model: nn.Module
    info: dict[str, Any]


def _unavailable(weights: str, e: Exception) -> PretrainedUnavailable:
    return PretrainedUnavailable(
        f"pretrained weights {weights} are not available ({type(e).__name__}: {first_line(e)}). "
        "Options: download them once with network access (they go to the Hugging Face cache, HF_HOME), copy a "
        "pre-filled cache to this machine and set HF_HUB_OFFLINE=1, or set pretrained: false for this arch"
    )


def _download_errors() -> tuple[type[Exception], ...]:
    from huggingface_hub.errors import HfHubHTTPError

    return (OSError, HfHubHTTPError)  # LocalEntryNotFoundError (offline, no network) is an OSError


# what a damaged, truncated or foreign weights file raises while it is read or loaded into the model
def _load_errors() -> tuple[type[Exception], ...]:
    import pickle

    from safetensors import SafetensorError

    return (SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError, ValueError, KeyError)


def _unloadable(weights: str, name: str, kwargs: dict[str, Any], e: Exception) -> PretrainedUnavailable:
    shaped = f" with kwargs {kwargs}" if kwargs else ""
    return PretrainedUnavailable(
        f"pretrained weights {weights} are in the Hugging Face cache but do not load into {name}{shaped} "
        f"({type(e).__name__}: {first_line(e)}). A damaged or partial download: delete it (`melanoma weights check` "
        "prints its path) and run `melanoma weights fetch`; kwargs that change the network cannot take the "
        "pretrained weights: remove them, or set pretrained: false for this arch"
    )


def _timm(name: str, num_classes: int, img_size: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    import melanoma.classifiers.medvit  # noqa: F401  registers medvit_* with timm

    if not pretrained:
        return timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
    except _download_errors() as e:
        raise _unavailable(f"timm/{name}", e) from None
    except _load_errors() as e:
        raise _unloadable(f"timm/{name}", name, kwargs, e) from None


def _vit(name: str, num_classes: int, img_size: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    # timm resamples the position embeddings of pretrained weights to img_size when loading
    return _timm(name, num_classes, img_size, pretrained, {"img_size": img_size, **kwargs})


def _swin(name: str, num_classes: int, img_size: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    # the last stage's grid is img_size/32; a window of that size divides every stage's grid
    kw = {"img_size": img_size, "window_size": max(1, img_size // 32), **kwargs}
    return _timm(name, num_classes, img_size, pretrained, kw)


def _biovit(name: str, num_classes: int, img_size: int, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    model = _vit(name, num_classes, img_size, False, kwargs)
    if pretrained:
        load_strict(model, biomedclip_to_timm(_biomedclip_state(), model), f"{BIOMEDCLIP}/{BIOMEDCLIP_FILE}")
    return model


# ---------------------------------------------------------------- GradCAM targets (Selvaraju et al., 2017)

Fold = Callable[[torch.Tensor], torch.Tensor]
Target = tuple[str, nn.Module, "Fold | None"]  # (dotted module name, module, fold of its output to (B, C, H, W))


def _vit_targets(model: nn.Module) -> list[Target]:
    """The last block's first norm; drop the prefix (class) tokens and fold the patch grid to (B, C, H, W).
    Every ViT block has the same grid, so there is no coarser-to-finer choice to make."""
    prefix = getattr(model, "num_prefix_tokens", 1)
    gh, gw = model.patch_embed.grid_size

    def fold(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:, :].reshape(t.shape[0], gh, gw, t.shape[-1]).permute(0, 3, 1, 2)

    last = len(model.blocks) - 1
    return [(f"blocks.{last}.norm1", model.blocks[last].norm1, fold)]


def _swin_targets(model: nn.Module) -> list[Target]:
    """Each stage's last block's first norm, deepest stage first; timm's Swin blocks are (B, H, W, C)."""
    out: list[Target] = []
    for i in reversed(range(len(model.layers))):
        j = len(model.layers[i].blocks) - 1
        out.append((f"layers.{i}.blocks.{j}.norm1", model.layers[i].blocks[j].norm1, lambda t: t.permute(0, 3, 1, 2)))
    return out


def _modules(*names: str) -> Callable[[nn.Module], list[Target]]:
    """Targets for (B, C, H, W) feature maps named by their dotted module paths, deepest first."""
    return lambda model: [(n, model.get_submodule(n), None) for n in names]


def _timm_hub(name: str) -> tuple[str, tuple[str, ...]] | None:
    """Where timm loads `name`'s default pretrained tag from: its Hub repo, safetensors first, as timm tries."""
    import timm

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # an unknown tag ("resnet18.nope")
        return None
    if cfg is None or not cfg.hf_hub_id:
        return None
    files = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else ("model.safetensors", "pytorch_model.bin")
    return cfg.hf_hub_id, files


@dataclass(frozen=True)
class Family:
    """Everything the project knows about one classifier family; nothing outside this registry branches on an
    arch name.

    build(name, num_classes, img_size, pretrained, kwargs) -> model; mean/std: the input normalisation (a
    timm pretrained tag's own mean/std win when `tag_normalisation`); weights: where pretrained weights come
    from, in words; no_pretrained: why there are none ('' when there are); gradcam(model) -> the layers GradCAM may
    explain, deepest (coarsest) first, each as a Target (melanoma.evaluation.gradcam.target picks the deepest whose
    map has enough cells at the input size);
    timm_loadable: `timm.create_model` alone rebuilds it from the published timm config (Hub packages);
    hub(model name) -> (Hub repo id, files in the order they are tried) its pretrained weights come from, None when
    there are none (`melanoma weights` fetches and checks them).
    """

    build: Callable[[str, int, int, bool, dict[str, Any]], nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights: str
    gradcam: Callable[[nn.Module], list[Target]]
    no_pretrained: str = ""
    tag_normalisation: bool = True
    timm_loadable: bool = True
    hub: Callable[[str], tuple[str, tuple[str, ...]] | None] = _timm_hub


TIMM_TAG = "timm's default pretrained tag"
FAMILIES: dict[str, Family] = {
    "BioViT": Family(
        _biovit,
        CLIP_MEAN,
        CLIP_STD,
        f"BiomedCLIP vision trunk ({BIOMEDCLIP})",
        _vit_targets,
        tag_normalisation=False,
        hub=lambda name: (BIOMEDCLIP, (BIOMEDCLIP_FILE,)),
    ),
    "DenseNet": Family(
        _timm,
        IMAGENET_MEAN,
        IMAGENET_STD,
        TIMM_TAG,  # strides 32, 16, 8, 4
        _modules("features.norm5", "features.denseblock3", "features.denseblock2", "features.denseblock1"),
    ),
    "ResNet": Family(_timm, IMAGENET_MEAN, IMAGENET_STD, TIMM_TAG, _modules("layer4", "layer3", "layer2", "layer1")),
    "Swin": Family(_swin, IMAGENET_MEAN, IMAGENET_STD, TIMM_TAG, _swin_targets),
    "ViT": Family(_vit, IMAGENET_MEAN, IMAGENET_STD, TIMM_TAG, _vit_targets),
    "MedViT": Family(
        _timm,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "none",  # the final BN (stride 32), then stages 3, 2, 1
        _modules("norm", "stages.2", "stages.1", "stages.0"),
        no_pretrained="the MedViT authors' checkpoints are not published in a form this project can "
        "load safely (safetensors or a weights-only state dict on the Hub)",
        timm_loadable=False,
        hub=lambda name: None,
    ),
}


def family(arch: str) -> Family:
    """The registry entry of a family name (one of melanoma.params.ARCHS); ParamsError for any other name."""
    if arch not in FAMILIES:
        raise ParamsError(f"unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    return FAMILIES[arch]


def _check_input(arch: str, fam: Family, spec: dict[str, Any], img_size: int) -> None:
    if spec["pretrained"] and fam.no_pretrained:
        raise PretrainedUnavailable(
            f"no pretrained weights for {spec['model']}: {fam.no_pretrained}; set "
            f"classifiers.models.{arch}.pretrained: false"
        )
    smallest, multiple = input_rule(arch, spec["kwargs"])
    if img_size < smallest or img_size % multiple:
        raise ParamsError(
            f"classifiers.models.{arch} ({spec['model']}) needs an input size of at least {smallest} "
            f"that is a multiple of {multiple}, got {img_size}; change datasets.image_size"
        )


RESERVED_KWARGS = ("num_classes", "img_size", "in_chans", "pretrained")  # set by the project, not by kwargs
# timm kwargs that would load weights from elsewhere: never from params or a package's model_config.json
LOADING_KWARGS = ("checkpoint_path", "pretrained_cfg", "pretrained_cfg_overlay", "pretrained_strict", "cache_dir")
BUILD_ERRORS = (TypeError, ValueError, RuntimeError, AssertionError, AttributeError, IndexError, KeyError)


def _construct(arch: str, fam: Family, spec: dict[str, Any], num_classes: int, img_size: int) -> nn.Module:
    """fam.build, then one forward pass on a (1, 3, S, S) zero image and the family's GradCAM target: a params
    value timm or the family cannot take is one ParamsError naming the key, not a traceback mid-training."""
    where = f"classifiers.models.{arch}"
    reserved = [k for k in spec["kwargs"] if k in RESERVED_KWARGS]
    if reserved:
        raise ParamsError(
            f"{where}.kwargs sets {', '.join(reserved)}: the project sets those (from the data, "
            "datasets.image_size and pretrained); remove them from kwargs"
        )
    loading = [k for k in spec["kwargs"] if k in LOADING_KWARGS]
    if loading:
        raise ParamsError(
            f"{where}.kwargs sets {', '.join(loading)}: weights are loaded only through "
            "`pretrained` (or a cell's own model.safetensors); remove them from kwargs"
        )
    try:
        model = fam.build(spec["model"], num_classes, img_size, spec["pretrained"], dict(spec["kwargs"]))
        fam.gradcam(model)  # a member of another family (e.g. a ViT in the ResNet row) has no such layer
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, img_size, img_size))
    except MelanomaError:
        raise
    except BUILD_ERRORS as e:
        raise ParamsError(
            f"{where}: cannot build {spec['model']!r} with kwargs {spec['kwargs']} as a {arch}-family "
            f"network for {img_size} px inputs ({type(e).__name__}: {first_line(e)}); "
            f"fix {where}.model or {where}.kwargs"
        ) from None
    return model.train()


def build_model(arch: str, spec: dict[str, Any], num_classes: int, img_size: int) -> Built:
    """Build `spec["model"]` of family `arch` for img_size x img_size RGB inputs and `num_classes` logits.

    `spec` is params' classifiers.models.<arch> ({model, pretrained, kwargs, lr}). Raises ParamsError (unknown
    arch, input size the family cannot take, a model or kwargs timm rejects, a member of another family),
    PretrainedUnavailable, WeightsMismatch.
    """
    fam = family(arch)
    _check_input(arch, fam, spec, img_size)
    model = _construct(arch, fam, spec, num_classes, img_size)
    mean, std = fam.mean, fam.std
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if fam.tag_normalisation and spec["pretrained"] and "mean" in cfg:
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])  # the normalisation the weights were trained with
    info = {
        "arch": arch,
        "model": spec["model"],
        "constructor": f"{fam.build.__name__.lstrip('_')}:{spec['model']}",
        "kwargs": dict(spec["kwargs"]),
        "pretrained": spec["pretrained"],
        "weights": fam.weights if spec["pretrained"] else "random initialisation (trained from scratch)",
        "input_size": img_size,
        "num_classes": num_classes,
        "normalisation": {"mean": list(mean), "std": list(std)},
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    return Built(model, info)


# ---------------------------------------------------------------- BioViT: BiomedCLIP -> timm ViT


def _biomedclip_state() -> dict[str, torch.Tensor]:
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(BIOMEDCLIP, BIOMEDCLIP_FILE)
    except _download_errors() as e:
        raise _unavailable(f"{BIOMEDCLIP}/{BIOMEDCLIP_FILE}", e) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except _load_errors() as e:
        raise _unloadable(f"{BIOMEDCLIP}/{BIOMEDCLIP_FILE}", "BiomedCLIP's open_clip checkpoint", {}, e) from None
    if not isinstance(state, dict):
        raise _unloadable(
            f"{BIOMEDCLIP}/{BIOMEDCLIP_FILE}",
            "BiomedCLIP's open_clip checkpoint",
            {},
            TypeError(f"a {type(state).__name__}, not a state dict"),
        )
    return state


def biomedclip_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """open_clip's `visual.trunk.*` keys -> timm ViT keys; the text tower and CLIP projection are dropped.

    The classification head is not in BiomedCLIP (it was trained for image-text matching), so the model's own
    freshly initialised head is kept. Position embeddings are resampled when the input size is not 224.
    """
    from timm.layers import resample_abs_pos_embed

    out = {k[len(BIOMEDCLIP_TRUNK) :]: v for k, v in state.items() if k.startswith(BIOMEDCLIP_TRUNK)}
    if not out:
        raise WeightsMismatch(
            f"no '{BIOMEDCLIP_TRUNK}*' keys in the BiomedCLIP checkpoint; is it an open_clip "
            f"checkpoint of {BIOMEDCLIP}?"
        )
    own = model.state_dict()
    if "pos_embed" in out and "pos_embed" in own and out["pos_embed"].shape != own["pos_embed"].shape:
        grid = model.patch_embed.grid_size
        out["pos_embed"] = resample_abs_pos_embed(
            out["pos_embed"], new_size=list(grid), num_prefix_tokens=getattr(model, "num_prefix_tokens", 1)
        )
    for k in ("head.weight", "head.bias"):
        if k in own and k not in out:
            out[k] = own[k]
    return out


def load_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """load_state_dict(strict=True), with one readable error instead of torch's key dump."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or shapes:

        def few(keys: list[str]) -> str:
            return ", ".join(keys[:4]) + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else "")

        parts = [
            f"{len(missing)} missing ({few(missing)})" if missing else "",
            f"{len(unexpected)} unexpected ({few(unexpected)})" if unexpected else "",
            "shape mismatch: " + few([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in shapes])
            if shapes
            else "",
        ]
        raise WeightsMismatch(
            f"weights {source} do not fit {type(model).__name__}: "
            + "; ".join(p for p in parts if p)
            + ". Check that the params name the same model and input size the weights were made for"
        )
    model.load_state_dict(state, strict=True)

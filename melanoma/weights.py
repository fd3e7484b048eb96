"""Pretrained weights the params need: fetched once where there is network, checked offline before a run.

    melanoma weights fetch   # with network: every weight the params in effect need, into the Hugging Face cache
    melanoma weights check   # offline (HF_HUB_OFFLINE=1): each one present and loadable through the real path

GPU nodes often have no internet. `fetch` runs on a machine that has it (a login node), into the cache that
HF_HOME / HF_HUB_CACHE name, which the nodes share or receive as a copy; `check` then proves, without the
network and in seconds, that every stage will find its weights. `./run.sh study` runs `check` before the first
stage and runs the stages with HF_HUB_OFFLINE=1, so no stage waits on a download that cannot happen.

What is needed: each classifier family with `pretrained: true` (its registry entry names the Hub repo and files:
the BiomedCLIP checkpoint for BioViT, timm's default pretrained tag for the others), a Hub id in
`generators.ddpm.pretrained`, and `upscale.hub.model` when `upscale.method` is hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melanoma.errors import MelanomaError, first_line


class WeightsError(MelanomaError):
    """A pretrained weight cannot be listed, downloaded or found (the message names it and the fix)."""


@dataclass(frozen=True)
class Weight:
    """One pretrained weight: the params key that asks for it, the Hub `repo` and the `files` to try in order (one
    is enough; empty: the whole repo), or, when `local`, a folder on this machine (`repo` is its path)."""

    key: str
    repo: str
    files: tuple[str, ...] = ()
    local: bool = False

    def __str__(self) -> str:
        return f"{self.repo}/{self.files[0]}" if len(self.files) == 1 else self.repo

    @property
    def instead(self) -> str:
        """The params change that does without this weight."""
        if self.key.startswith("classifiers.models."):
            return f"set {self.key}.pretrained: false"
        return "set generators.ddpm.pretrained: ''" if self.key.startswith("generators.") else "use upscale.method: sr"


def _is_path(text: str) -> bool:
    return Path(text).exists() or text.startswith(("/", "./", "../", "~"))


def needed(params: dict[str, Any]) -> list[Weight]:
    """Every pretrained weight the params ask for, in pipeline order. WeightsError when a family asked for
    pretrained weights has none on the Hub, or a Hub id is not one."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from melanoma.classifiers.registry import family

    out = []
    up = params["upscale"]
    hub = {
        "generators.ddpm.pretrained": params["generators"]["ddpm"]["pretrained"].strip(),
        "upscale.hub.model": up["hub"]["model"].strip() if up["method"] == "hub" else "",
    }
    for key, ref in hub.items():
        if not ref:
            continue
        if _is_path(ref):
            out.append(Weight(key, ref, local=True))
            continue
        try:
            validate_repo_id(ref)
        except HFValidationError:
            raise WeightsError(
                f"{key} is {ref!r}: neither a folder on this machine nor a Hugging Face Hub repo id (owner/name)"
            ) from None
        out.append(Weight(key, ref))
    c = params["classifiers"]
    for arch in c["archs"]:
        spec = c["models"][arch]
        if not spec["pretrained"]:
            continue
        where = family(arch).hub(spec["model"])
        if where is None:
            raise WeightsError(
                f"classifiers.models.{arch}: no pretrained weights for {spec['model']!r} on the Hugging "
                "Face Hub (no such model or pretrained tag in timm, or none published; check the name, "
                f"e.g. timm.list_pretrained('{spec['model'].split('.')[0][:6]}*')), or set "
                f"classifiers.models.{arch}.pretrained: false"
            )
        out.append(Weight(f"classifiers.models.{arch}", *where))
    return out


def cached(w: Weight) -> Path | None:
    """The local path of `w`: a folder of its own, or its file (or snapshot folder) in the Hugging Face cache;
    None when it is not there. Never uses the network."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    if w.local:
        path = Path(w.repo).expanduser()
        return path if path.is_dir() else None
    if not w.files:
        try:
            return Path(snapshot_download(w.repo, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            return None
    for name in w.files:
        try:
            hit = try_to_load_from_cache(w.repo, name)
        except (OSError, ValueError):  # HF_HOME unreadable, or not a folder
            return None
        if isinstance(hit, str) and Path(hit).is_file():
            return Path(hit)
    return None


def fetch(params: dict[str, Any], log=print) -> list[tuple[Weight, Path]]:
    """Download every needed Hub weight into the Hugging Face cache (the first of a weight's files the repo has);
    weights already cached are not downloaded again, local folders are left alone. WeightsError names the first
    that fails and why."""
    from huggingface_hub import constants, hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError

    if constants.HF_HUB_OFFLINE:
        raise WeightsError(
            "HF_HUB_OFFLINE is set, so nothing can be downloaded: unset it (on a machine with network) "
            "and run `melanoma weights fetch` again"
        )
    done = []
    for w in needed(params):
        if w.local:
            continue
        try:
            if not w.files:
                path = Path(snapshot_download(w.repo))
            else:
                path = None
                for name in w.files:
                    try:
                        path = Path(hf_hub_download(w.repo, name))
                        break
                    except RemoteEntryNotFoundError:  # the repo has no such file: try the next
                        continue
                if path is None:
                    raise WeightsError(f"{w.repo} has none of {', '.join(w.files)} ({w.key})")
        except (HfHubHTTPError, OSError, ValueError) as e:
            raise WeightsError(
                f"cannot download {w} for {w.key} ({type(e).__name__}: {first_line(e)}); check the "
                f"network (or HF_ENDPOINT), that the Hugging Face cache {constants.HF_HUB_CACHE} "
                "(HF_HOME) is a writable folder, and for gated repos `huggingface-cli login`"
            ) from None
        log(f"weights: {w} ({w.key}) -> {path}")
        done.append((w, path))
    return done


@dataclass(frozen=True)
class Checked:
    """The state of one weight: "ok", "missing" (not on this machine) or "broken" (there, but does not load)."""

    weight: Weight
    state: str
    detail: str = ""
    path: Path | None = None


def check(params: dict[str, Any]) -> list[Checked]:
    """The state of every needed weight, offline.

    Present: a local folder, or in the Hugging Face cache. Loadable: a classifier's weights go through the real
    path (`build_model`: timm's loader, or BiomedCLIP's keys mapped onto timm's ViT with strict=True, and one
    forward pass) into the network the params name; a pretrained DDPM UNet is built by the DDPM's own loader.
    Call with HF_HUB_OFFLINE=1 set before huggingface_hub is imported (the `melanoma weights check` command does),
    so a missing file fails at once instead of being fetched.
    """
    from melanoma.classifiers.registry import build_model

    out: list[Checked] = []
    for w in needed(params):
        path = cached(w)
        if path is None:
            where = (
                "folder not found"
                if w.local
                else "not in the Hugging Face cache"
                + (f" ({' or '.join(w.files)})" if len(w.files) > 1 else " (no snapshot)" if not w.files else "")
            )
            out.append(Checked(w, "missing", where))
            continue
        try:
            if w.key.startswith("classifiers.models."):
                arch = w.key.rsplit(".", 1)[1]
                build_model(arch, params["classifiers"]["models"][arch], 2, params["datasets"]["image_size"])
            elif w.key == "generators.ddpm.pretrained":
                from melanoma.generators import ddpm

                g = params["generators"]
                d = g["ddpm"]
                ddpm.build_unet(
                    ddpm.params_unet_config(g["image_size"], d),
                    d["pretrained"],
                )
            out.append(Checked(w, "ok", path=path))
        except MelanomaError as e:
            out.append(Checked(w, "broken", str(e), path))
    return out

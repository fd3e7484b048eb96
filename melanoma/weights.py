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
    """One Hub download: `repo` and the `files` to try in order (one is enough; empty: the whole repo), and the
    params key that asks for it."""

    key: str
    repo: str
    files: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.repo}/{self.files[0]}" if len(self.files) == 1 else self.repo


def needed(params: dict[str, Any]) -> list[Weight]:
    """Every Hub download the params ask for, in pipeline order. WeightsError when a family asked for
    pretrained weights has none on the Hub."""
    from melanoma.classifiers import family

    out = []
    ddpm = params["generators"]["ddpm"]["pretrained"]
    if ddpm and not Path(ddpm).is_dir():
        out.append(Weight("generators.ddpm.pretrained", ddpm))
    if params["upscale"]["method"] == "hub":
        out.append(Weight("upscale.hub.model", params["upscale"]["hub"]["model"]))
    c = params["classifiers"]
    for arch in c["archs"]:
        spec = c["models"][arch]
        if not spec["pretrained"]:
            continue
        where = family(arch).hub(spec["model"])
        if where is None:
            raise WeightsError(f"classifiers.models.{arch}: {spec['model']} has no pretrained weights on the Hugging "
                               f"Face Hub; set classifiers.models.{arch}.pretrained: false")
        out.append(Weight(f"classifiers.models.{arch}", *where))
    return out


def cached(w: Weight) -> Path | None:
    """The local path of `w` in the Hugging Face cache (a file, or the snapshot folder of a whole repo), None
    when it is not there. Never uses the network."""
    from huggingface_hub import snapshot_download, try_to_load_from_cache
    from huggingface_hub.errors import LocalEntryNotFoundError

    if not w.files:
        try:
            return Path(snapshot_download(w.repo, local_files_only=True))
        except (LocalEntryNotFoundError, OSError, ValueError):
            return None
    for name in w.files:
        hit = try_to_load_from_cache(w.repo, name)
        if isinstance(hit, str):
            return Path(hit)
    return None


def fetch(params: dict[str, Any], log=print) -> list[tuple[Weight, Path]]:
    """Download every needed weight into the Hugging Face cache (the first of a weight's files the repo has);
    weights already cached are not downloaded again. WeightsError names the first that fails and why."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError

    done = []
    for w in needed(params):
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
            raise WeightsError(f"cannot download {w} for {w.key} ({type(e).__name__}: {first_line(e)}); check the "
                               "network (or HF_ENDPOINT) and, for gated repos, `huggingface-cli login`") from None
        log(f"weights: {w} ({w.key}) -> {path}")
        done.append((w, path))
    return done


def check(params: dict[str, Any]) -> list[tuple[Weight, str | None]]:
    """[(weight, None when present and loadable, else why not)] for every needed weight, offline.

    Present: in the Hugging Face cache. Loadable: a classifier's weights go through the real path
    (`build_model`: timm's loader, or BiomedCLIP's keys mapped onto timm's ViT with strict=True, and one forward
    pass) into the network the params name; a pretrained DDPM UNet is built by the DDPM's own loader. Call with
    HF_HUB_OFFLINE=1 set before huggingface_hub is imported (the `melanoma weights check` command does), so a
    missing file fails at once instead of being fetched.
    """
    from melanoma.classifiers import build_model

    out: list[tuple[Weight, str | None]] = []
    for w in needed(params):
        if cached(w) is None:
            what = " or ".join(w.files) if w.files else "a snapshot"
            out.append((w, f"not in the Hugging Face cache ({what} of {w.repo})"))
            continue
        try:
            if w.key.startswith("classifiers.models."):
                arch = w.key.rsplit(".", 1)[1]
                build_model(arch, params["classifiers"]["models"][arch], 2, params["datasets"]["image_size"])
            elif w.key == "generators.ddpm.pretrained":
                from melanoma.generators import ddpm

                g = params["generators"]
                d = g["ddpm"]
                ddpm.build_unet(ddpm.unet_config(g["image_size"], d["block_out_channels"], d["layers_per_block"],
                                                 d["attention"]), d["pretrained"])
            out.append((w, None))
        except MelanomaError as e:
            out.append((w, str(e)))
    return out

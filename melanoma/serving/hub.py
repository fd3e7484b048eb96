"""Publishing packaged cells to the Hugging Face Hub and getting them back: one repo per cell.

One repo per cell (not one repo of folders, as the original study had) because timm reads `config.json` and
the weights from a repo's root: `timm.create_model('hf-hub:<repo>', pretrained=True)` then just works for the
timm families. `publish.repo` in params.yaml is the template, `{cell}` becoming `<Arch>_<Dataset>`.

Publishing has side effects, so it is a command, not a DVC stage. Every failure a user can cause or meet
(no token, no network, offline mode, a repo they cannot write, a cell not in the cache) is one line saying what
to do; `--dry-run` writes the folders and lists what would be uploaded, without a token or network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from melanoma.classifiers.registry import family
from melanoma.errors import MelanomaError, first_line
from melanoma.io import atomic_dir
from melanoma.serving.package import CONFIG, ONNX, TIMM_CONFIG, WEIGHTS, PackageError, load

CARD = "README.md"
PACKAGE_FILES = (WEIGHTS, ONNX, TIMM_CONFIG, CONFIG)
REQUIRED = (WEIGHTS, ONNX, CONFIG)  # what a package cannot do without (config.json: timm's, optional)
MARKER = ".melanoma-written.json"  # in every folder publish/download wrote: its files' sha256, never uploaded
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


class HubError(MelanomaError):
    """A publish/download problem, in one line with the fix."""


def repo_id(template: str, cell: str) -> str:
    """The Hub repo of one cell, from the `publish.repo` template."""
    if "{cell}" not in template:
        raise HubError(
            f"publish.repo is {template!r}; it must contain {{cell}} (one repo per cell, e.g. "
            "you/melanoma-{cell}), so that timm can load each repo's root"
        )
    rid = template.replace("{cell}", cell)
    if not _REPO_ID.match(rid) or ".." in rid or "--" in rid:
        raise HubError(
            f"{rid!r} (from publish.repo {template!r}) is not a valid Hub repo id 'owner/name' "
            "(letters, digits, '-', '_', '.')"
        )
    return rid


def _source(cfg: dict[str, Any]) -> str:
    if cfg["data"]["source"] == "demo":
        return "the embedded synthetic demo data (procedurally drawn lesions)"
    return f"ISIC dermoscopy images (source: {cfg['data']['source']})"


def _card_meta(cfg: dict[str, Any], timm_family: bool) -> dict[str, Any]:
    """The card's YAML header: licence, library, tags and a model-index with the test metrics."""
    test, demo = cfg["evaluation"]["test"], cfg["data"]["source"] == "demo"
    tags = [
        "image-classification",
        "melanoma",
        "dermoscopy",
        "medical-imaging",
        "synthetic-data-augmentation",
        "onnx",
        "safetensors",
    ] + (["timm"] if timm_family else [])
    return {
        "license": "cc-by-nc-4.0",
        "library_name": "timm" if timm_family else "pytorch",
        "pipeline_tag": "image-classification",
        "tags": tags,
        **({} if demo else {"datasets": ["ISIC archive (https://www.isic-archive.com)"]}),
        "model-index": [
            {
                "name": f"{cfg['arch']}_{cfg['dataset']}",
                "results": [
                    {
                        "task": {"type": "image-classification"},
                        "dataset": {
                            "name": f"{'melanoma-synth demo data' if demo else 'ISIC'} (held-out real test split, "
                            f"{test['n']} images)",
                            "type": "image-classification",
                        },
                        "metrics": [
                            {"type": t, "name": n, "value": round(float(test[k]), 4)}
                            for k, t, n in (
                                ("auroc", "roc_auc", "test AUROC"),
                                ("sensitivity", "recall", "test sensitivity"),
                                ("specificity", "specificity", "test specificity"),
                                ("balanced_accuracy", "balanced_accuracy", "test balanced accuracy"),
                            )
                        ],
                    }
                ],
            }
        ],
    }


def _card_intro(cfg: dict[str, Any]) -> list[str]:
    demo = cfg["data"]["source"] == "demo"
    return [
        f"# {cfg['arch']}_{cfg['dataset']}: melanoma vs benign ({cfg['arch']} family, trained on the "
        f"{cfg['dataset']} dataset)",
        "",
        "**Research use only. This is not a medical device** and must not be used to diagnose, screen for or "
        "rule out melanoma, or to make any decision about a person's care.",
        "",
        *(
            [
                "**Demo model.** It was trained on " + _source(cfg) + ", not on real dermoscopy images; it exists to "
                "test the pipeline end to end and says nothing about real lesions.",
                "",
            ]
            if demo
            else []
        ),
        f"One cell of the melanoma-synth study grid: does adding DCGAN- or DDPM-generated "
        f"lesion images to a small real training set help classifiers? Built as `{cfg['model']}` "
        f"({cfg['parameters']:,} parameters){' with ' + json.dumps(cfg['kwargs']) if cfg['kwargs'] else ''}, "
        f"{cfg['input_size']} x {cfg['input_size']} px input, {cfg['weights']}.",
        "",
        "## Intended use",
        "",
        "Research: comparing how synthetic-image augmentation (DCGAN, DDPM, with or without super-resolution) "
        "changes a classifier's ability to separate melanoma from benign lesions, next to the other cells of the "
        "grid and their confidence intervals. Out of scope: any clinical or consumer use, any decision about a "
        "person, and use on images unlike the training data (non-dermoscopic photos, other body sites or devices).",
        "",
    ]


def _card_evaluation(cfg: dict[str, Any]) -> list[str]:
    test, boot = cfg["evaluation"]["test"], cfg["evaluation"]["bootstrap"]
    ci = test["ci95"]
    rows = [
        ("AUROC", "auroc"),
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
        ("balanced accuracy", "balanced_accuracy"),
    ]
    c = test["confusion"]
    demo = cfg["data"]["source"] == "demo"
    return [
        "## Evaluation (held-out demo images: simulated, not real lesions)"
        if demo
        else "## Evaluation (real held-out test images)",
        "",
        f"Decision: `{cfg['decision']}`, threshold **{cfg['threshold']:.4f}**. 95 % intervals: stratified "
        f"bootstrap, {boot['resamples']} resamples, seed {boot['seed']}.",
        "",
        "| metric | value | 95 % CI |",
        "| --- | --- | --- |",
        *(
            f"| {name} | {test[k]:.3f} | {ci[k][0]:.3f} – {ci[k][1]:.3f} |"
            if k in ci
            else f"| {name} | {test[k]:.3f} | |"
            for name, k in rows
        ),
        "",
        f"Test: {test['n']} images, {test['n_malignant']} malignant. Confusion at the threshold: "
        f"TP {c['tp']}, FN {c['fn']}, FP {c['fp']}, TN {c['tn']}. Val AUROC (used to select the epoch and set "
        f"the threshold): {cfg['evaluation']['val']['auroc']:.3f}.",
        *_seed_line(cfg),
        "",
    ]


def _seed_line(cfg: dict[str, Any]) -> list[str]:
    """How this seed compares with the cell's other seeds (packages exported before repeated seeds lack it)."""
    ev = cfg["evaluation"]
    if "over_seeds" not in ev:
        return []
    a = ev["over_seeds"]["test"]["auroc"]
    return [
        "",
        f"This package is seed {ev['packaged_seed']} of {len(ev['seeds'])} trained for this cell (the best "
        f"val AUROC). Over all seeds: test AUROC {a['mean']:.3f} ± {a['sd']:.3f} (mean ± sd), 95 % CI "
        f"{a['ci95'][0]:.3f} – {a['ci95'][1]:.3f} (seed x image bootstrap).",
    ]


def _card_training(cfg: dict[str, Any]) -> list[str]:
    counts, tp, pre = cfg["data"]["split"]["counts"], cfg["params"]["train"], cfg["preprocessing"]
    return [
        "## Training data and split",
        "",
        f"Data: {_source(cfg)}. Split (seed {cfg['data']['split']['seed']}): "
        + ", ".join(f"{s} {c['benign']} benign / {c['malignant']} malignant" for s, c in counts.items())
        + f"; {cfg['data']['split_rule']}.",
        f"This cell's training set ({cfg['dataset']}): "
        + ", ".join(f"{k} {v}" for k, v in cfg["data"]["training_set"]["by_origin"].items())
        + ".",
        "",
        "## How it was trained",
        "",
        f"Seed {cfg['seed']}; {cfg['steps_run']} of {cfg['steps']} optimiser steps run ({cfg['images_seen']} images "
        f"seen, {cfg['epochs_equivalent']:.1f} passes over the training set), best step {cfg['best_step']} by "
        f"val AUROC; "
        f"AdamW, lr {cfg['params']['model']['lr']}, weight decay {tp['weight_decay']}, "
        f"batch {tp['batch_size']}, class imbalance: {tp['imbalance']}, "
        f"batched flips/rotations/scale/colour augmentation. Preprocessing: {pre['decode']}, "
        f"longest side capped at {pre['max_side']} px, then {pre['resize']}; "
        f"normalisation mean {cfg['normalisation']['mean']}, std {cfg['normalisation']['std']}.",
        "",
    ]


def _card_files(cfg: dict[str, Any], rid: str, timm_family: bool) -> list[str]:
    onnx = cfg["onnx"]
    loading = (
        f'```python\nimport timm\nmodel = timm.create_model("hf-hub:{rid}", pretrained=True).eval()\n```\n\n'
        "timm's config carries this model's normalisation and input size (`timm.data.resolve_data_config`)."
        if timm_family
        else f"{cfg['arch']} is not a timm model: use the ONNX file, or this project (`melanoma download`, then "
        "`melanoma.serving.package.load(folder)` rebuilds it from model_config.json and loads the weights "
        "strictly)."
    )
    return [
        "## Files and loading",
        "",
        f"- `{WEIGHTS}`: the weights (no pickles anywhere in this repo).",
        f"- `{ONNX}`: opset {onnx['opset']}; its weights are external data read from `{WEIGHTS}` (keep the two "
        f"files in one folder); input `{onnx['input']}`; outputs "
        + ", ".join(f"`{o}`" for o in onnx["outputs"])
        + f". Normalisation is inside the graph. Checked against PyTorch on {onnx['parity']['images']} real "
        f"val images: max |difference| in P(malignant) {onnx['parity']['max_abs_diff']:.1e}.",
        f"- `{CONFIG}`: everything above, machine-readable (architecture, kwargs, threshold, metrics, history).",
        *([f"- `{TIMM_CONFIG}`: timm's config."] if timm_family else []),
        "",
        loading,
        "",
        f"With the project installed: `melanoma predict lesion.jpg --model {rid}` prints P(malignant) and the "
        "decision at the stored threshold (`--gradcam DIR` adds a GradCAM overlay).",
        "",
    ]


LIMITATIONS = [
    "## Limitations",
    "",
    "- Trained and tested on one small collection: performance on other cameras, populations, skin types and "
    "clinics is unknown, and dermoscopy datasets under-represent darker skin.",
    "- The threshold was chosen on a small validation split; its sensitivity/specificity trade-off is "
    "uncertain (see the intervals).",
    "- Synthetic training images can carry generator artefacts the classifier may learn.",
    "- Binary (melanoma vs benign lesions); other malignancies (BCC, SCC) were not part of the task.",
    "",
]


def model_card(cfg: dict[str, Any], rid: str) -> str:
    """README.md with YAML metadata: what the model is, how good (with CIs), how it was made, what not to do.

    `cfg` is a package's model_config.json (with threshold, evaluation, data and onnx records); `rid` the Hub
    repo id the loading snippet names. Follows the Hugging Face model-card layout (huggingface_hub ModelCard).
    """
    timm_family = family(cfg["arch"]).timm_loadable
    meta = yaml.safe_dump(_card_meta(cfg, timm_family), sort_keys=False, allow_unicode=True).rstrip()
    return "\n".join(
        [
            "---",
            meta,
            "---",
            "",
            *_card_intro(cfg),
            *_card_evaluation(cfg),
            *_card_training(cfg),
            *_card_files(cfg, rid, timm_family),
            *LIMITATIONS,
        ]
    )


def _sha256(path: Path) -> str:
    from melanoma.serving.package import weights_sha256

    return weights_sha256(path)


def _mark(folder: Path, by: str) -> None:
    """Record in `folder` (a temporary folder about to be renamed into place) the sha256 of every file in it."""
    files = {f.name: _sha256(f) for f in sorted(folder.iterdir()) if f.is_file() and f.name != MARKER}
    (folder / MARKER).write_text(json.dumps({"written_by": by, "files": files}, indent=1) + "\n")


def ours(folder: Path) -> bool:
    """True for a folder publish or download wrote and nobody changed since: its marker lists exactly its files,
    with their sha256. Only such a folder is replaced without --force."""
    from melanoma.io import read_small

    try:
        rec = json.loads(read_small(folder / MARKER, "marker", 1 << 20))
    except (OSError, ValueError, RecursionError, MelanomaError):
        return False
    files = rec.get("files") if isinstance(rec, dict) else None
    present = {f.name for f in folder.iterdir()} - {MARKER}
    return (
        isinstance(files, dict)
        and set(files) == present
        and all(
            (folder / n).is_file() and not (folder / n).is_symlink() and _sha256(folder / n) == h
            for n, h in files.items()
        )
    )


def check_package(package: Path) -> dict[str, Any]:
    """A package ready to publish: its required files present and its model loading strictly with the weights
    its config records. Returns the config; HubError naming the package otherwise."""
    missing = [f for f in REQUIRED if not (package / f).is_file()]
    if missing:
        raise HubError(f"{package} lacks {', '.join(missing)}; run `dvc repro export` first")
    try:
        return load(package)[1]
    except PackageError as e:
        raise HubError(f"{e}") from None


def assemble(package: Path, rid: str, out: Path, cfg: dict[str, Any]) -> Path:
    """The Hub folder of one cell: the package's files plus its model card (and the marker), written atomically
    to `out`. `cfg`: the package's config, from check_package."""
    with atomic_dir(out) as tmp:
        for f in PACKAGE_FILES:
            if (package / f).is_file():
                shutil.copy2(package / f, tmp / f)
        (tmp / CARD).write_text(model_card(cfg, rid))
        _mark(tmp, "melanoma publish")
    return out


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _token() -> str:
    from huggingface_hub import get_token

    token = get_token()  # HF_TOKEN, or the file `hf auth login` writes under HF_HOME
    if not token:
        raise HubError(
            "no Hugging Face token: set HF_TOKEN (a write token from https://huggingface.co/settings/"
            "tokens) or run `hf auth login`; or use --dry-run to only write the folders"
        )
    return token


def _hub_failure(action: str, rid: str, e: Exception) -> HubError:
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    first = first_line(e, empty=type(e).__name__)
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on") and action == "upload":
        return HubError(f"cannot upload {rid}: HF_HUB_OFFLINE is set; unset it on a machine with network access")
    if isinstance(e, LocalEntryNotFoundError):
        return HubError(
            f"cannot {action} {rid}: it is not in the local Hugging Face cache and the Hub cannot be "
            f"reached (offline or no network: {first}). Run once with network access, or copy a "
            "filled cache (HF_HOME / HF_HUB_CACHE) to this machine"
        )
    if isinstance(e, (RepositoryNotFoundError, RevisionNotFoundError)):
        return HubError(
            f"cannot {action} {rid}: no such repo or revision on the Hub, or it is private and the "
            f"token cannot read it ({first})"
        )
    if isinstance(e, HfHubHTTPError):
        code = getattr(getattr(e, "response", None), "status_code", None)
        if code in (401, 403):
            return HubError(
                f"cannot {action} {rid}: the token is not allowed to ({code}); use a write token for "
                "that namespace or change publish.repo"
            )
        return HubError(f"cannot {action} {rid}: the Hub answered {code}: {first}")
    return HubError(
        f"cannot {action} {rid}: the Hub cannot be reached ({type(e).__name__}: {first}); check the "
        "network, or use --dry-run"
    )


def _network_errors() -> tuple[type[Exception], ...]:
    import httpx2  # huggingface_hub's HTTP client: its connect/timeout errors are not OSErrors
    from huggingface_hub.errors import HfHubHTTPError

    return (HfHubHTTPError, httpx2.HTTPError, OSError)  # OSError: offline mode, not in cache, no route


def _taken(folder: Path, what: str) -> HubError:
    holds = ", ".join(sorted(f.name for f in folder.iterdir())[:4]) if folder.is_dir() else "a file"
    return HubError(
        f"{folder} exists and is not a folder {what} wrote, or was changed since (it holds {holds}); "
        "pass --force to replace it, or choose another folder"
    )


def publish(
    packages: dict[str, Path],
    template: str,
    out: Path,
    dry_run: bool,
    private: bool,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> list[str]:
    """Check every package, then assemble each cell's Hub folder under `out` and upload it unless `dry_run`,
    calling `say` with one line per cell as it happens. Returns those lines.

    Raises HubError before writing or uploading anything for a package that is missing, damaged or fails to load,
    and for an `out/<cell>` folder publish did not write or that was changed since (unless `force`): it never
    replaces someone else's files. A failure mid-way names the cells already uploaded.
    """
    configs = {cell: check_package(pkg) for cell, pkg in packages.items()}  # all of them before the first upload
    taken = [out / cell for cell in packages if (out / cell).exists() and not ours(out / cell)]
    if taken and not force:
        raise _taken(taken[0], "publish")
    plan = {cell: repo_id(template, cell) for cell in packages}
    token = None if dry_run else _token()
    lines: list[str] = []
    uploaded: list[str] = []
    for cell, pkg in packages.items():
        try:
            line = _publish_one(cell, pkg, plan[cell], out / cell, configs[cell], dry_run, private, token)
        except HubError as e:
            if uploaded:
                raise HubError(
                    f"{e} (already uploaded: {', '.join(uploaded)}; run the command again for the rest)"
                ) from None
            raise
        uploaded += [] if dry_run else [cell]
        lines.append(line)
        say(line)
    return lines


def _publish_one(
    cell: str, pkg: Path, rid: str, out: Path, cfg: dict[str, Any], dry_run: bool, private: bool, token: str | None
) -> str:
    """Assemble one cell's Hub folder and upload it (or, dry, say what would be uploaded); its line."""
    folder = assemble(pkg, rid, out, cfg)
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.name != MARKER)
    size = sum(f.stat().st_size for f in files)
    listing = ", ".join(f"{f.name} ({_size(f.stat().st_size)})" for f in files)
    if dry_run:
        return (
            f"would upload {folder} -> https://huggingface.co/{rid} ({'private' if private else 'public'}): "
            f"{len(files)} files, {_size(size)}: {listing}"
        )
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(rid, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=rid,
            folder_path=folder,
            ignore_patterns=[MARKER],
            commit_message=f"{cell}: weights, ONNX, config and model card (melanoma-synth)",
        )
    except _network_errors() as e:
        raise _hub_failure("upload", rid, e) from None
    return f"uploaded {cell} -> {getattr(info, 'commit_url', rid)} ({len(files)} files, {_size(size)})"


def fetch_repo(rid: str, revision: str | None = None) -> Path:
    """A Hub repo's snapshot in the local HF cache (downloaded if needed; offline it must already be there)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(rid, revision=revision, allow_patterns=list(PACKAGE_FILES) + [CARD]))
    except _network_errors() as e:
        raise _hub_failure("download", rid, e) from None
    missing = [f for f in REQUIRED if not (snapshot / f).is_file()]
    if missing:  # offline, huggingface_hub returns whatever the cache holds, e.g. the two files timm fetched
        has = ", ".join(sorted(f.name for f in snapshot.iterdir())) or "nothing"
        raise HubError(
            f"the Hugging Face cache holds an incomplete snapshot of {rid} ({snapshot}: it has {has}; "
            f"it lacks {', '.join(missing)}, e.g. because timm cached only its own files); run `melanoma "
            "download` once with network access (without HF_HUB_OFFLINE) to complete it"
        )
    return snapshot


def download(
    cells: list[str], template: str, dest: Path, revision: str | None, force: bool, say: Callable[[str], None] = print
) -> list[str]:
    """Download cells into the local layout dest/<Arch>/<Arch>_<Dataset>/ and check each loads strictly, calling
    `say` with one line per cell as it happens; returns those lines. Every target folder is checked before the
    first download (one this command wrote, unchanged, is refreshed; any other needs `force`); a failure mid-way
    names the cells already downloaded."""
    targets = {cell: dest / cell.split("_", 1)[0] / cell for cell in cells}
    again = {cell: t.exists() and ours(t) for cell, t in targets.items()}
    taken = [t for cell, t in targets.items() if t.exists() and not again[cell]]
    if taken and not force:
        raise _taken(taken[0], "`melanoma download`")
    lines: list[str] = []
    done: list[str] = []
    for cell, target in targets.items():
        rid = repo_id(template, cell)
        try:
            _download_one(rid, target, revision)
        except HubError as e:
            if done:
                raise HubError(f"{e} (already downloaded: {', '.join(done)})") from None
            raise
        done.append(cell)
        lines.append(f"{'refreshed' if again[cell] else 'downloaded'} {rid} -> {target} (loads with strict=True)")
        say(lines[-1])
    return lines


def _download_one(rid: str, target: Path, revision: str | None) -> None:
    snapshot = fetch_repo(rid, revision)
    with atomic_dir(target) as tmp:
        for name in (*PACKAGE_FILES, CARD):
            if (snapshot / name).is_file():
                shutil.copyfile(snapshot / name, tmp / name)  # the cache holds symlinks to blobs: copy the content
        try:
            load(tmp)
        except PackageError as e:
            raise HubError(f"{rid}: {e}") from None
        _mark(tmp, "melanoma download")


def resolve(model: str) -> Path:
    """`--model`: a local package folder, or a Hub repo id fetched into (or found in) the HF cache."""
    path = Path(model)
    if path.is_dir():
        return path
    if _REPO_ID.match(model) and not path.exists():
        return fetch_repo(model)
    raise HubError(
        f"--model {model!r} is neither a model folder nor a Hub repo id 'owner/name' (the export stage "
        "writes models/export/<Arch>/<Arch>_<Dataset>/)"
    )

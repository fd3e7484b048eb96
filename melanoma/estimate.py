"""Per-stage GPU time and disk footprint of a run on one NVIDIA H200, from measured reference rates.

Every time is work (from the params in effect) divided by a rate measured on an H200; the rates ship with the
package in `melanoma/reference/*.jsonl` (see its README), and each line names the record it used. A stage the
reference does not measure is listed as not covered, never given an invented number. Real data sizes are the
split's counts when `split` has run, else assumptions (an ISIC run with about 1,100 train images).

Disk is counted for a first run with DVC's hardlink cache (each file once): the outputs after the run (final),
at the run's largest moment (peak: the final outputs plus what the stage at its largest moment holds beyond its
own outputs, an upper bound), and the environment beside them on the same disk.

Used by `melanoma plan` (totals) and `bench/study_estimate.py` (every line). Stdlib + pyyaml + numpy + the
project's own modules (no torch import): about a second. Units: 1 MB = 1e6 bytes, 1 GB = 1e9 bytes.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from melanoma.errors import MelanomaError
from melanoma.params import DATASET_SOURCES, LABELS, synthetic_counts, train_size, train_steps

REFERENCE = Path(__file__).with_name("reference")  # the measured H200 figures this package ships

MB, GB, GIB = 1e6, 1e9, 2**30
TARGET_BYTES = 40 * GB  # "the study fits in 40 GB besides the environment": its outputs, at their peak and after
MACHINE_DISK_BYTES = 64 * GIB  # the GPU machines' disk, which the outputs and the environment share
RAW_BYTES_PER_IMAGE = 0.2 * MB  # measured: ISIC images stored as JPEG q95 at most data.max_side px
ONNX_GRAPH_BYTES = 0.2 * MB  # the ONNX graph alone; its weights are the cell's safetensors (external data)
FP32, BF16 = 4, 2  # bytes per stored parameter: float32 (the packaged seed, generators), bfloat16 (other seeds)
CHECKPOINT_COPIES = 4  # a training checkpoint holds 4 tensors per parameter (model, Adam m and v, best/EMA copy)
# The environment beside the outputs. Measured with `du -sb .venv` on 2026-12-07 on this project's 2-core x86_64
# machine: the pinned requirements with torch 2.14.1+cu130 and its nvidia CUDA wheels (3.36 GB of it), the same
# install `./run.sh` makes on a GPU machine (docs/benchmarks.md records 7.0 GB by bench/footprint.py, 2026-11-30).
VENV_BYTES = 6_943_062_409
VENV_HOW = "du -sb .venv, 2026-12-07: torch 2.14.1+cu130 with its CUDA wheels, as ./run.sh installs it"
# BioViT's pretrained weights are BiomedCLIP's whole open_clip checkpoint (the vision ViT-B/16 and the PubMedBERT
# text tower): an estimate from the two towers' published sizes, not a measured file size
BIOMEDCLIP_PARAMS_M = 86.6 + 110.0
BIOMEDCLIP_SOURCE = "BiomedCLIP: ViT-B/16 86.6 M + PubMedBERT-base ~110 M, estimated"

# Published parameter counts with the 1000-class ImageNet head, and the head's input width (to swap in the
# study's 2-class head). Sources: timm model cards on the Hugging Face Hub for the four timm models
# (vit_base_patch16_224.augreg2_in21k_ft_in1k, densenet121.tv_in1k, resnet50.a1_in1k,
# swin_base_patch4_window7_224.ms_in22k_ft_in1k); medvit_small (the paper's MedViT-S, depths 3/4/20/3) from
# melanoma/classifiers/medvit.py's docstring: 45.43 M at 1000 classes, 44.41 M without the head (31.1 M is
# MedViT-T, the project's medvit_tiny, not the study's member).
PUBLISHED_PARAMS_M = {
    "vit_base_patch16_224": (86.6, 768, "timm model card"),
    "densenet121": (8.0, 1024, "timm model card"),
    "resnet50": (25.6, 2048, "timm model card"),
    "swin_base_patch4_window7_224": (87.8, 1024, "timm model card"),
    "medvit_small": (45.43, 1024, "melanoma/classifiers/medvit.py"),
}
# An arch whose model has no reference record may borrow another model's rate, clearly labelled, never counted.
STAND_INS = {"medvit_small": "swin_base_patch4_window7_224"}


# ---------------------------------------------------------------- inputs


@dataclass
class Reference:
    """Every parsed record (each tagged with `_file`, `_line`), the files read and the lines skipped."""

    records: list[dict[str, Any]]
    files: list[str]
    skipped: list[str] = field(default_factory=list)


def load_reference(folder: Path = REFERENCE) -> Reference:
    """Parse every *.jsonl in `folder`, oldest name first; unparseable lines are skipped and listed."""
    if not folder.is_dir():
        raise MelanomaError(f"reference folder {folder} not found")
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise MelanomaError(f"reference folder {folder} has no .jsonl files")
    ref = Reference([], [f.name for f in files])
    for f in files:
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                ref.skipped.append(f"{f.name}:{n}")
                continue
            if isinstance(rec, dict) and "kind" in rec:
                ref.records.append({**rec, "_file": f.name, "_line": n})
            else:
                ref.skipped.append(f"{f.name}:{n}")
    return ref


def _same(a: Any, b: Any) -> bool:
    """Field equality that tolerates numbers written as strings and case differences in names."""
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a).strip().lower() == str(b).strip().lower()


def find(ref: Reference, kind: str, **want: Any) -> dict[str, Any] | None:
    """The last record of `kind` whose fields equal `want` (a later measurement supersedes an earlier one)."""
    hits = [r for r in ref.records if _same(r.get("kind"), kind) and all(_same(r.get(k), v) for k, v in want.items())]
    return hits[-1] if hits else None


def num(rec: dict[str, Any] | None, key: str) -> float | None:
    """A record's numeric field, or None when the record or a usable number (finite, above zero: every field read
    here is a rate, a size or a duration) is missing."""
    try:
        value = float(rec[key]) if rec is not None else None
    except (KeyError, TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) and value > 0 else None


def cite(ref: Reference, rec: dict[str, Any], what: str) -> str:
    """`[n]:line what`: n indexes the legend of reference files printed at the top."""
    return f"[{ref.files.index(rec['_file']) + 1}]:{rec['_line']} {what}"


# ---------------------------------------------------------------- study quantities


@dataclass(frozen=True)
class Sizes:
    """Assumed real image counts (the study's ISIC data is not on this machine)."""

    train: dict[str, int]
    val: int
    test: int
    external: int

    @property
    def real_total(self) -> int:
        return sum(self.train.values()) + self.val + self.test + self.external

    @property
    def eval_total(self) -> int:
        return self.val + self.test + self.external


# the real data of an ISIC run with about 1,100 train images: what estimates assume before `split` has run
ASSUMED = Sizes({"benign": 730, "malignant": 370}, 165, 165, 659)


def families(params: dict[str, Any]) -> dict[str, bool]:
    """Generator families the grid's datasets need -> whether an upscaled set of that family is needed."""
    out: dict[str, bool] = {}
    for name in params["classifiers"]["datasets"]:
        src = DATASET_SOURCES[name]
        if src:
            fam = src.split("_")[0]
            out[fam] = out.get(fam, False) or src.endswith("_upscaled")
    return out


# ---------------------------------------------------------------- time estimates


@dataclass
class Estimate:
    """One stage line: the work, the rate it is divided by, the record the rate comes from, the result."""

    stage: str
    work: str
    rate: str
    source: str
    seconds: float | None  # None: not covered by the reference
    note: str = ""
    stand_in: bool = False  # a labelled stand-in rate: shown, never counted in the covered total
    device: str = "gpu"  # gpu: an H200 reference rate; cpu: a rate measured by bench/cpu_rates.py


def fmt_s(s: float) -> str:
    """Seconds with a readable larger unit beside them."""
    if s < 60:
        return f"{s:,.1f} s"
    return f"{s:,.0f} s ({s / 60:,.1f} min)" if s < 3600 else f"{s:,.0f} s ({s / 3600:,.2f} h)"


def generator_training(p: dict[str, Any], ref: Reference) -> list[Estimate]:
    """train_generator@{dcgan,ddpm}-{benign,malignant}: steps x batch / the reference train rate."""
    g, out = p["generators"], []
    dc = find(ref, "dcgan", size=g["image_size"], mode="bf16") or find(ref, "dcgan", size=g["image_size"])
    dd = find(ref, "ddpm_train", size=g["image_size"], mode="bf16") or find(ref, "ddpm_train", size=g["image_size"])
    for fam, rec in (("dcgan", dc), ("ddpm", dd)):
        if fam not in families(p):
            continue
        steps, batch = g[fam]["steps"], g[fam]["batch_size"]
        rate, scaled = num(rec, "train_img_s"), ""
        if fam == "ddpm" and rate is not None:
            rate, scaled = ddpm_rate(p, ref, rate)
        for label in LABELS:
            work = f"{steps:,} steps x {batch} img = {steps * batch:,} img"
            if rate is None:
                out.append(Estimate(f"train_generator@{fam}-{label}", work, "-", f"no {fam} train record", None))
                continue
            note = "; ".join(x for x in (scaled, _generator_note(fam, rec, batch)) if x)
            out.append(
                Estimate(
                    f"train_generator@{fam}-{label}",
                    work,
                    f"{rate:,.0f} img/s",
                    cite(ref, rec, f"{rec['kind']} {rec.get('mode', '?')} batch {rec.get('batch', '?')}"),
                    steps * batch / rate,
                    note if label == LABELS[0] else "as above",
                )
            )
    return out


def unet_flops(p: dict[str, Any], ref: Reference, config: str) -> dict[str, Any] | None:
    """The unet_flops record (bench/unet_flops.py) of the params' UNet shape: `config` "study" with the params'
    attention_resolutions, or "reference" (the UNet the ddpm_train record measured)."""
    g = p["generators"]
    d = g["ddpm"]
    want = {
        "size": g["image_size"],
        "block_out_channels": d["block_out_channels"],
        "layers_per_block": d["layers_per_block"],
    }
    if config == "study":
        want["attention_resolutions"] = d["attention_resolutions"]
    return find(ref, "unet_flops", config=config, **want)


def ddpm_rate(p: dict[str, Any], ref: Reference, rate: float) -> tuple[float, str]:
    """The reference DDPM train rate scaled to the params' UNet by the FLOPs of one forward pass (reference /
    study), and the note saying so; unscaled, saying why, when no FLOP count matches the params' UNet."""
    old, new = unet_flops(p, ref, "reference"), unet_flops(p, ref, "study")
    a, b = num(old, "gflop_forward"), num(new, "gflop_forward")
    if a is None or b is None:
        return rate, (
            "NOT scaled: the reference UNet attends only in its lowest block; no unet_flops record counts this "
            f"UNet (attention at {p['generators']['ddpm']['attention_resolutions']} px): run bench/unet_flops.py"
        )
    unet = find(ref, "ddpm_unet")
    return rate * a / b, (
        f"scaled, not matched: the reference {rate:,.0f} img/s ran a {num(unet, 'params_m') or '?'} M UNet attending "
        f"only at {old['attention_resolutions']} px ({old['params_m']} M, {a:g} GFLOP per forward, "
        f"{cite(ref, old, 'unet_flops')}); the study's attends at {new['attention_resolutions']} px "
        f"({new['params_m']} M, {b:g} GFLOP, {cite(ref, new, 'unet_flops')}): "
        f"{rate:,.0f} x {a:g} / {b:g} = {rate * a / b:,.0f} img/s "
        "(attention's memory traffic may cost more than its FLOPs)"
    )


def _generator_note(fam: str, rec: dict[str, Any], batch: int) -> str:
    """Why a generator line is a bound, in words."""
    ref_batch = int(num(rec, "batch") or 0)
    parts = []
    if ref_batch and batch < ref_batch:
        parts.append(
            f"lower bound: the reference ran batch {ref_batch}, the study batch {batch}; "
            "smaller batches run below that rate"
        )
    if str(rec.get("mode")) != "bf16":
        parts.append(
            f"the reference {fam} rate is {rec.get('mode')}, the study trains under bf16 autocast on CUDA "
            "(no bf16 figure)"
        )
    if fam == "dcgan":
        parts.append("the record does not give its ngf/ndf (study: 64/64)")
    return "; ".join(parts)


def sampling(p: dict[str, Any], ref: Reference, sizes: Sizes) -> list[Estimate]:
    """synthesize@{dcgan,ddpm}: images to sample x the sampler's cost per image (and per step for DDPM)."""
    fill = synthetic_counts(sizes.train, p["datasets"]["per_class"])
    n = sum(fill.values())
    work = f"{n:,} img ({' + '.join(f'{c} {fill[c]:,}' for c in LABELS)})"
    quality = (
        f"+ quality (C2ST critic, memorisation, FID on <= {p['synthesize']['quality_samples']:,} images per "
        "class, at 64 px): no figure; seconds on a GPU (a small CNN and one Inception pass over ~2k images)"
    )
    out = []
    if "dcgan" in families(p):
        out.append(_dcgan_sampling(ref, p["generators"]["image_size"], n, work, quality))
    if "ddpm" in families(p):
        out.append(_ddpm_sampling(p, ref, n, work, quality))
    return out


def _dcgan_sampling(ref: Reference, size: int, n: int, work: str, quality: str) -> Estimate:
    """No DCGAN sampling record: the train rate (forward + backward of G and D) bounds a forward pass from above."""
    rec = find(ref, "dcgan", size=size)
    rate = num(rec, "train_img_s")
    if rate is None:
        return Estimate("synthesize@dcgan", work, "-", "no dcgan record", None, quality)
    return Estimate(
        "synthesize@dcgan",
        work,
        f">= {rate:,.0f} img/s",
        cite(ref, rec, "dcgan train rate as a bound"),
        n / rate,
        "upper bound: no sampling reference; sampling is one G forward per image, cheaper than the "
        "train step this rate measures; " + quality,
    )


SAMPLE_SIZE = 64  # the ddpm_sample records: 256 images of the study UNet at 64 px (melanoma/reference/README.md)


def _ddpm_sampling(p: dict[str, Any], ref: Reference, n: int, work: str, quality: str) -> Estimate:
    """The configured scheduler's seconds per image-step from its record, times the study's sampling steps."""
    g = p["generators"]["ddpm"]
    sampler, steps = g["sampler"], g["sampling_steps"]
    if p["generators"]["image_size"] != SAMPLE_SIZE:
        return Estimate(
            "synthesize@ddpm",
            work,
            "-",
            f"no ddpm_sample record at {p['generators']['image_size']} px (the reference sampled at {SAMPLE_SIZE} px)",
            None,
            quality,
        )
    rec = find(ref, "ddpm_sample", scheduler=sampler)
    secs, batch, rsteps = num(rec, "seconds"), num(rec, "batch"), num(rec, "steps")
    work = f"{work} x {steps} steps = {n * steps:,} img-steps"
    if None in (secs, batch, rsteps):
        return Estimate("synthesize@ddpm", work, "-", f"no ddpm_sample record for {sampler}", None, quality)
    per = secs / (batch * rsteps)
    spread = [
        num(r, "seconds") / (num(r, "batch") * num(r, "steps"))
        for r in ref.records
        if r.get("kind") == "ddpm_sample" and None not in (num(r, "seconds"), num(r, "batch"), num(r, "steps"))
    ]
    note = (
        f"{secs:g} s / ({batch:.0f} x {rsteps:.0f}) = {per * 1e3:.3f} ms per img-step; across the reference "
        f"schedulers {min(spread) * 1e3:.3f}-{max(spread) * 1e3:.3f} ms; the record does not say fp32 or bf16; "
        f"study batch {p['synthesize']['batch_size']}, reference {batch:.0f}; " + quality
    )
    return Estimate(
        "synthesize@ddpm",
        work,
        f"{per * 1e3:.3f} ms/img-step",
        cite(ref, rec, f"ddpm_sample {sampler} {rsteps:.0f} steps"),
        n * steps * per,
        note,
    )


def upscaling(p: dict[str, Any], ref: Reference, sizes: Sizes) -> list[Estimate]:
    """train_upscaler and upscale@*: the ESPCN SR model has no reference record, so each gets a labelled STAND-IN:
    the FLOP/s the DCGAN's training step reached on the H200 (its img/s x its FLOPs per image) divided by the SR
    step's FLOPs per image (bench/step_flops.py's records). Never counted as covered."""
    fams = [f for f, up in families(p).items() if up]
    if not fams:
        return []
    u, size = p["upscale"], p["generators"]["image_size"]
    fill = sum(synthetic_counts(sizes.train, p["datasets"]["per_class"]).values())
    hr = size * u["factor"]
    work_train = f"{u['sr']['steps']:,} steps x {u['sr']['batch_size']} patches at {hr} px"
    work_up = f"{fill:,} img, {size} -> {hr} px"
    dcgan = find(ref, "dcgan", size=size, mode="fp32")
    per_img = find(ref, "step_flops", step="dcgan_train", size=size)
    sr_train = find(ref, "step_flops", step="sr_train", size=hr, channels=u["sr"]["channels"])
    sr_infer = find(ref, "step_flops", step="sr_infer", size=hr, channels=u["sr"]["channels"])
    rate, gflops = num(dcgan, "train_img_s"), num(per_img, "gflop_per_image")
    if rate is None or gflops is None or sr_train is None or sr_infer is None:
        why = "no dcgan rate or step_flops records for these sizes: run bench/step_flops.py"
        return [Estimate("train_upscaler", work_train, "-", why, None)] + [
            Estimate(f"upscale@{f}", work_up, "-", why, None) for f in fams
        ]
    flops = rate * gflops * 1e9  # what the DCGAN step reached
    source = f"{cite(ref, dcgan, 'dcgan')} x {cite(ref, per_img, 'step_flops')}"
    how = (
        f"STAND-IN, not a measurement: the DCGAN step's {rate:,.0f} img/s x {gflops:g} GFLOP = "
        f"{flops / 1e12:.1f} TFLOP/s, divided by the SR model's "
    )
    train_rate = flops / (num(sr_train, "gflop_per_image") * 1e9)
    infer_rate = flops / (num(sr_infer, "gflop_per_image") * 1e9)
    images = u["sr"]["steps"] * u["sr"]["batch_size"]
    out = [
        Estimate(
            "train_upscaler",
            work_train,
            f"{train_rate:,.0f} img/s",
            "stand-in " + source,
            images / train_rate,
            how + f"{sr_train['gflop_per_image']} GFLOP per training patch; a smaller net on larger maps reaches "
            "less, so this is optimistic",
            stand_in=True,
        )
    ]
    out += [
        Estimate(
            f"upscale@{f}",
            work_up,
            f"{infer_rate:,.0f} img/s",
            "stand-in " + source,
            fill / infer_rate,
            how + f"{sr_infer['gflop_per_image']} GFLOP per image (forward only)",
            stand_in=True,
        )
        for f in fams
    ]
    return out


@dataclass
class ClassifierRate:
    """Train and inference rates for one model at the study's size and precision, and where they come from."""

    train: float  # after the loader ratio
    infer: float
    source: str
    how: str  # the train rate's arithmetic
    stand_in: str = ""


def classifier_rate(ref: Reference, model: str, size: int, mode: str, loader: float) -> ClassifierRate | None:
    """The model's record (or its labelled stand-in's); train rate x the loader ratio."""
    rec, stand_in = find(ref, "classifier", arch=model, size=size, mode=mode), ""
    if rec is None and model in STAND_INS:
        stand_in = STAND_INS[model]
        rec = find(ref, "classifier", arch=stand_in, size=size, mode=mode)
    tr, inf = num(rec, "train_img_s"), num(rec, "infer_img_s")
    if tr is None or inf is None:
        return None
    what = f"{rec['arch']} {mode} b{rec.get('batch', '?')}"
    how = f"train {tr:,.0f} x {loader:.3f} loader = {tr * loader:,.0f} img/s"
    return ClassifierRate(tr * loader, inf, cite(ref, rec, what), how, stand_in)


def loader_ratio(ref: Reference) -> tuple[float, str]:
    """resident_gpu img/s over pure img/s from the loader anchor (training reads a GPU-resident uint8 pack)."""
    pure, res = find(ref, "pure"), find(ref, "resident_gpu")
    a, b = num(res, "img_s"), num(pure, "img_s")
    if a is None or b is None:
        return 1.0, "no loader anchor: ratio 1 (pure compute)"
    return a / b, f"{a:,.0f} / {b:,.0f} = {a / b:.3f} ({cite(ref, res, 'resident_gpu')}, {cite(ref, pure, 'pure')})"


def classifier_training(p: dict[str, Any], ref: Reference, sizes: Sizes, loader: float) -> list[Estimate]:
    """train_classifier@<Arch>-*: per arch over its datasets and seeds, steps x batch / train rate + validations x
    val / infer rate. The step budget is the same for every dataset (melanoma.params.train_steps)."""
    c, out = p["classifiers"], []
    size, mode = p["datasets"]["image_size"], "bf16_cl" if c["train"]["bf16"] else "fp32"
    tp, runs = c["train"], len(c["datasets"]) * len(c["seeds"])
    steps = train_steps(tp, sizes.train, p["datasets"]["per_class"])
    imgs = runs * steps * tp["batch_size"]
    val = runs * (steps // tp["eval_every"]) * sizes.val
    work = (
        f"{len(c['datasets'])} datasets x {len(c['seeds'])} seeds x {steps} steps x {tp['batch_size']} = "
        f"{imgs:,} train + {val:,} val img"
    )
    for arch in c["archs"]:
        model = c["models"][arch]["model"]
        r = classifier_rate(ref, model, size, mode, loader)
        stage = f"train_classifier@{arch}-* ({len(c['datasets'])} cells)"
        if r is None:
            out.append(Estimate(stage, work, "-", f"not covered by the reference ({model})", None))
            continue
        secs = imgs / r.train + val / r.infer
        note = f"{r.how}; {imgs:,} / {r.train:,.0f} + {val:,} / {r.infer:,.0f} = {fmt_s(secs)}"
        if not any(e.seconds is not None for e in out):  # said once, on the first arch with a rate
            note += "; " + _classifier_caveats(c["train"], r)
        if r.stand_in:
            note = f"STAND-IN, not a measurement: {model} has no record, shown at {r.stand_in}'s rate; {note}"
        out.append(
            Estimate(
                stage,
                work,
                f"train {r.train:,.0f} / infer {r.infer:,.0f} img/s",
                ("stand-in " if r.stand_in else "") + r.source,
                secs,
                note,
                stand_in=bool(r.stand_in),
            )
        )
    return out


def _classifier_caveats(tp: dict[str, Any], r: ClassifierRate) -> str:
    """Why the classifier lines are bounds (said once, on the first arch)."""
    ref_batch = int(re.search(r"b(\d+)$", r.source).group(1)) if re.search(r"b(\d+)$", r.source) else 0
    text = (
        (
            "lower bound for every arch: the reference ran batch 128-256, the study batch "
            f"{tp['batch_size']}; smaller batches run below that rate"
        )
        if ref_batch > tp["batch_size"]
        else ""
    )
    if tp["compile"]:
        text += "; the study uses torch.compile, the reference does not say whether it did"
    return text.lstrip("; ")


def evaluation(p: dict[str, Any], ref: Reference, sizes: Sizes) -> list[Estimate]:
    """evaluate@<Arch>: (val + test + external) x cells / the inference rate."""
    c, out = p["classifiers"], []
    size, mode = p["datasets"]["image_size"], "bf16_cl" if c["train"]["bf16"] else "fp32"
    cells = len(c["datasets"])
    n = sizes.eval_total * cells
    work = f"({sizes.val} + {sizes.test} + {sizes.external}) x {cells} cells = {n:,} img"
    for arch in c["archs"]:
        model = c["models"][arch]["model"]
        r = classifier_rate(ref, model, size, mode, 1.0)
        if r is None:
            out.append(Estimate(f"evaluate@{arch}", work, "-", f"not covered by the reference ({model})", None))
            continue
        out.append(
            Estimate(
                f"evaluate@{arch}",
                work,
                f"{r.infer:,.0f} img/s",
                ("stand-in " if r.stand_in else "") + r.source,
                n / r.infer,
                "STAND-IN, not a measurement" if r.stand_in else "",
                stand_in=bool(r.stand_in),
            )
        )
    return out


def split_classes(n: int, sizes: Sizes) -> tuple[int, int]:
    """(malignant, benign) of a held-out split of `n` images with the train split's malignant share (the split is
    stratified; an external set's share is assumed the same)."""
    share = sizes.train["malignant"] / max(1, sum(sizes.train.values()))
    m = round(n * share)
    return m, n - m


def _bootstrap_rate(ref: Reference, fn: str, pairs: int) -> tuple[float, dict[str, Any]] | None:
    """Seconds per (resample x seed x malignant-benign pair) of `fn` from the record whose pair count is nearest
    `pairs` (the rate per unit grows with the matrices: cache effects)."""
    recs = [
        r
        for r in ref.records
        if r.get("kind") == "cpu_bootstrap" and r.get("fn") == fn and num(r, "s_per_unit") and num(r, "images")
    ]
    if not recs:
        return None

    def distance(r: dict[str, Any]) -> float:
        m = num(r, "malignant") or 1
        return abs(math.log(max(1.0, m * (num(r, "images") - m)) / max(1, pairs)))

    best = min(recs, key=distance)
    return float(num(best, "s_per_unit")), best


def cpu_stage_estimates(p: dict[str, Any], ref: Reference, sizes: Sizes) -> list[Estimate]:
    """The CPU stages and the CPU parts of GPU stages, from rates measured by bench/cpu_rates.py on a 2-core machine
    (an upper bound for the GPU machine's 16 cores); a stage without a record stays not covered."""
    out: list[Estimate] = []
    n_real = sizes.real_total
    for stage, what in (
        ("fetch", "decode, cap at data.max_side, JPEG q95, md5 of every real image"),
        ("split", "md5s, thumbnails, near-duplicate grouping"),
        ("decode", f"every real image decoded and resized to {p['datasets']['image_size']} px once"),
    ):
        out.append(_per_image(ref, stage, n_real, f"{n_real:,} real img: {what}"))
    out += _build_dataset(p, ref, sizes)
    out.append(_per_image(ref, "baseline", n_real, f"{n_real:,} img: colour/texture features, logistic regression"))
    out += _evaluate_bootstrap(p, ref, sizes)
    out += _export(p, ref, sizes)
    out.append(_report_bootstrap(p, ref, sizes))
    start = find(ref, "cpu_startup")
    secs = num(start, "seconds")
    n_stages = stage_count(p)
    work = f"{n_stages} stage processes x one start (interpreter, torch, timm)"
    out.append(
        Estimate("stage start-ups", work, "-", "no cpu_startup record", None, device="cpu")
        if secs is None
        else Estimate(
            "stage start-ups",
            work,
            f"{secs:.1f} s each",
            cite(ref, start, "cpu_startup"),
            n_stages * secs,
            "upper bound: every stage counted as importing torch and timm",
            device="cpu",
        )
    )
    return out


def stage_count(p: dict[str, Any]) -> int:
    """The stage processes a run of `p` starts (dvc.yaml's stages for this grid)."""
    fams = families(p)
    c = p["classifiers"]
    return (
        2  # fetch, split
        + 3 * len(fams)  # train_generator x 2 classes, synthesize per family
        + (1 + sum(fams.values()) if any(fams.values()) else 0)  # train_upscaler, upscale per upscaled family
        + 1  # decode
        + len(c["datasets"])  # build_dataset
        + len(c["archs"]) * len(c["datasets"])  # train_classifier
        + len(c["archs"])  # evaluate, one process per arch
        + 3  # baseline, export, report
    )


def _per_image(ref: Reference, stage: str, n: int, work: str) -> Estimate:
    rec = find(ref, "cpu_stage", stage=stage)
    rate = num(rec, "s_per_image")
    if rate is None:
        return Estimate(stage, work, "-", "no cpu_stage record", None, device="cpu")
    return Estimate(
        stage,
        work,
        f"{rate * 1e3:.2f} ms/img",
        cite(ref, rec, f"{stage} on {rec.get('images')} ISIC images"),
        n * rate,
        device="cpu",
    )


def _build_dataset(p: dict[str, Any], ref: Reference, sizes: Sizes) -> list[Estimate]:
    """Original (links) and the augmented sets, scaled from the records by their images."""
    out = []
    names = p["classifiers"]["datasets"]
    aug = [d for d in names if DATASET_SOURCES[d]]
    fill = sum(synthetic_counts(sizes.train, p["datasets"]["per_class"]).values())
    rec = find(ref, "cpu_stage", stage="build_dataset", dataset="DCGAN_Upscaled")
    secs, real, synth = num(rec, "seconds"), num(rec, "real"), num(rec, "synthetic")
    work = f"{len(aug)} x ({sizes.real_total:,} real, linked + {fill:,} synthetic resized), leakage check"
    if aug and None in (secs, real, synth):
        out.append(Estimate("build_dataset@<augmented>", work, "-", "no build_dataset record", None, device="cpu"))
    elif aug:
        each = secs * (sizes.real_total + fill) / (real + synth)
        out.append(
            Estimate(
                "build_dataset@<augmented>",
                work,
                f"{secs:.1f} s per {real + synth:,.0f} img",
                cite(ref, rec, "DCGAN_Upscaled at study size"),
                len(aug) * each,
                "the record resized 256 px synthetic images (the upscaled sets); the plain sets' 64 px ones cost "
                "less: an upper bound",
                device="cpu",
            )
        )
    if "Original" in names:
        rec = find(ref, "cpu_stage", stage="build_dataset", dataset="Original")
        secs, real = num(rec, "seconds"), num(rec, "real")
        work = f"{sizes.real_total:,} real img: packs linked, leakage check"
        out.append(
            Estimate("build_dataset@Original", work, "-", "no build_dataset record", None, device="cpu")
            if None in (secs, real)
            else Estimate(
                "build_dataset@Original",
                work,
                f"{secs:.2f} s per {real:,.0f} img",
                cite(ref, rec, "Original on the ISIC sample"),
                secs * sizes.real_total / real,
                device="cpu",
            )
        )
    return out


def _held_out(sizes: Sizes) -> list[tuple[str, int]]:
    return [(s, n) for s, n in (("test", sizes.test), ("external_test", sizes.external)) if n]


def _evaluate_bootstrap(p: dict[str, Any], ref: Reference, sizes: Sizes) -> list[Estimate]:
    """evaluate's CIs: per cell and held-out split, the packaged seed's and the seeds' seed x image bootstrap."""
    c, b = p["classifiers"], p["evaluate"]["bootstrap"]
    seeds, cells = len(c["seeds"]), len(c["archs"]) * len(c["datasets"])
    total, parts, src = 0.0, [], ""
    for split, n in _held_out(sizes):
        m, k = split_classes(n, sizes)
        got = _bootstrap_rate(ref, "stats.cell_intervals", m * k)
        if got is None:
            return [Estimate("evaluate's bootstrap CIs", "-", "-", "no cpu_bootstrap record", None, device="cpu")]
        rate, rec = got
        total += cells * b * (seeds + 1) * m * k * rate
        parts.append(f"{split} {m} x {k} pairs at {rate * 1e9:.2f} ns")
        src = src or cite(ref, rec, "stats.cell_intervals")
    return [
        Estimate(
            "evaluate's bootstrap CIs",
            f"{cells} cells x {b:,} resamples x ({seeds} + 1) seeds x pairs",
            "; ".join(parts),
            src,
            total,
            "per cell and held-out split: the seeds' and the packaged seed's CIs",
            device="cpu",
        )
    ]


def _export(p: dict[str, Any], ref: Reference, sizes: Sizes) -> list[Estimate]:
    """export: per cell the ONNX export and onnxruntime's side of the parity check on val (on the CPU in the
    stage too); the PyTorch side runs on the GPU there (165 images per cell: seconds), so it is not counted."""
    c, out = p["classifiers"], []
    cells = len(c["datasets"])
    total, missing, src = 0.0, [], ""
    for arch in c["archs"]:
        rec = find(ref, "cpu_export", model=c["models"][arch]["model"], size=p["datasets"]["image_size"])
        e, o = num(rec, "export_s"), num(rec, "ort_s_per_image")
        if None in (e, o):
            missing.append(arch)
            continue
        total += cells * (e + sizes.val * o)
        src = src or cite(ref, rec, "cpu_export")
    work = f"{len(c['archs']) * cells} cells x (ONNX export + {sizes.val} val img through onnxruntime)"
    if missing:
        return [Estimate("export", work, "-", f"no cpu_export record for {', '.join(missing)}", None, device="cpu")]
    out.append(
        Estimate(
            "export",
            work,
            "per model (cpu_export records)",
            src + " ...",
            total,
            "the parity check's PyTorch side runs on the GPU (seconds, not counted); onnxruntime's on the CPU, "
            "measured on 2 cores: an upper bound",
            device="cpu",
        )
    )
    return out


def _report_bootstrap(p: dict[str, Any], ref: Reference, sizes: Sizes) -> Estimate:
    """The report's comparisons: every augmented dataset vs Original per arch and pooled, each a seed x image
    bootstrap of both models' AUROC (verdict.compare; resamples from verdict.resamples_for)."""
    c, b = p["classifiers"], p["evaluate"]["bootstrap"]
    archs, seeds = len(c["archs"]), len(c["seeds"])
    aug = [d for d in c["datasets"] if DATASET_SOURCES[d]]
    held = _held_out(sizes)
    if "Original" not in c["datasets"] or not aug:
        return Estimate("report bootstrap", "no comparisons", "-", "-", 0.0, device="cpu")
    from melanoma.evaluation.verdict import resamples_for  # numpy and the project's modules: no torch

    b_arch = resamples_for(archs * len(aug) * len(held), b)
    b_pool = resamples_for(len(aug) * len(held), b)
    total, src = 0.0, ""
    for _, n in held:
        m, k = split_classes(n, sizes)
        got = _bootstrap_rate(ref, "stats.auroc_difference", m * k)
        if got is None:
            return Estimate("report bootstrap", "-", "-", "no cpu_bootstrap record", None, device="cpu")
        rate, rec = got
        per = 2 * seeds * m * k * rate  # both models of a pair, per resample
        total += len(aug) * archs * (b_arch + b_pool) * per  # per arch, and pooled (every arch's pair)
        src = src or cite(ref, rec, "stats.auroc_difference")
    work = (
        f"{archs * len(aug) * len(held)} comparisons x {b_arch:,} resamples + {len(aug) * len(held)} pooled x "
        f"{archs} archs x {b_pool:,}, {seeds} seeds, {' and '.join(f'{n} img' for _, n in held)}"
    )
    return Estimate(
        "report bootstrap",
        work,
        "per pair, per seed, per resample",
        src,
        total,
        "the report's figures and HTML are not covered (the demo's whole report stage, same 30 cells: 7.6 s on "
        "2 cores, docs/benchmarks.md)",
        device="cpu",
    )


NOT_COVERED_EXTRA = [
    "fetch's download from Google Drive (data.source gdrive): the fetch line is the conversion only",
    "the report's figures and HTML (the demo's whole report stage, with the same 30 cells: 7.6 s on 2 cores)",
    "per-cell GPU overheads: model build, pretrained weight loading and torch.compile (the study compiles every "
    "classifier cell), once in each of the 30 classifier stages; GradCAM (8 images per cell: seconds)",
    "early stopping (classifiers.train.patience validations) can end a run before its step budget: the classifier "
    "lines assume every step runs",
]


# ---------------------------------------------------------------- disk footprint


@dataclass
class DiskItem:
    """One folder's estimated bytes and the arithmetic behind them."""

    folder: str
    what: str
    bytes: float
    counted: bool = True  # False: shown for comparison, not part of the sum


def params_2class(model: str) -> tuple[float, str] | None:
    """Parameters of `model` with the study's 2-class head: published (1000-class) count - 998 x (width + 1)."""
    if model not in PUBLISHED_PARAMS_M:
        return None
    m, width, src = PUBLISHED_PARAMS_M[model]
    n = m * 1e6 - 998 * (width + 1)
    return n, f"{m} M ({src}, 1000 classes) - 998 x {width + 1} = {n / 1e6:.2f} M"


def dcgan_generator_floats(nz: int, ngf: int, size: int) -> int:
    """Floats in the saved EMA generator (melanoma/generators/dcgan.py's layout): conv weights + 4 per BN channel."""
    n = size.bit_length() - 3  # doublings from 4 px: 64 px -> 4
    ch = ngf * 2 ** (n - 1)
    total = nz * ch * 16 + 4 * ch
    for _ in range(n - 1):
        total += ch * (ch // 2) * 16 + 4 * (ch // 2)
        ch //= 2
    return total + ch * 3 * 16


def espcn_floats(channels: int, factor: int) -> int:
    """Floats in the ESPCN upscaler (melanoma/generators/upscale.py): three convs with biases."""
    c2 = channels * 2
    return (3 * c2 * 25 + c2) + (c2 * channels * 9 + channels) + (channels * 3 * factor**2 * 9 + 3 * factor**2)


def disk_data(p: dict[str, Any], sizes: Sizes) -> list[DiskItem]:
    """data/raw, data/real, data/datasets, data/synthetic."""
    s, per_class = p["datasets"]["image_size"], p["datasets"]["per_class"]
    img = s * s * 3
    names = p["classifiers"]["datasets"]
    aug = [d for d in names if DATASET_SOURCES[d]]
    n_aug = train_size(aug[0], sizes.train, per_class) if aug else 0
    return [
        DiskItem(
            "data/raw",
            f"{sizes.real_total:,} real img x {RAW_BYTES_PER_IMAGE / MB:g} MB (JPEG q95, "
            f"<= {p['data']['max_side']} px)",
            sizes.real_total * RAW_BYTES_PER_IMAGE,
        ),
        DiskItem(
            "data/real",
            f"{sizes.real_total:,} x {s}x{s}x3 B: decode's packs, each stored once (every dataset's val/test/"
            f"external and Original's train are hardlinks to them)",
            sizes.real_total * img,
        ),
        DiskItem("data/datasets (augmented train)", f"{len(aug)} x {n_aug:,} x {img:,} B", len(aug) * n_aug * img),
    ] + disk_synthetic(p, sizes)


def disk_synthetic(p: dict[str, Any], sizes: Sizes) -> list[DiskItem]:
    """data/synthetic/<fam> shards at generator size, <fam>_upscaled at size x factor."""
    n = sum(synthetic_counts(sizes.train, p["datasets"]["per_class"]).values())
    g, f, out = p["generators"]["image_size"], p["upscale"]["factor"], []
    for fam, up in families(p).items():
        out.append(DiskItem(f"data/synthetic/{fam}", f"{n:,} x {g}x{g}x3 B", n * g * g * 3))
        if up:
            out.append(DiskItem(f"data/synthetic/{fam}_upscaled", f"{n:,} x {g * f}x{g * f}x3 B", n * (g * f) ** 2 * 3))
    return out


def disk_results(p: dict[str, Any], ref: Reference, sizes: Sizes) -> list[DiskItem]:
    """results/: evaluate's files per cell (GradCAM overlays as PNG, predictions, curves) and the report's HTML,
    from bench/cpu_rates.py's byte records; a line says so where a record is missing."""
    c, ep = p["classifiers"], p["evaluate"]
    cells, seeds = len(c["archs"]) * len(c["datasets"]), len(c["seeds"])
    overlays = cells * ep["gradcam_per_group"] * 4  # TP, FN, FP, TN
    rb, res = find(ref, "report_bytes", size=p["datasets"]["image_size"]), find(ref, "results_bytes")
    out = []
    png, jpeg = num(rb, "overlay_png_bytes"), num(rb, "overlay_jpeg_uri_bytes")
    if png is None or jpeg is None:
        return [DiskItem("results/", f"no report_bytes record at {p['datasets']['image_size']} px: not estimated", 0)]
    out.append(
        DiskItem(
            "results/evaluation (GradCAM PNGs)",
            f"{overlays} overlays ({cells} cells x {ep['gradcam_per_group']} x 4 outcomes) x {png / 1e3:.0f} kB "
            f"({cite(ref, rb, 'report_bytes')})",
            overlays * png,
        )
    )
    row, other = num(res, "prediction_row_bytes"), num(res, "other_bytes_per_held_out_image")
    held = sum(n for _, n in _held_out(sizes))
    if row is not None and other is not None:
        out.append(
            DiskItem(
                "results/evaluation (the rest)",
                f"{cells} cells x ({seeds} seeds x {sizes.eval_total:,} img x {row:.0f} B per prediction row + "
                f"{held:,} held-out img x {other:.0f} B of curves, PNGs, reports) ({cite(ref, res, 'results_bytes')})",
                cells * (seeds * sizes.eval_total * row + held * other),
            )
        )
    page = num(rb, "page_and_figures_bytes")
    g, f = p["generators"]["image_size"], p["upscale"]["factor"]
    sheets_px = {f"{g}px": 0, f"{g * f}px": 0}
    for up in families(p).values():
        sheets_px[f"{g}px"] += 2
        sheets_px[f"{g * f}px"] += 2 * up
    per_sheet = rb.get("sheet_uri_bytes", {}) if isinstance(rb.get("sheet_uri_bytes"), dict) else {}
    if page is None or any(n and not isinstance(per_sheet.get(k), (int, float)) for k, n in sheets_px.items()):
        out.append(DiskItem("results/report.html", "no page or contact-sheet bytes recorded: not estimated", 0))
        return out
    sheet_bytes = sum(n * per_sheet[k] for k, n in sheets_px.items() if n)
    out.append(
        DiskItem(
            "results/report.html",
            f"{overlays} overlays x {jpeg / 1e3:.1f} kB (JPEG data URI) + contact sheets "
            + " + ".join(f"{n} x {per_sheet[k] / 1e6:.2f} MB at {k}" for k, n in sheets_px.items() if n)
            + f" + page and figures {page / 1e6:.2f} MB (the demo's, same grid)",
            overlays * jpeg + sheet_bytes + page,
        )
    )
    return out


def cell_weight_bytes(n: float, seeds: int) -> float:
    """One classifier cell's stored weights: the packaged seed in float32, the other seeds in bfloat16."""
    return n * FP32 + n * BF16 * (seeds - 1)


def disk_models(p: dict[str, Any], ref: Reference) -> list[DiskItem]:
    """models/classifiers (per arch), models/export, models/generators, models/upscaler."""
    c, out = p["classifiers"], []
    cells, seeds = len(c["datasets"]), len(c["seeds"])
    for arch in c["archs"]:
        model = c["models"][arch]["model"]
        got = params_2class(model)
        if got is None:
            out.append(DiskItem(f"models/classifiers/{arch}", f"{model}: no parameter count known", 0))
            continue
        n, how = got
        out.append(
            DiskItem(
                f"models/classifiers/{arch}",
                f"{how} x ({FP32} B packaged seed + {seeds - 1} x {BF16} B bfloat16 seeds) x {cells} cells",
                cells * cell_weight_bytes(n, seeds),
            )
        )
    n_cells = len(c["archs"]) * cells
    what = f"{n_cells} cells x {ONNX_GRAPH_BYTES / MB:g} MB ONNX graph (model.safetensors: a hardlink to the seed's)"
    out.append(DiskItem("models/export", what, n_cells * ONNX_GRAPH_BYTES))
    return out + disk_generators(p, ref)


def ddpm_params(ref: Reference, p: dict[str, Any]) -> tuple[float, str]:
    """The params' UNet's parameter count: its unet_flops record (bench/unet_flops.py), else the reference's
    ddpm_unet record (the UNet the H200 measured), else the README's ~114 M."""
    rec = unet_flops(p, ref, "study")
    if num(rec, "params_m"):
        return num(rec, "params_m") * 1e6, cite(ref, rec, "unet_flops")
    rec = find(ref, "ddpm_unet")
    m = num(rec, "params_m")
    return (m * 1e6, cite(ref, rec, "ddpm_unet")) if m else (114e6, "README: ~114 M (no ddpm_unet record)")


def disk_generators(p: dict[str, Any], ref: Reference) -> list[DiskItem]:
    """models/generators (EMA weights only, per class) and models/upscaler."""
    g, out = p["generators"], []
    fams = families(p)
    if "ddpm" in fams:
        n, src = ddpm_params(ref, p)
        out.append(
            DiskItem(
                "models/generators/ddpm", f"2 classes x {n / 1e6:.1f} M ({src}) x {FP32} B (EMA UNet)", 2 * n * FP32
            )
        )
    if "dcgan" in fams:
        n = dcgan_generator_floats(g["dcgan"]["nz"], g["dcgan"]["ngf"], g["image_size"])
        out.append(
            DiskItem(
                "models/generators/dcgan",
                f"2 classes x {n / 1e6:.2f} M floats (EMA G, ngf {g['dcgan']['ngf']}) x {FP32} B",
                2 * n * FP32,
            )
        )
    if any(fams.values()):
        u = p["upscale"]
        n = espcn_floats(u["sr"]["channels"], u["factor"])
        out.append(DiskItem("models/upscaler", f"ESPCN {n:,} floats x {FP32} B", n * FP32))
    return out


def disk_copies(items: list[DiskItem], p: dict[str, Any], sizes: Sizes) -> list[DiskItem]:
    """.dvc/cache: 0 extra with hardlinks; what copies would add where DVC falls back to them."""
    tracked = sum(i.bytes for i in items if i.counted)
    img = p["datasets"]["image_size"] ** 2 * 3
    c = p["classifiers"]
    linked_packs = (
        len(c["datasets"]) * sizes.eval_total * img + ("Original" in c["datasets"]) * sum(sizes.train.values()) * img
    )
    weights = sum(
        len(c["datasets"]) * got[0] * FP32
        for arch in c["archs"]
        if (got := params_2class(c["models"][arch]["model"])) is not None
    )
    return [
        DiskItem(".dvc/cache", "hardlinks: every output is a link to its cache object, 0 extra", 0),
        DiskItem(
            "  (copies instead: extra)",
            f"only where DVC falls back to copies (the cache on another filesystem): the cache's copy of every "
            f"output {tracked / GB:.2f} GB + the links made copies: the datasets' real packs {linked_packs / GB:.2f} "
            f"GB, the packages' float32 weights {weights / GB:.2f} GB",
            tracked + linked_packs + weights,
            counted=False,
        ),
    ]


@dataclass
class PeakCandidate:
    """What one stage holds on disk at its largest moment beyond the outputs it leaves (`extra`, bytes)."""

    stage: str
    what: str
    extra: float


def peak_candidates(p: dict[str, Any], ref: Reference) -> list[PeakCandidate]:
    """Each stage kind's extra bytes at its largest moment, largest first. A training checkpoint is the model, its
    Adam(W) m and v and the best (classifiers) or EMA (DDPM) weights: 4 x params x 4 B; the engine writes the new
    one before it deletes the old, and a classifier cell keeps each finished seed's newest checkpoint (to resume
    without retraining it) and its float32 weights until every seed has trained (then the non-packaged ones are
    re-saved in bfloat16 and the checkpoints deleted)."""
    c, out = p["classifiers"], []
    seeds = len(c["seeds"])
    for arch in c["archs"]:
        got = params_2class(c["models"][arch]["model"])
        if got is None:
            continue
        n = got[0]
        ckpt, w32 = CHECKPOINT_COPIES * n * FP32, n * FP32
        stored = cell_weight_bytes(n, seeds)
        extra = (seeds + 1) * ckpt + (seeds - 1) * w32 - stored
        out.append(
            PeakCandidate(
                f"train_classifier@{arch}-* (one cell)",
                f"{seeds + 1} checkpoints x {ckpt / GB:.2f} GB (the {seeds} seeds' newest, one being replaced; "
                f"{n / 1e6:.1f} M x {FP32} B x {CHECKPOINT_COPIES}: model + AdamW m, v + best weights) + "
                f"{seeds - 1} seeds' float32 weights before their bfloat16 re-save x {w32 / GB:.2f} GB - the "
                f"cell's stored weights {stored / GB:.2f} GB",
                extra,
            )
        )
    if "ddpm" in families(p):
        n, src = ddpm_params(ref, p)
        ckpt = CHECKPOINT_COPIES * n * FP32
        out.append(
            PeakCandidate(
                "train_generator@ddpm-* (one class)",
                f"2 checkpoints x {ckpt / GB:.2f} GB (old + new; {n / 1e6:.1f} M ({src}) x {FP32} B x "
                f"{CHECKPOINT_COPIES}: UNet + EMA + Adam m, v) - its EMA weights {n * FP32 / GB:.2f} GB",
                2 * ckpt - n * FP32,
            )
        )
    largest = max((got[0] for a in c["archs"] if (got := params_2class(c["models"][a]["model"]))), default=0)
    if largest:
        out.append(
            PeakCandidate(
                "export",
                f"one ONNX graph with its float32 weights inside ({largest / 1e6:.1f} M x {FP32} B) until they are "
                "made external data",
                largest * FP32,
            )
        )
    return sorted(out, key=lambda c: -c.extra)


def hf_cache(p: dict[str, Any]) -> list[tuple[str, float, str]]:
    """(weight, bytes, arithmetic) of each pretrained weight the params need in the Hugging Face cache: parameters
    (the published counts, with the 1000-class head the Hub file holds) x 4 B."""
    out, seen = [], set()
    for arch in p["classifiers"]["archs"]:
        spec = p["classifiers"]["models"][arch]
        if not spec["pretrained"]:
            continue
        if arch == "BioViT":
            key, m, src = "BiomedCLIP", BIOMEDCLIP_PARAMS_M, BIOMEDCLIP_SOURCE
        elif spec["model"] in PUBLISHED_PARAMS_M:
            key = spec["model"]
            m, _, src = PUBLISHED_PARAMS_M[key]
        else:
            out.append((spec["model"], 0.0, "no parameter count known"))
            continue
        if key not in seen:
            seen.add(key)
            out.append((key, m * 1e6 * FP32, f"{m:g} M ({src}) x {FP32} B"))
    return out


def environment(p: dict[str, Any]) -> list[DiskItem]:
    """What sits beside the outputs on the GPU machine: the .venv, the Hugging Face cache, pip's cache (none)."""
    hf = [DiskItem(f"Hugging Face cache: {k}", how, b) for k, b, how in hf_cache(p)]
    return [
        DiskItem(".venv", VENV_HOW, VENV_BYTES),
        *(hf or [DiskItem("Hugging Face cache", "no pretrained weights", 0)]),
        DiskItem("~/.cache/pip", "none: ./run.sh installs with pip --no-cache-dir", 0),
    ]


@dataclass
class Disk:
    """The whole disk estimate: the outputs' items (final), the peak's candidates, the environment."""

    items: list[DiskItem]
    peaks: list[PeakCandidate]
    env: list[DiskItem]

    @property
    def final(self) -> float:
        """Bytes of the outputs after a successful first run (links counted once)."""
        return sum(i.bytes for i in self.items if i.counted)

    @property
    def peak(self) -> float:
        """Bytes of the outputs at the run's largest moment: as if every other stage's outputs were already
        written when the stage with the largest extra is at its largest (an upper bound)."""
        return self.peak_with(1)

    def peak_with(self, jobs: int) -> float:
        """The peak when `jobs` stages run at once (`dvc repro -j`): each may be at its largest moment together,
        the worst case `jobs` cells of the largest model (an upper bound)."""
        return self.final + jobs * max((c.extra for c in self.peaks), default=0.0)

    @property
    def environment(self) -> float:
        return sum(i.bytes for i in self.env)

    @property
    def fits(self) -> bool:
        """Peak and final outputs both within TARGET_BYTES."""
        return self.peak <= TARGET_BYTES and self.final <= TARGET_BYTES


def disk(p: dict[str, Any], ref: Reference, sizes: Sizes) -> Disk:
    """Every footprint line (outputs, the DVC cache), the peak's candidates and the environment."""
    items = disk_data(p, sizes) + disk_models(p, ref) + disk_results(p, ref, sizes)
    return Disk(items + disk_copies(items, p, sizes), peak_candidates(p, ref), environment(p))


def dvc_cache_type(root: Path = Path(".")) -> str:
    """cache.type as configured in this checkout's .dvc/config(.local) (the later file wins), or 'not set'."""
    found = None
    for name in ("config", "config.local"):
        f = root / ".dvc" / name
        if not f.is_file():
            continue
        section = ""
        for line in f.read_text().splitlines():
            s = line.strip()
            if s.startswith("["):
                section = s.strip("[]'\" ")
            elif section == "cache" and re.match(r"type\s*=", s):
                found = s.split("=", 1)[1].strip().strip("'\"")
    return found or "not set (DVC default: reflink,copy - copies on this filesystem)"


# ---------------------------------------------------------------- output


def table(rows: list[list[str]], head: list[str]) -> str:
    """Left-aligned columns sized to their content."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, rows)])


def print_times(est: list[Estimate]) -> None:
    """The stage table, each note on its own indented line below its row."""
    head = ["stage", "work", "rate", "source", "estimate"]
    rows = [
        [
            e.stage,
            e.work,
            e.rate,
            e.source,
            ("(stand-in) " if e.stand_in else "") + (fmt_s(e.seconds) if e.seconds is not None else "not covered"),
        ]
        for e in est
    ]
    lines = table(rows, head).splitlines()
    print("\n".join(lines[:2]))
    for e, line in zip(est, lines[2:]):
        print(line)
        if e.note and e.note != "as above":
            print(f"    note: {e.note}")


def print_groups(est: list[Estimate]) -> None:
    """Subtotals per stage family (the part before '@'), covered lines only; stand-ins in brackets."""
    groups: dict[str, list[float]] = {}
    for e in est:
        if e.seconds is not None:
            g = groups.setdefault(e.stage.split("@")[0], [0.0, 0.0])
            g[1 if e.stand_in else 0] += e.seconds
    for name, (cov, stand) in groups.items():
        print(f"  {name:<26} {fmt_s(cov)}" + (f"  [+ stand-in {fmt_s(stand)}]" if stand else ""))


def fmt_bytes(b: float) -> str:
    """GB above 1 GB, else MB, right-aligned."""
    return f"{b / GB:9.2f} GB" if b >= GB else f"{b / MB:9.1f} MB"


def print_header(ref: Reference, sizes: Sizes, p: dict[str, Any], ratio_how: str, profile: str = "study") -> None:
    """What the estimate rests on: reference files, assumptions, the study's key params."""
    env = {
        k: v
        for r in ref.records
        if r.get("kind") == "env"
        for k, v in r.items()
        if k not in ("kind", "t", "_file", "_line")
    }
    tp, per_class = p["classifiers"]["train"], p["datasets"]["per_class"]
    fill = synthetic_counts(sizes.train, per_class)
    print(f"Estimate: one NVIDIA H200, profile {profile!r} (params.yaml untouched)")
    print("reference files:", ", ".join(f"[{i}] {f}" for i, f in enumerate(ref.files, 1)))
    print(
        "reference environment: "
        + "; ".join(f"{k} {v}" for k, v in env.items())
        + (f"; skipped unparseable lines: {', '.join(ref.skipped)}" if ref.skipped else "")
    )
    cpu = find(ref, "cpu_env")
    if cpu is not None:
        print(
            f"CPU reference ({cpu['_file']}, {cpu.get('t', '?')}, `{cpu.get('command', '?')}`): {cpu.get('cpu', '?')}, "
            f"{cpu.get('cpus', '?')} cores, torch {cpu.get('torch', '?')}"
        )
    print(
        f"assumed real data (CLI flags): train benign {sizes.train['benign']}, malignant {sizes.train['malignant']}, "
        f"val {sizes.val}, test {sizes.test}, external test {sizes.external} (total {sizes.real_total:,})"
    )
    print(
        f"study: generators {p['generators']['image_size']} px; datasets.per_class {per_class} -> synthetic per "
        f"family {', '.join(f'{c} {n:,}' for c, n in fill.items())}; classifiers {p['datasets']['image_size']} px, "
        f"{len(p['classifiers']['seeds'])} seeds x {train_steps(tp, sizes.train, per_class)} steps of "
        f"batch {tp['batch_size']}, bf16 "
        f"{str(tp['bf16']).lower()}"
    )
    print(
        "classifier train sizes: "
        + ", ".join(f"{d} {train_size(d, sizes.train, per_class):,}" for d in p["classifiers"]["datasets"])
    )
    print(f"loader ratio applied to classifier training (GPU-resident uint8 pack): {ratio_how}\n")


@dataclass
class Times:
    """The time lines summed: GPU (H200 rates) without and with the stand-in lines, CPU (measured here)."""

    gpu: float
    stand_in: float
    cpu: float

    @property
    def total(self) -> float:
        """Wall time of the covered lines, one stage at a time: GPU + CPU (stand-ins not counted)."""
        return self.gpu + self.cpu


def time_totals(est: list[Estimate]) -> Times:
    """Sum the covered lines by device; stand-in lines apart."""
    covered = [e for e in est if e.seconds is not None]
    return Times(
        sum(e.seconds for e in covered if e.device == "gpu" and not e.stand_in),
        sum(e.seconds for e in covered if e.stand_in),
        sum(e.seconds for e in covered if e.device == "cpu" and not e.stand_in),
    )


def print_summary(est: list[Estimate]) -> tuple[Times, list[str]]:
    """GPU, CPU and total time, per-family subtotals and what is not covered; returns (the sums, not covered)."""
    t = time_totals(est)
    missing = [e.stage for e in est if e.seconds is None]
    stand_ins = [e.stage for e in est if e.stand_in and e.seconds is not None]
    print(
        f"\ncovered GPU time (H200 reference rates): {fmt_s(t.gpu)}"
        + (f"; with the stand-in lines: {fmt_s(t.gpu + t.stand_in)}" if t.stand_in else "")
    )
    print_groups([e for e in est if e.device == "gpu"])
    print(
        f"CPU time (measured by bench/cpu_rates.py on a 2-core machine: an upper bound for the GPU machine's CPUs): "
        f"{fmt_s(t.cpu)}"
    )
    print_groups([e for e in est if e.device == "cpu"])
    print(
        f"total wall time, one stage at a time: {t.gpu / 3600:.2f} h GPU + {t.cpu / 3600:.2f} h CPU = "
        f"{t.total / 3600:.2f} h"
        + (f" ({(t.total + t.stand_in) / 3600:.2f} h with the stand-in lines)" if t.stand_in else "")
    )
    if stand_ins:
        print("stand-in rates (in the total with stand-ins; labelled, not measurements):")
        for m in stand_ins:
            print(f"  - {m}")
    print("not covered:")
    for m in missing + NOT_COVERED_EXTRA:
        print(f"  - {m}")
    return t, missing + stand_ins


def stage_estimates(p: dict[str, Any], ref: Reference, sizes: Sizes) -> list[Estimate]:
    """Every stage line of a run with params `p` on one H200."""
    ratio, _ = loader_ratio(ref)
    return (
        generator_training(p, ref)
        + sampling(p, ref, sizes)
        + upscaling(p, ref, sizes)
        + classifier_training(p, ref, sizes, ratio)
        + evaluation(p, ref, sizes)
        + cpu_stage_estimates(p, ref, sizes)
    )


def totals(p: dict[str, Any], sizes: Sizes, ref: Reference | None = None) -> dict[str, Any]:
    """What `melanoma plan` prints: {"gpu_seconds": covered GPU time, "cpu_seconds": the CPU lines (measured on 2
    cores), "stand_in_seconds", "stand_ins": [stage]
    (rated with another model's rate), "not_covered": [stage] (no rate at all), "disk_final_bytes",
    "disk_peak_bytes" (the outputs after a first run and at its largest moment), "peak_stage", "environment_bytes"
    (.venv + Hugging Face cache), "disk_target_bytes", "machine_disk_bytes"}."""
    ref = ref or load_reference()
    est = stage_estimates(p, ref, sizes)
    d = disk(p, ref, sizes)
    t = time_totals(est)
    return {
        "gpu_seconds": t.gpu,
        "cpu_seconds": t.cpu,
        "stand_in_seconds": t.stand_in,
        "stand_ins": [e.stage for e in est if e.stand_in and e.seconds is not None],
        "not_covered": [e.stage for e in est if e.seconds is None],
        "disk_final_bytes": d.final,
        "disk_peak_bytes": d.peak,
        "peak_stage": d.peaks[0].stage if d.peaks else "",
        "environment_bytes": d.environment,
        "disk_target_bytes": TARGET_BYTES,
        "machine_disk_bytes": MACHINE_DISK_BYTES,
    }


def print_disk(p: dict[str, Any], ref: Reference, sizes: Sizes) -> Disk:
    """The footprint tables (outputs, peak, environment) and the verdict against TARGET_BYTES; returns them."""
    d = disk(p, ref, sizes)
    fits = lambda b: "fits" if b <= TARGET_BYTES else "does NOT fit"  # noqa: E731
    print("\nDisk: the outputs of a first run (the environment below)")
    print(f"this checkout's DVC cache.type: {dvc_cache_type()}")
    rows = [[i.folder, i.what, fmt_bytes(i.bytes) + ("" if i.counted else "  (not summed)")] for i in d.items]
    print(table(rows, ["folder", "arithmetic", "bytes"]))
    print(f"\nfinal: {d.final / GB:.2f} GB after the run (data/splits, a few CSVs, not estimated)")
    print(
        "peak: the largest moment of the run = the final outputs + what the stage at its largest moment holds "
        "beyond its own outputs, as if every other stage had already written its outputs (an upper bound: one "
        "stage runs at a time, and later stages' outputs do not exist yet):"
    )
    for c in d.peaks:
        print(f"  +{c.extra / GB:5.2f} GB  {c.stage}: {c.what}")
    top = d.peaks[0] if d.peaks else PeakCandidate("none", "", 0.0)
    print(f"peak: {d.final / GB:.2f} + {top.extra / GB:.2f} = {d.peak / GB:.2f} GB, during {top.stage}")
    print(
        f"target {TARGET_BYTES / GB:.0f} GB of outputs: final {d.final / GB:.2f} GB {fits(d.final)}, peak "
        f"{d.peak / GB:.2f} GB {fits(d.peak)} ({(TARGET_BYTES - d.peak) / GB:+.2f} GB left at the peak)"
    )
    print(
        "that is one stage at a time (`dvc repro`); stages run side by side (`dvc repro -j N`) add their extras: "
        + ", ".join(f"-j {j}: {d.peak_with(j) / GB:.2f} GB ({fits(d.peak_with(j))})" for j in (2, 4))
    )
    copies = next(i.bytes for i in d.items if i.folder.startswith("  (copies"))
    print(
        f"where DVC falls back to copies (cache on another filesystem): final {d.final / GB:.2f} + "
        f"{copies / GB:.2f} = {(d.final + copies) / GB:.2f} GB ({fits(d.final + copies)})"
    )
    print(
        "a rerun adds: DVC deletes a stage's outputs from the workspace before it reruns, but their cache objects "
        "stay (for `git checkout` of older results) until `dvc gc --workspace`, so a rerun's new outputs come on "
        "top; an output rewritten with the same bytes is left as a copy until `dvc checkout --relink`"
    )
    print("\nBeside the outputs, on the same disk")
    print(table([[i.folder, i.what, fmt_bytes(i.bytes)] for i in d.env], ["what", "arithmetic", "bytes"]))
    whole = d.peak + d.environment
    print(
        f"peak outputs + environment: {d.peak / GB:.2f} + {d.environment / GB:.2f} = {whole / GB:.2f} GB of the "
        f"GPU machine's {MACHINE_DISK_BYTES / GB:.1f} GB (64 GiB) disk: "
        f"{'fits' if whole <= MACHINE_DISK_BYTES else 'does NOT fit'}; not estimated: torch.compile's and "
        "Triton's kernel caches, the DVC state database"
    )
    return d

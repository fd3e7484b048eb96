"""One training loop for every classifier family, fed from the packed uint8 caches `build_dataset` writes.

The whole pack sits as uint8 on the training device (on a GPU too: the demo pack is a few MB, the study's
~7,000 images at 224 px about 1 GB), and augmentation runs batched on that device: one affine warp per batch
(flip, 90-degree turns, a small rotation/scale/shift) and a colour jitter. Every random number comes from a
generator on the training device seeded by (seed, pass over the data) for the batch order and (seed, step) for
the augmentation, drawn for the *global* batch, so a resumed run, and a run on N processes, see exactly the
batches and augmentations of an uninterrupted single-process run.

The training budget is a number of optimiser steps (`classifiers.train.steps`, or with `auto` a number of passes
over an augmented training set: melanoma.params.train_steps), the same for every dataset, so an augmented set
never gets more training than Original; the imbalance rule (`classifiers.train.imbalance`) is
applied identically to every dataset. A cell is trained once per seed in `classifiers.seeds` (init, batch order,
augmentation), one process for all of them. Model selection and early stopping use val AUROC, every
`eval_every` steps (test is never read here). Once every seed has trained, the cell's packaged seed (the best
val AUROC: inference.packaged_seed, the rule evaluate applies) keeps its weights in float32 (export links that
file, and its ONNX graph reads it); the other seeds' weights are stored in bfloat16, half the bytes, and
evaluate scores what is stored. Checkpoints go to an untracked folder that survives DVC deleting
the stage outputs, so `dvc repro` after a kill resumes each seed at its last validation.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from melanoma.classifiers.inference import packaged_seed, probabilities
from melanoma.classifiers.registry import Built, build_model
from melanoma.data.datasets import DatasetError, load_split, pack_real_counts
from melanoma.engine import Runtime, TrainingPlan, adamw, cosine_schedule, discard, files_md5, fit
from melanoma.evaluation.metrics import MetricError, auroc
from melanoma.imports import code_files
from melanoma.io import atomic_dir
from melanoma.params import LABELS, ParamsError, budget_problem, train_steps

# ---------------------------------------------------------------- augmentation


def augment_params(n: int, cfg: dict[str, Any], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-image augmentation draws for a batch of n (always the same draws, in the same order, for a seed)."""
    u = torch.rand(n, 8, generator=gen, device=gen.device)
    return {
        "flip": (u[:, 0] < 0.5) if cfg["hflip"] else torch.zeros(n, dtype=torch.bool, device=gen.device),
        "quarter": torch.floor(u[:, 1] * 4) if cfg["rot90"] else torch.zeros(n, device=gen.device),
        "angle": (u[:, 2] * 2 - 1) * cfg["rotate_degrees"],
        "scale": 1 + (u[:, 3] * 2 - 1) * cfg["scale"],
        "shift": (u[:, 4:6] * 2 - 1) * cfg["translate"] * 2,  # fraction of the side; grid coords span 2
        "bright": 1 + (u[:, 6] * 2 - 1) * cfg["color_jitter"],
        "sat": 1 + (u[:, 7] * 2 - 1) * cfg["color_jitter"],
    }


def augment(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply the drawn augmentation to float images in [0, 1] (B, 3, H, W): one grid_sample for all geometry."""
    dev = x.device
    angle = (p["quarter"] * 90 + p["angle"]) * math.pi / 180
    cos, sin = torch.cos(angle) / p["scale"], torch.sin(angle) / p["scale"]
    fx = torch.where(p["flip"], -1.0, 1.0)
    theta = torch.stack(
        [torch.stack([cos * fx, -sin, p["shift"][:, 0]], 1), torch.stack([sin * fx, cos, p["shift"][:, 1]], 1)], 1
    ).to(dev, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    sat = p["sat"].to(dev, x.dtype).view(-1, 1, 1, 1)
    x = gray + (x - gray) * sat
    return (x * p["bright"].to(dev, x.dtype).view(-1, 1, 1, 1)).clamp(0, 1)


def _val_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    try:
        return auroc(labels, scores)
    except MetricError:
        raise DatasetError(
            "val has only one class, so AUROC is undefined; the split needs both benign and "
            "malignant images in val (check split.val_fraction and the data)"
        ) from None


def train_step(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    X: torch.Tensor,
    Y: torch.Tensor,
    idx: torch.Tensor,
    aug: dict[str, torch.Tensor],
    class_w: torch.Tensor,
    mean: torch.Tensor,
    std: torch.Tensor,
    rt: Runtime = Runtime(),
) -> torch.Tensor:
    """One optimisation step on this rank's share of the global batch `idx` of the device-resident uint8 pack X.

    The loss is this rank's weighted sum over the *global* batch's weight sum, times the world size: DDP's mean
    of the gradients then equals the single-process weighted mean over the whole global batch. Returns the
    0-dim loss on the device (no host sync).
    """
    local = len(idx) // rt.world
    mine = slice(rt.rank * local, (rt.rank + 1) * local)
    idx_local = idx[mine].to(X.device)
    xb = (augment(X[idx_local].float() / 255, {k: v[mine] for k, v in aug.items()}) - mean) / std
    if X.device.type == "cuda":
        xb = xb.contiguous(memory_format=torch.channels_last)
    yb = Y[idx_local]
    with rt.autocast():
        logits = net(xb)
    loss = (class_w[yb] * F.cross_entropy(logits.float(), yb, reduction="none")).sum()
    loss = loss / class_w[Y[idx.to(X.device)]].sum() * rt.world
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


# the code that shapes a trained model: a checkpoint made by other code is not resumed (DVC reruns the stage when
# this code changes; resuming a checkpoint of the old code would silently keep the old result)
CODE = code_files(__name__)


def epoch_batches(labels: np.ndarray, batch: int, imbalance: str, gen: torch.Generator) -> list[torch.Tensor]:
    """Global batches of indices for one pass over the data (drop_last: every step has the same global batch).

    balanced_sampling draws each image with probability 1 / (2 x its class count), with replacement, so both
    classes are equally likely in every batch whatever the dataset's class counts."""
    n = len(labels)
    if imbalance == "balanced_sampling":
        w = torch.tensor(1.0 / np.bincount(labels, minlength=2)[labels], dtype=torch.float64, device=gen.device)
        order = torch.multinomial(w, n, replacement=True, generator=gen)
    else:
        order = torch.randperm(n, generator=gen, device=gen.device)
    return [order[i : i + batch] for i in range(0, n - batch + 1, batch)]


def _stream(seed: int, kind: int, index: int) -> int:
    """The seed of one random stream: kind 0 = the batch order of pass `index`, 1 = the augmentation of step
    `index`. Plain integer arithmetic (Python's hash() of a tuple differs between processes)."""
    return (seed * 10_000_019 + index) * 2 + kind


class ClassifierTask:
    """One seed of one grid cell as an engine Task: `steps` optimiser steps, validation (val AUROC) every
    `eval_every` steps, the best validation's weights kept in the state (so a resumed run keeps them).
    """

    def __init__(
        self,
        name: str,
        built: Built,
        tp: dict[str, Any],
        lr: float,
        seed: int,
        train: tuple[np.ndarray, np.ndarray],
        val: tuple[np.ndarray, np.ndarray],
        rt: Runtime,
        log: Callable[[str], None] = print,
    ) -> None:
        self.name, self.tp, self.rt, self.lr, self.seed, self.log = name, tp, rt, lr, seed, log
        self.advice = f"lower classifiers.models.{built.info['arch']}.lr (now {lr}) or change the seed"
        self.model = rt.prepare(built.model)
        if rt.world > 1 and rt.device.type == "cuda":  # batch statistics over the global batch
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        norm = built.info["normalisation"]
        self.mean = torch.tensor(norm["mean"], device=rt.device).view(1, 3, 1, 1)
        self.std = torch.tensor(norm["std"], device=rt.device).view(1, 3, 1, 1)
        (xs, self.ys), (xv, self.yv) = train, val
        self.X = torch.from_numpy(xs).permute(0, 3, 1, 2).contiguous().to(rt.device)  # the whole pack, uint8
        self.XV = torch.from_numpy(xv).permute(0, 3, 1, 2).contiguous().to(rt.device)
        self.Y = torch.from_numpy(self.ys).to(rt.device)
        counts = np.bincount(self.ys, minlength=2)
        self.class_w = torch.tensor(
            len(self.ys) / (2 * np.maximum(counts, 1)) if tp["imbalance"] == "weighted_loss" else np.ones(2),
            dtype=torch.float32,
            device=rt.device,
        )
        self.batch = min(tp["batch_size"], len(self.ys))
        self.steps_per_pass = len(self.ys) // self.batch
        self.net = self._wrap(self.model)
        self.opt = adamw(self.model, lr, tp["weight_decay"])
        self.sched = cosine_schedule(self.opt, tp["steps"], tp["warmup_steps"], tp["lr_floor"])
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"auroc": -1.0, "step": -1}
        self.best_state: dict[str, torch.Tensor] = {}
        self._pass = -1

    def _wrap(self, model: nn.Module) -> nn.Module:
        net = model
        if self.rt.world > 1:
            cuda = self.rt.device.type == "cuda"
            net = nn.parallel.DistributedDataParallel(model, device_ids=[self.rt.device.index] if cuda else None)
        return torch.compile(net) if self.tp["compile"] else net

    @property
    def stop(self) -> bool:
        """Early stopping: `patience` validations without a better val AUROC."""
        return bool(self.history) and (
            self.history[-1]["step"] - self.best["step"] >= self.tp["patience"] * self.tp["eval_every"]
        )

    def step(self, step: int) -> dict[str, torch.Tensor]:
        passes, i = divmod(step, self.steps_per_pass)
        if passes != self._pass:  # also after a resume in the middle of a pass
            gen = self.rt.generator(_stream(self.seed, 0, passes))
            self.batches, self._pass = epoch_batches(self.ys, self.batch, self.tp["imbalance"], gen), passes
        self.net.train()  # validation (end_period) leaves the model in eval mode
        self.sched.step_update(step)
        aug = augment_params(self.batch, self.tp["augment"], self.rt.generator(_stream(self.seed, 1, step)))
        loss = train_step(
            self.net, self.opt, self.X, self.Y, self.batches[i], aug, self.class_w, self.mean, self.std, self.rt
        )
        return {"train_loss": loss}

    def end_period(self, step: int, means: dict[str, float]) -> dict[str, float]:
        """Validate on val: AUROC and loss; keep the best validation's weights."""
        pv = probabilities(self.model, self.XV, self.mean, self.std, self.tp["eval_batch_size"], self.rt)
        val_auroc = _val_auroc(self.yv, pv.numpy())
        val_loss = float(F.binary_cross_entropy(pv.clamp(1e-7, 1 - 1e-7), torch.from_numpy(self.yv).float()))
        done = step + 1
        row = {
            "step": done,
            "images_seen": done * self.batch,
            "train_loss": means["train_loss"],
            "val_loss": val_loss,
            "val_auroc": val_auroc,
            "lr": self.opt.param_groups[0]["lr"],
        }
        self.history.append(row)
        improved = val_auroc > self.best["auroc"]
        if improved:
            self.best = {"auroc": val_auroc, "loss": val_loss, "step": done}
            self.best_state = copy.deepcopy(self.model.state_dict())
        self.log(
            f"{self.name} step {done}/{self.tp['steps']}: loss {means['train_loss']:.4f} val loss "
            f"{val_loss:.4f} val AUROC {val_auroc:.4f}" + (" *" if improved else "")
        )
        return {k: row[k] for k in ("val_loss", "val_auroc", "lr")}

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "history": self.history,
            "best": self.best,
            "best_model": self.best_state,
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        self.history, self.best, self.best_state = list(s["history"]), dict(s["best"]), s["best_model"]


def _load_data(data_dir: Path, dataset: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    try:
        return load_split(data_dir, "train"), load_split(data_dir, "val")
    except OSError as e:
        raise DatasetError(f"cannot read dataset {data_dir}: {e}; run `dvc repro build_dataset@{dataset}`") from None


def _with_steps(params: dict[str, Any], data_dir: Path) -> dict[str, Any]:
    """`params` with classifiers.train.steps as the number of optimiser steps (`auto` resolved from the real train
    counts in the dataset's manifest: the same number for every dataset). ParamsError when eval_every or
    warmup_steps do not fit in it."""
    tp = params["classifiers"]["train"]
    steps = train_steps(tp, pack_real_counts(data_dir), params["datasets"]["per_class"])
    if budget_problem(tp, steps):
        raise ParamsError(budget_problem(tp, steps))
    return {**params, "classifiers": {**params["classifiers"], "train": {**tp, "steps": steps}}}


def _threads(tp: dict[str, Any], rt: Runtime) -> None:
    if tp["threads"]:
        torch.set_num_threads(tp["threads"])
    elif rt.world > 1 and rt.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // rt.world))


def train_classifier(
    arch: str,
    dataset: str,
    params: dict[str, Any],
    data_dir: Path,
    out: Path,
    ckpt_dir: Path,
    rt: Runtime = Runtime(),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train one grid cell once per seed in `classifiers.seeds`; write `out`/seed_<k>/ for each (model.safetensors:
    the best validation's weights, model_config.json, live/), all seeds or none, then delete the checkpoints
    (a killed run resumes each seed from them; a finished one does not need them). The packaged seed's weights
    are stored in float32, every other seed's floating tensors in bfloat16 (`weights_dtype` in model_config.json
    says which).

    Returns {"seeds": [each seed's record], "seconds_this_run"}. Raises DatasetError (unreadable pack, one-class
    val), ParamsError (batch not divisible by processes), Diverged (NaN/Inf loss; nothing of that period is
    saved), CheckpointError, PretrainedUnavailable.
    """
    t0 = time.perf_counter()
    train, val = _load_data(data_dir, dataset)
    params = _with_steps(params, data_dir)
    _threads(params["classifiers"]["train"], rt)
    records = []
    with atomic_dir(out) if rt.main else contextlib.nullcontext(None) as tmp:
        for seed in params["classifiers"]["seeds"]:
            task, record = train_seed(
                arch, dataset, params, seed, train, val, data_dir, ckpt_dir / f"seed_{seed}", rt, log
            )
            if rt.main:
                _write_seed(tmp / f"seed_{seed}", task, record, ckpt_dir / f"seed_{seed}")
            records.append(record)
        if rt.main:
            keep = packaged_seed({r["seed"]: r["val_auroc"] for r in records}, params["classifiers"]["seeds"])
            for r in records:
                if r["seed"] != keep:
                    _store_bfloat16(tmp / f"seed_{r['seed']}", r)
    if rt.main:
        for seed in params["classifiers"]["seeds"]:
            discard(ckpt_dir / f"seed_{seed}")
        discard(ckpt_dir)
    return {"seeds": records, "seconds_this_run": round(time.perf_counter() - t0, 1)}


def train_seed(
    arch: str,
    dataset: str,
    params: dict[str, Any],
    seed: int,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    data_dir: Path,
    ckpt_dir: Path,
    rt: Runtime = Runtime(),
    log: Callable[[str], None] = print,
) -> tuple[ClassifierTask, dict[str, Any]]:
    """One seed of a cell: `classifiers.train.steps` steps from weights initialised by `seed`; returns the
    finished task (its best_state holds the selected weights) and the record model_config.json stores."""
    tp, spec = params["classifiers"]["train"], params["classifiers"]["models"][arch]
    if min(tp["batch_size"], len(train[1])) % rt.world:
        raise ParamsError(
            f"classifiers.train.batch_size ({min(tp['batch_size'], len(train[1]))}) must be divisible "
            f"by classifiers.train.processes ({rt.world}): every process takes an equal share of each "
            "global batch"
        )
    torch.manual_seed(seed)  # the same initial weights on every rank and every rerun
    built = build_model(arch, spec, len(LABELS), train[0].shape[1])
    task = ClassifierTask(
        f"{arch}_{dataset} seed {seed}",
        built,
        tp,
        spec["lr"],
        seed,
        train,
        val,
        rt,
        log=lambda line: log(f"train_classifier: {line}") if rt.main else None,
    )
    config = {
        "arch": arch,
        "dataset": dataset,
        "spec": spec,
        "seed": seed,
        "train": {k: v for k, v in tp.items() if k != "threads"},
        "data_hash": files_md5([data_dir / "train.npy", data_dir / "val.npy", data_dir / "manifest.csv"]),
        "world": rt.world,
    }
    plan = TrainingPlan(
        steps=tp["steps"],
        seed=seed,
        period=tp["eval_every"],
        config=config,
        code=CODE,
        folder=ckpt_dir,
        checkpoint_minutes=params["checkpoint_minutes"],
    )
    fitted = fit(task, plan, rt, log=task.log)
    return task, _record(built, task, config, fitted.config_hash, fitted.resumed_from, rt)


def _record(
    built: Built, task: ClassifierTask, config: dict[str, Any], h: str, resumed_from: int | None, rt: Runtime
) -> dict[str, Any]:
    """model_config.json: what was built, on what data, how it trained (no wall-clock time: same run, same bytes).
    steps_run x batch = images_seen; epochs_equivalent = images_seen / n_train."""
    import timm

    tp, ys = task.tp, task.ys
    counts = np.bincount(ys, minlength=2)
    steps_run = task.history[-1]["step"] if task.history else 0
    return {
        **built.info,
        "classes": list(LABELS),
        "positive_class": LABELS[1],
        "dataset": config["dataset"],
        "seed": task.seed,
        "params": {"train": tp, "model": config["spec"]},
        "data_hash": config["data_hash"],
        "config_hash": h,
        "n_train": int(len(ys)),
        "n_val": int(len(task.yv)),
        "train_counts": {c: int(n) for c, n in zip(LABELS, counts)},
        "imbalance": tp["imbalance"],
        "steps": tp["steps"],
        "steps_run": steps_run,
        "batch_size": task.batch,
        "images_seen": steps_run * task.batch,
        "epochs_equivalent": round(steps_run * task.batch / len(ys), 4),
        "best_step": task.best["step"],
        "val_auroc": task.best["auroc"],
        "val_loss": task.best.get("loss"),
        "stopped_early": steps_run < tp["steps"],
        "resumed_after_step": resumed_from,
        "history": task.history,
        "device": str(rt.device),
        "processes": rt.world,
        "precision": "float32" if rt.amp is None else f"{rt.amp} autocast".replace("torch.", ""),
        "weights_dtype": "float32",  # the stored weights' floating tensors; bfloat16 for a non-packaged seed
        "versions": {"torch": torch.__version__, "timm": timm.__version__},
    }


WEIGHTS = "model.safetensors"  # the export package's weights file has this name (for the packaged seed: a link to it)


def _write_seed(folder: Path, task: ClassifierTask, record: dict[str, Any], ckpt_dir: Path) -> None:
    """The selected weights as float32 safetensors (CPU, contiguous), the record and the curves."""
    from safetensors.torch import save_file

    folder.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in task.best_state.items()}, str(folder / WEIGHTS))
    shutil.copytree(ckpt_dir / "live", folder / "live")
    (folder / "model_config.json").write_text(json.dumps(record, indent=2) + "\n")


def _store_bfloat16(folder: Path, record: dict[str, Any]) -> None:
    """Re-save a non-packaged seed's weights (in the cell's temporary folder) with every floating tensor in
    bfloat16, integer buffers (BatchNorm's num_batches_tracked) as they are, and set `weights_dtype` in `record`
    and its model_config.json. Half the bytes of float32; evaluate scores these stored weights."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / WEIGHTS))
    half = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    save_file(half, str(folder / WEIGHTS))
    record["weights_dtype"] = "bfloat16"
    (folder / "model_config.json").write_text(json.dumps(record, indent=2) + "\n")

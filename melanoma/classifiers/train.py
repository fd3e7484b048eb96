"""One training loop for every classifier family, fed from the packed uint8 caches `build_dataset` writes.

The whole pack sits as uint8 on the training device (on a GPU too: the demo pack is a few MB, the study's
~7,000 images at 224 px about 1 GB), and augmentation runs batched on that device: one affine warp per batch
(flip, 90-degree turns, a small rotation/scale/shift) and a colour jitter. Every random number comes from a
generator on the training device seeded by (seed, epoch) and is drawn for the *global* batch, so a resumed run, and a run on N
processes, see exactly the batches and augmentations of an uninterrupted single-process run.

Model selection and early stopping use val AUROC (test is never read here). Checkpoints go to an untracked
folder that survives DVC deleting the stage outputs, so `dvc repro` after a kill resumes at the last epoch.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from melanoma.classifiers import Built, build_model
from melanoma.classifiers.inference import probabilities
from melanoma.data.datasets import DatasetError, load_split
from melanoma.engine import Plan, Runtime, adamw, cosine_schedule, discard, files_md5, fit
from melanoma.evaluation.metrics import MetricError, auroc
from melanoma.io import atomic_dir
from melanoma.params import LABELS, ParamsError

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
    theta = torch.stack([torch.stack([cos * fx, -sin, p["shift"][:, 0]], 1),
                         torch.stack([sin * fx, cos, p["shift"][:, 1]], 1)], 1).to(dev, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])
    sat = p["sat"].to(dev, x.dtype).view(-1, 1, 1, 1)
    x = gray + (x - gray) * sat
    return (x * p["bright"].to(dev, x.dtype).view(-1, 1, 1, 1)).clamp(0, 1)



def _val_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    try:
        return auroc(labels, scores)
    except MetricError:
        raise DatasetError("val has only one class, so AUROC is undefined; the split needs both benign and "
                           "malignant images in val (check split.val_fraction and the data)") from None


def train_step(net: nn.Module, opt: torch.optim.Optimizer, X: torch.Tensor, Y: torch.Tensor, idx: torch.Tensor,
               aug: dict[str, torch.Tensor], class_w: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               rt: Runtime = Runtime()) -> torch.Tensor:
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
CODE = sorted(Path(__file__).parent.glob("*.py")) + [Path(__file__).parents[1] / m
                                                     for m in ("engine.py", "evaluation/metrics.py")]


def epoch_batches(labels: np.ndarray, batch: int, imbalance: str, gen: torch.Generator) -> list[torch.Tensor]:
    """Global batches of indices for one epoch (drop_last: every step has the same global batch)."""
    n = len(labels)
    if imbalance == "balanced_sampling":
        w = torch.tensor(1.0 / np.bincount(labels, minlength=2)[labels], dtype=torch.float64, device=gen.device)
        order = torch.multinomial(w, n, replacement=True, generator=gen)
    else:
        order = torch.randperm(n, generator=gen, device=gen.device)
    return [order[i:i + batch] for i in range(0, n - batch + 1, batch)]


class ClassifierTask:
    """One grid cell as an engine Task: an epoch is a period; validation (val AUROC) ends each epoch.

    Batches and augmentation come from a generator on the training device, seeded by (seed, epoch) and drawn for the global batch,
    so a resumed run and a run on N processes see exactly the draws of an uninterrupted single-process run.
    The best epoch's weights (by val AUROC) are part of the state, so a resumed run keeps them.
    """

    def __init__(self, name: str, built: Built, tp: dict[str, Any], lr: float, train: tuple[np.ndarray, np.ndarray],
                 val: tuple[np.ndarray, np.ndarray], rt: Runtime, log: Callable[[str], None] = print) -> None:
        self.name, self.tp, self.rt, self.lr, self.log = name, tp, rt, lr, log
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
        self.class_w = torch.tensor(len(self.ys) / (2 * np.maximum(counts, 1)) if tp["imbalance"] == "weighted_loss"
                                    else np.ones(2), dtype=torch.float32, device=rt.device)
        self.batch = min(tp["batch_size"], len(self.ys))
        self.steps_per_epoch = len(self.ys) // self.batch
        self.net = self._wrap(self.model)
        self.opt = adamw(self.model, lr, tp["weight_decay"])
        warmup = round(tp["warmup_epochs"] * self.steps_per_epoch)
        self.sched = cosine_schedule(self.opt, tp["epochs"] * self.steps_per_epoch, warmup, tp["lr_floor"])
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"auroc": -1.0, "epoch": -1}
        self.best_state: dict[str, torch.Tensor] = {}

    def _wrap(self, model: nn.Module) -> nn.Module:
        net = model
        if self.rt.world > 1:
            cuda = self.rt.device.type == "cuda"
            net = nn.parallel.DistributedDataParallel(model, device_ids=[self.rt.device.index] if cuda else None)
        return torch.compile(net) if self.tp["compile"] else net

    @property
    def stop(self) -> bool:
        """Early stopping: `patience` epochs without a better val AUROC."""
        return bool(self.history) and self.history[-1]["epoch"] - self.best["epoch"] >= self.tp["patience"]

    def step(self, step: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(step, self.steps_per_epoch)
        if i == 0:
            self.gen = self.rt.generator(self.tp["seed"] * 100_003 + epoch)
            self.batches = epoch_batches(self.ys, self.batch, self.tp["imbalance"], self.gen)
        self.net.train()  # validation (end_period) leaves the model in eval mode
        self.sched.step_update(step)
        aug = augment_params(self.batch, self.tp["augment"], self.gen)
        loss = train_step(self.net, self.opt, self.X, self.Y, self.batches[i], aug, self.class_w, self.mean,
                          self.std, self.rt)
        return {"train_loss": loss}

    def end_period(self, step: int, means: dict[str, float]) -> dict[str, float]:
        """Validate on val: AUROC and loss; keep the best epoch's weights."""
        pv = probabilities(self.model, self.XV, self.mean, self.std, self.tp["eval_batch_size"], self.rt)
        val_auroc = _val_auroc(self.yv, pv.numpy())
        val_loss = float(F.binary_cross_entropy(pv.clamp(1e-7, 1 - 1e-7), torch.from_numpy(self.yv).float()))
        epoch = (step + 1) // self.steps_per_epoch
        row = {"epoch": epoch, "train_loss": means["train_loss"], "val_loss": val_loss, "val_auroc": val_auroc,
               "lr": self.opt.param_groups[0]["lr"]}
        self.history.append(row)
        improved = val_auroc > self.best["auroc"]
        if improved:
            self.best = {"auroc": val_auroc, "loss": val_loss, "epoch": epoch}
            self.best_state = copy.deepcopy(self.model.state_dict())
        self.log(f"{self.name} epoch {epoch}/{self.tp['epochs']}: loss {means['train_loss']:.4f} val loss "
                 f"{val_loss:.4f} val AUROC {val_auroc:.4f}" + (" *" if improved else ""))
        return {k: row[k] for k in ("val_loss", "val_auroc", "lr")}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(), "history": self.history,
                "best": self.best, "best_model": self.best_state}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.model.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        self.history, self.best, self.best_state = list(s["history"]), dict(s["best"]), s["best_model"]


def _load_data(data_dir: Path, dataset: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    try:
        return load_split(data_dir, "train"), load_split(data_dir, "val")
    except OSError as e:
        raise DatasetError(f"cannot read dataset {data_dir}: {e}; run `dvc repro build_dataset@{dataset}`") from None


def _threads(tp: dict[str, Any], rt: Runtime) -> None:
    if tp["threads"]:
        torch.set_num_threads(tp["threads"])
    elif rt.world > 1 and rt.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // rt.world))


def train_classifier(arch: str, dataset: str, params: dict[str, Any], data_dir: Path, out: Path, ckpt_dir: Path,
                     rt: Runtime = Runtime(), log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train one grid cell and write model.safetensors (the best epoch on val AUROC), model_config.json and live/
    to `out`, then delete its checkpoints (a killed run resumes from them; a finished one does not need them).

    Raises DatasetError (unreadable pack, one-class val), ParamsError (batch not divisible by processes),
    Diverged (NaN/Inf loss; nothing of that epoch is saved), CheckpointError, PretrainedUnavailable.
    """
    t0 = time.perf_counter()
    tp, spec = params["classifiers"]["train"], params["classifiers"]["models"][arch]
    train, val = _load_data(data_dir, dataset)
    _threads(tp, rt)
    if min(tp["batch_size"], len(train[1])) % rt.world:
        raise ParamsError(f"classifiers.train.batch_size ({min(tp['batch_size'], len(train[1]))}) must be divisible "
                          f"by classifiers.train.processes ({rt.world}): every process takes an equal share of each "
                          "global batch")
    torch.manual_seed(tp["seed"])  # the same initial weights on every rank and every rerun
    built = build_model(arch, spec, len(LABELS), train[0].shape[1])
    task = ClassifierTask(f"{arch}_{dataset}", built, tp, spec["lr"], train, val, rt,
                          log=lambda line: log(f"train_classifier: {line}") if rt.main else None)
    config = {"arch": arch, "dataset": dataset, "spec": spec, "train": {k: v for k, v in tp.items() if k != "threads"},
              "data_hash": files_md5([data_dir / "train.npy", data_dir / "val.npy", data_dir / "manifest.csv"]),
              "world": rt.world}
    spe = task.steps_per_epoch
    plan = Plan(steps=tp["epochs"] * spe, seed=tp["seed"], period=spe, config=config, code=CODE, folder=ckpt_dir,
                checkpoint_every=spe, unit="epoch")
    fitted = fit(task, plan, rt, log=task.log)
    record = _record(built, task, config, fitted.config_hash, fitted.resumed_from, rt)
    if rt.main:
        _write_cell(out, task, record, ckpt_dir)
        discard(ckpt_dir)
    return {**record, "seconds_this_run": round(time.perf_counter() - t0, 1)}


def _record(built: Built, task: ClassifierTask, config: dict[str, Any], h: str, resumed_from: int | None,
            rt: Runtime) -> dict[str, Any]:
    """model_config.json: what was built, on what data, how it trained (no wall-clock time: same run, same bytes)."""
    import timm

    tp, ys = task.tp, task.ys
    counts = np.bincount(ys, minlength=2)
    return {**built.info, "classes": list(LABELS), "positive_class": LABELS[1], "dataset": config["dataset"],
            "seed": tp["seed"], "params": {"train": tp, "model": config["spec"]}, "data_hash": config["data_hash"],
            "config_hash": h, "n_train": int(len(ys)), "n_val": int(len(task.yv)),
            "train_counts": {c: int(n) for c, n in zip(LABELS, counts)},
            "best_epoch": task.best["epoch"], "val_auroc": task.best["auroc"], "val_loss": task.best.get("loss"),
            "epochs_run": len(task.history), "stopped_early": len(task.history) < tp["epochs"],
            "resumed_after_epoch": None if resumed_from is None else resumed_from // task.steps_per_epoch,
            "history": task.history, "device": str(rt.device), "processes": rt.world,
            "precision": "float32" if rt.amp is None else f"{rt.amp} autocast".replace("torch.", ""),
            "versions": {"torch": torch.__version__, "timm": timm.__version__}}


WEIGHTS = "model.safetensors"  # the export package's weights file has this name and, for the same cell, these bytes


def _write_cell(out: Path, task: ClassifierTask, record: dict[str, Any], ckpt_dir: Path) -> None:
    """The selected weights as safetensors (CPU, contiguous: byte-identical to the package `export` writes, so
    the DVC cache stores them once), the record and the curves."""
    from safetensors.torch import save_file

    with atomic_dir(out) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in task.best_state.items()}, str(tmp / WEIGHTS))
        shutil.copytree(ckpt_dir / "live", tmp / "live")
        (tmp / "model_config.json").write_text(json.dumps(record, indent=2) + "\n")

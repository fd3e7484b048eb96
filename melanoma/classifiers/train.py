"""One training loop for every classifier family, fed from the packed uint8 caches `build_dataset` writes.

The whole pack sits as uint8 on the training device (on a GPU too: the demo pack is a few MB, the study's
~7,000 images at 224 px about 1 GB), and augmentation runs batched on that device: one affine warp per batch
(flip, 90-degree turns, a small rotation/scale/shift) and a colour jitter. Every random number comes from a
CPU generator seeded by (seed, epoch) and is drawn for the *global* batch, so a resumed run, and a run on N
processes, see exactly the batches and augmentations of an uninterrupted single-process run.

Model selection and early stopping use val AUROC (test is never read here). Checkpoints go to an untracked
folder that survives DVC deleting the stage outputs, so `dvc repro` after a kill resumes at the last epoch.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from melanoma.classifiers import build_model
from melanoma.datasets import DatasetError, load_split
from melanoma.io import atomic_dir
from melanoma.metrics import MetricError, auroc
from melanoma.params import LABELS, ParamsError
from melanoma.training import config_hash, cosine_with_floor, files_md5, load_checkpoint, save_checkpoint


class ClassifierDiverged(RuntimeError):
    """The training loss became NaN/Inf; the message says what to change."""


# ---------------------------------------------------------------- distributed context

@dataclass(frozen=True)
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 when run plainly)."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_dist() -> Dist:
    """Join the torchrun process group when launched by torchrun (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if world == 1:
        return Dist(0, 1, device)
    import torch.distributed as dist

    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(dist.get_rank(), world, device)


def _barrier(d: Dist) -> None:
    if d.world > 1:
        import torch.distributed as dist

        dist.barrier()


def _gather(d: Dist, x: torch.Tensor) -> list[torch.Tensor]:
    if d.world == 1:
        return [x]
    import torch.distributed as dist

    parts = [None] * d.world
    dist.all_gather_object(parts, x.cpu())
    return parts


# ---------------------------------------------------------------- augmentation

def augment_params(n: int, cfg: dict[str, Any], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-image augmentation draws for a batch of n (always the same draws, in the same order, for a seed)."""
    u = torch.rand(n, 8, generator=gen)
    return {
        "flip": (u[:, 0] < 0.5) if cfg["hflip"] else torch.zeros(n, dtype=torch.bool),
        "quarter": torch.floor(u[:, 1] * 4) if cfg["rot90"] else torch.zeros(n),
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


def normalise(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float() / 255 - mean) / std


# ---------------------------------------------------------------- metrics

def _val_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    try:
        return auroc(labels, scores)
    except MetricError:
        raise DatasetError("val has only one class, so AUROC is undefined; the split needs both benign and "
                           "malignant images in val (check split.val_fraction and the data)") from None


@torch.no_grad()
def probabilities(model: nn.Module, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, batch: int,
                  d: Dist = Dist(), amp: bool = False) -> torch.Tensor:
    """P(malignant) for uint8 (N, 3, H, W) images on the model's device; sharded over ranks, gathered on all."""
    model.eval()
    idx = torch.arange(d.rank, images.shape[0], d.world)
    out = []
    for i in range(0, len(idx), batch):
        xb = normalise(images[idx[i:i + batch].to(images.device)], mean, std)
        with torch.autocast("cuda", torch.bfloat16, enabled=amp):
            out.append(torch.softmax(model(xb).float(), 1)[:, 1])
    mine = torch.cat(out) if out else torch.empty(0, device=images.device)
    probs = torch.empty(images.shape[0])
    for r, part in enumerate(_gather(d, mine)):
        probs[torch.arange(r, images.shape[0], d.world)] = part.cpu()
    return probs


# ---------------------------------------------------------------- the loop

def train_step(net: nn.Module, opt: torch.optim.Optimizer, X: torch.Tensor, Y: torch.Tensor, idx: torch.Tensor,
               aug: dict[str, torch.Tensor], class_w: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
               d: Dist = Dist(), amp: bool = False) -> torch.Tensor:
    """One optimisation step on this rank's share of the global batch `idx` of the device-resident uint8 pack X.

    The loss is this rank's weighted sum over the *global* batch's weight sum, times the world size: DDP's mean
    of the gradients then equals the single-process weighted mean over the whole global batch.
    """
    local = len(idx) // d.world
    mine = slice(d.rank * local, (d.rank + 1) * local)
    idx_local = idx[mine].to(X.device)
    xb = (augment(X[idx_local].float() / 255, {k: v[mine] for k, v in aug.items()}) - mean) / std
    if X.device.type == "cuda":
        xb = xb.contiguous(memory_format=torch.channels_last)
    yb = Y[idx_local]
    with torch.autocast("cuda", torch.bfloat16, enabled=amp):
        logits = net(xb)
    loss = (class_w[yb] * F.cross_entropy(logits.float(), yb, reduction="none")).sum()
    loss = loss / class_w[Y[idx.to(X.device)]].sum() * d.world
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()  # not .item(): a host sync per step would stall a GPU; the loop checks once per epoch



# the code that shapes a trained model: a checkpoint made by other code is not resumed (DVC reruns the stage when
# this code changes; resuming a checkpoint of the old code would silently keep the old result)
CODE = sorted(Path(__file__).parent.glob("*.py")) + [Path(__file__).parents[1] / m for m in ("training.py", "metrics.py")]


def _epoch_gen(seed: int, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def epoch_batches(labels: np.ndarray, batch: int, imbalance: str, gen: torch.Generator) -> list[torch.Tensor]:
    """Global batches of indices for one epoch (drop_last: every step has the same global batch)."""
    n = len(labels)
    if imbalance == "balanced_sampling":
        w = torch.tensor(1.0 / np.bincount(labels, minlength=2)[labels], dtype=torch.float64)
        order = torch.multinomial(w, n, replacement=True, generator=gen)
    else:
        order = torch.randperm(n, generator=gen)
    return [order[i:i + batch] for i in range(0, n - batch + 1, batch)]


def train_classifier(arch: str, dataset: str, params: dict[str, Any], data_dir: Path, out: Path, ckpt_dir: Path,
                     d: Dist = Dist(), log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train one grid cell and write model_best.pth, model_final.pth, model_config.json and live/ to `out`."""
    t0 = time.perf_counter()
    tp, spec = params["classifiers"]["train"], params["classifiers"]["models"][arch]
    try:
        xs, ys = load_split(data_dir, "train")
        xv, yv = load_split(data_dir, "val")
    except OSError as e:
        raise DatasetError(f"cannot read dataset {data_dir}: {e}; run `dvc repro build_dataset@{dataset}`") from None
    if tp["threads"]:
        torch.set_num_threads(tp["threads"])
    elif d.world > 1 and d.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // d.world))
    batch = min(tp["batch_size"], len(ys))
    if batch % d.world:
        raise ParamsError(f"classifiers.train.batch_size ({batch}) must be divisible by classifiers.train.processes "
                         f"({d.world}): every process takes an equal share of each global batch")
    size = xs.shape[1]
    torch.manual_seed(tp["seed"])  # the same initial weights on every rank and every rerun
    built = build_model(arch, spec, len(LABELS), size)
    model = built.model.to(d.device)
    cuda = d.device.type == "cuda"
    amp = cuda and tp["bf16"]
    if cuda:
        model = model.to(memory_format=torch.channels_last)
        if d.world > 1:  # batch statistics over the global batch, as in a single-process run
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    norm = built.info["normalisation"]
    mean = torch.tensor(norm["mean"], device=d.device).view(1, 3, 1, 1)
    std = torch.tensor(norm["std"], device=d.device).view(1, 3, 1, 1)
    # the whole pack on the device, uint8, channels first
    X = torch.from_numpy(xs).permute(0, 3, 1, 2).contiguous().to(d.device)
    XV = torch.from_numpy(xv).permute(0, 3, 1, 2).contiguous().to(d.device)
    Y = torch.from_numpy(ys).to(d.device)
    counts = np.bincount(ys, minlength=2)
    class_w = torch.tensor(len(ys) / (2 * np.maximum(counts, 1)) if tp["imbalance"] == "weighted_loss"
                           else np.ones(2), dtype=torch.float32, device=d.device)

    config = {"arch": arch, "dataset": dataset, "spec": spec, "train": {k: v for k, v in tp.items() if k != "threads"},
              "data_hash": files_md5([data_dir / "train.npy", data_dir / "val.npy", data_dir / "manifest.csv"]),
              "code_hash": files_md5(CODE), "world": d.world}
    h = config_hash(config)
    net: nn.Module = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[d.device.index] if cuda else None)
    if tp["compile"]:
        net = torch.compile(net)
    lr = spec["lr"]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim <= 1 or name.endswith(("pos_embed", "cls_token")) else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tp["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = len(ys) // batch
    total = tp["epochs"] * steps_per_epoch
    warmup = round(tp["warmup_epochs"] * steps_per_epoch)

    start, history, best, resumed = 0, [], {"auroc": -1.0, "epoch": -1}, None
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(ckpt_dir.glob("checkpoint_epoch_*.pth"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    if found:
        state = load_checkpoint(found[-1])
        if state.get("config_hash") == h:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start, history, best = int(state["epoch"]), list(state["history"]), dict(state["best"])
            resumed = start
            log(f"train_classifier: {arch}_{dataset}: resuming from checkpoint {found[-1]} after epoch {start}")
        else:
            log(f"train_classifier: {arch}_{dataset}: checkpoints in {ckpt_dir} are for another config; starting over")
    _barrier(d)  # every rank has read the checkpoint before rank 0 may clear the folder
    if resumed is None and d.main:
        shutil.rmtree(ckpt_dir)
        ckpt_dir.mkdir(parents=True)

    live = None
    if d.main:
        from dvclive import Live

        live = Live(str(ckpt_dir / "live"), dvcyaml=False, save_dvc_exp=False, resume=resumed is not None,
                    report=None)
    stale = history[-1]["epoch"] - best["epoch"] if history else 0  # epochs since val AUROC last improved
    epoch = start
    for epoch in range(start, tp["epochs"]):
        if stale >= tp["patience"]:
            break
        gen = _epoch_gen(tp["seed"], epoch)
        torch.manual_seed(tp["seed"] * 100_003 + epoch)  # dropout / drop-path
        net.train()
        loss_sum, seen = torch.zeros((), device=d.device), 0
        for i, idx in enumerate(epoch_batches(ys, batch, tp["imbalance"], gen)):
            step = epoch * steps_per_epoch + i
            for g in opt.param_groups:
                g["lr"] = lr * cosine_with_floor(step, total, warmup, tp["lr_floor"])
            p = augment_params(batch, tp["augment"], gen)
            loss = train_step(net, opt, X, Y, idx, p, class_w, mean, std, d, amp)
            loss_sum += loss / d.world * len(idx)
            seen += len(idx)
        train_loss = loss_sum.cpu()
        if d.world > 1:
            import torch.distributed as dist

            dist.all_reduce(train_loss)
        if not torch.isfinite(train_loss):  # checked before anything of this epoch is saved
            raise ClassifierDiverged(f"{arch}_{dataset}: the training loss became {train_loss.item()} in epoch "
                                     f"{epoch + 1}; lower classifiers.models.{arch}.lr (now {lr}) or change the seed")
        pv = probabilities(model, XV, mean, std, tp["eval_batch_size"], d, amp)
        val_auroc = _val_auroc(yv, pv.numpy())
        val_loss = float(F.binary_cross_entropy(pv.clamp(1e-7, 1 - 1e-7), torch.from_numpy(yv).float()))
        row = {"epoch": epoch + 1, "train_loss": float(train_loss) / max(seen, 1), "val_loss": val_loss,
               "val_auroc": val_auroc, "lr": opt.param_groups[0]["lr"]}
        history.append(row)
        improved = val_auroc > best["auroc"]
        if improved:
            best = {"auroc": val_auroc, "loss": val_loss, "epoch": epoch + 1}
            stale = 0
        else:
            stale += 1
        if d.main:
            if improved:
                save_checkpoint(ckpt_dir / "best.pth", model.state_dict())
            save_checkpoint(ckpt_dir / f"checkpoint_epoch_{epoch + 1}.pth",
                            {"config_hash": h, "epoch": epoch + 1, "model": model.state_dict(),
                             "optimizer": opt.state_dict(), "history": history, "best": best})
            for old in sorted(ckpt_dir.glob("checkpoint_epoch_*.pth"),
                              key=lambda p: int(p.stem.rsplit("_", 1)[1]))[:-tp["keep_checkpoints"]]:
                old.unlink()
            live.step = epoch + 1
            for k in ("train_loss", "val_loss", "val_auroc", "lr"):
                live.log_metric(k, row[k])
            live.next_step()
            log(f"train_classifier: {arch}_{dataset} epoch {epoch + 1}/{tp['epochs']}: loss {row['train_loss']:.4f} "
                f"val loss {val_loss:.4f} val AUROC {val_auroc:.4f}" + (" *" if improved else ""))
    _barrier(d)
    result = {**built.info, "classes": list(LABELS), "positive_class": LABELS[1], "dataset": dataset,
              "seed": tp["seed"], "params": {"train": tp, "model": spec}, "data_hash": config["data_hash"],
              "config_hash": h, "n_train": int(len(ys)), "n_val": int(len(yv)),
              "train_counts": {c: int(n) for c, n in zip(LABELS, counts)},
              "best_epoch": best["epoch"], "val_auroc": best["auroc"], "val_loss": best.get("loss"),
              "epochs_run": len(history), "stopped_early": len(history) < tp["epochs"],
              "resumed_after_epoch": resumed, "history": history, "device": str(d.device), "processes": d.world,
              "versions": {"torch": torch.__version__}}  # no wall-clock time: the same run gives the same bytes
    if d.main:
        import timm

        result["versions"]["timm"] = timm.__version__
        live.end()
        with atomic_dir(out) as tmp:
            shutil.copy2(ckpt_dir / "best.pth", tmp / "model_best.pth")
            torch.save(model.state_dict(), tmp / "model_final.pth")
            shutil.copytree(ckpt_dir / "live", tmp / "live")
            (tmp / "model_config.json").write_text(json.dumps(result, indent=2) + "\n")
    return {**result, "seconds_this_run": round(time.perf_counter() - t0, 1)}


def load_classifier(folder: Path, which: str = "best") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained cell from its model_config.json and load model_<which>.pth with strict=True."""
    from melanoma.classifiers import load_strict

    cfg = json.loads((folder / "model_config.json").read_text())
    spec = {"model": cfg["model"], "pretrained": False, "kwargs": cfg["kwargs"], "lr": 0.0}
    built = build_model(cfg["arch"], spec, cfg["num_classes"], cfg["input_size"])
    path = folder / f"model_{which}.pth"
    load_strict(built.model, load_checkpoint(path), str(path))
    return built.model.eval(), cfg

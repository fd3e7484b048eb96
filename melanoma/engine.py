"""The one training engine under every loop that trains something: classifier cells, DCGAN, DDPM, the SR
upscaler and the C2ST critic.

A model family is a `Task`: it owns its networks, optimisers, EMA copy and random generators, and takes one
step. `fit` owns everything around the step, the same way for every family:

- device and precision, chosen once (`Runtime`) from params.yaml's `device` (cuda: refused without a usable GPU;
  cpu; auto: CUDA when available, else the CPU), NCCL under torchrun;
  bf16 autocast where the device supports it; channels_last for conv nets on CUDA;
- per-step scalars stay on the device and are summed there; the host reads them once per `period` steps
  (a validation interval for classifiers), checks them for NaN/Inf and logs their means with dvclive, so a GPU never
  waits on a per-step `.item()`;
- the global torch RNG is reseeded at the start of every period from (seed, period), so dropout and drop-path
  draw the same numbers in an uninterrupted and in a resumed run;
- resumable checkpoints: `checkpoint_step_<n>.pth`, taken by wall time (the first period end at least
  `checkpoint_minutes` after the previous one, and after the last step), written atomically on a background
  thread from a CPU copy of the state so the loop goes on while the file is written, the last `keep` kept, each
  carrying the hash of the run's config and of the code that shapes the result. A rerun resumes from the newest
  one whose hash matches and starts over (with a log line) when it does not;
- where the time goes: `fit` logs, and returns in `Fitted.timing`, the run's wall time and the share of it spent
  outside training steps (validation and logging, checkpoint copies and waits, resuming).

Library pieces rather than hand-written ones: timm's `CosineLRScheduler` (warmup + cosine to a floor),
`create_optimizer_v2` (weight-decay groups that skip norms, biases and each model's `no_weight_decay()`),
and `ModelEmaV3` (foreach EMA of the weights, buffers copied).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from melanoma.device import DEVICES, DeviceUnavailable, require_device
from melanoma.errors import MelanomaError, first_line
from melanoma.io import owner_lock, staged_files


class CheckpointError(MelanomaError):
    """A checkpoint cannot be read or written; the message names the file and what to do."""


class Diverged(MelanomaError):
    """Training produced NaN/Inf (or a task's own divergence test failed); the message says what to change."""


# ---------------------------------------------------------------- device and precision


@dataclass(frozen=True)
class Runtime:
    """Where and how a process trains: its device, its rank in a torchrun job, and the autocast dtype.

    `amp` is the autocast dtype (torch.bfloat16) or None for float32. Tests build
    `Runtime(amp=torch.bfloat16)` on the CPU to exercise the bf16 code path that CUDA would take.
    """

    device: torch.device = torch.device("cpu")
    rank: int = 0
    world: int = 1
    amp: torch.dtype | None = None

    @property
    def main(self) -> bool:
        """True on the process that writes outputs and logs (rank 0)."""
        return self.rank == 0

    def autocast(self) -> AbstractContextManager[Any]:
        """`torch.autocast` on this device with `amp`, or a no-op context when training in float32."""
        if self.amp is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp)

    def prepare(self, model: nn.Module, conv: bool = True) -> nn.Module:
        """Move a model to the device; conv nets go channels_last on CUDA (faster cuDNN kernels)."""
        model = model.to(self.device)
        if conv and self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        return model

    def generator(self, seed: int) -> torch.Generator:
        """A random generator on this device, seeded: draws land where they are used, so a training step never
        copies random numbers from the host (a host-to-device copy from pageable memory waits for the GPU).
        On the CPU this is the plain CPU generator, so CPU runs draw exactly what they always drew."""
        return torch.Generator(device=self.device).manual_seed(seed)

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.world > 1:
            torch.distributed.barrier()

    def gather(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `x`, on the CPU, in rank order (all ranks get the list)."""
        if self.world == 1:
            return [x]
        parts: list[Any] = [None] * self.world
        torch.distributed.all_gather_object(parts, x.cpu())
        return parts


def runtime(bf16: bool = True, device: str = "auto") -> Runtime:
    """The Runtime of this process: the one place a device is chosen. `device` is params.yaml's: "cuda" (refused
    with DeviceUnavailable when CUDA is not usable), "cpu" (the CPU even where a GPU is present), "auto" (CUDA when
    present, else the CPU). Under torchrun on CUDA each process takes the LOCAL_RANK-th GPU and joins the NCCL
    group (gloo on the CPU). Every stage builds it once and passes it down; nothing below picks a device.

    bf16 autocast is used only on CUDA devices that support it (Ampere and newer) and when `bf16` is true;
    on the CPU training stays float32, which is faster there and keeps CPU results exact.
    """
    if device not in DEVICES:
        raise DeviceUnavailable(f"device {device!r} is not one of {', '.join(DEVICES)}")
    require_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = device != "cpu" and torch.cuda.is_available()
    device_ = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}") if cuda else torch.device("cpu")
    amp = torch.bfloat16 if cuda and bf16 and torch.cuda.is_bf16_supported() else None
    if world == 1:
        return Runtime(device_, 0, 1, amp)
    if cuda:
        torch.cuda.set_device(device_)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if cuda else "gloo")
    return Runtime(device_, torch.distributed.get_rank(), world, amp)


# ---------------------------------------------------------------- library pieces, configured once


def cosine_schedule(opt: torch.optim.Optimizer, total: int, warmup: int, floor: float) -> Any:
    """timm's CosineLRScheduler over optimiser *steps*: linear warmup from lr/warmup to each group's lr over
    `warmup` steps, then cosine down to `floor` x lr (never to zero, so late steps still learn).
    Call `.step_update(step)` before each optimiser step."""
    from timm.scheduler import CosineLRScheduler

    lr = opt.param_groups[0]["lr"]
    return CosineLRScheduler(
        opt,
        t_initial=max(1, total - warmup),
        lr_min=lr * floor,
        warmup_t=warmup,
        warmup_lr_init=lr / max(1, warmup),
        warmup_prefix=True,
        t_in_epochs=False,
    )


def adamw(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with timm's weight-decay groups: no decay on norms, biases and `model.no_weight_decay()`."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, "adamw", lr=lr, weight_decay=weight_decay, foreach=True)


def ema(model: nn.Module, decay: float) -> nn.Module:
    """timm's ModelEmaV3: `.update(model)` lerps the weights by 1 - decay and copies buffers (BatchNorm
    statistics); the averaged network is `.module`."""
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=decay, exclude_buffers=True)


# ---------------------------------------------------------------- hashes and checkpoint files


def config_hash(config: dict[str, Any]) -> str:
    """16 hex chars of sha256 over the JSON of `config` (keys sorted)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def files_md5(paths: list[Path]) -> str:
    """One md5 over the bytes of several files, read in chunks (a dataset pack can be a gigabyte)."""
    h = hashlib.md5()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temp name and rename: a kill or a full disk mid-write leaves the previous checkpoint intact.

    Raises CheckpointError (naming `path`) when the file cannot be written.
    """
    try:
        with staged_files() as staged:
            torch.save(payload, staged.path(path))
    except (OSError, RuntimeError) as e:  # torch.save's writer reports open/write failures as RuntimeError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
        raise CheckpointError(
            f"cannot write checkpoint {path}: {reason}; the previous one is kept. "
            "Free disk space or fix permissions, then rerun to resume"
        ) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """torch.load with weights_only=True onto the CPU; CheckpointError (naming `path`) if that fails."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file (UnpicklingError, RuntimeError, EOFError)
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a weights-only checkpoint "
            f"({type(e).__name__}); delete it to start over"
        ) from None


# ---------------------------------------------------------------- the loop


class Task(Protocol):
    """One model family's training step and state. `step` returns 0-dim tensors on the device (not synced).

    Optional hooks: `end_period(step, means) -> dict | None` runs after every period (validation, a
    family's own divergence test; may raise Diverged); a `stop` attribute that turns true ends training early
    (early stopping); `advice` is the sentence a divergence message ends with.
    """

    name: str

    def step(self, step: int) -> dict[str, torch.Tensor]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainingPlan:
    """How long to train and where checkpoints go.

    steps: optimiser steps in all; period: steps between host reads of the scalars (logging, NaN check,
    end_period); folder: the checkpoint folder (None: no checkpoints, no dvclive log); checkpoint_minutes: wall
    time between checkpoints (None: none; 0: every period end), taken at the first period end at least that long
    after the previous one and after the last step, so that validating often never means writing often;
    checkpoints and log rows are numbered by completed steps; keep: checkpoints kept (the newest; one is enough
    to resume, and each is the size of the model and its optimiser state).
    """

    steps: int
    seed: int
    period: int
    config: dict[str, Any] = field(default_factory=dict)
    code: list[Path] = field(default_factory=list)
    folder: Path | None = None
    checkpoint_minutes: float | None = None
    keep: int = 1


@dataclass
class Fitted:
    """What `fit` reports: the step it resumed from (None: fresh), the last period's means, the config hash, and
    where the wall time went (`Timing`)."""

    resumed_from: int | None
    last: dict[str, float]
    config_hash: str
    timing: Timing = field(default_factory=lambda: Timing())


@dataclass
class Timing:
    """Seconds of one `fit`, by what the process was doing. `steps` is the rest of the wall time: the training
    steps, including the once-per-period wait for the device to finish them. `checkpoints` is what the loop
    waited for (the CPU copy of the state, a previous write still running, the last write at the end), not the
    write itself, which runs beside the steps."""

    wall: float = 0.0
    resume: float = 0.0
    periods: float = 0.0
    checkpoints: float = 0.0
    written: int = 0
    steps_run: int = 0  # the steps this run took (a resumed run: those after the checkpoint)

    @property
    def steps(self) -> float:
        """Seconds inside training steps."""
        return max(0.0, self.wall - self.resume - self.periods - self.checkpoints)

    @property
    def outside_share(self) -> float:
        """Fraction (0-1) of the wall time spent outside training steps."""
        return 1.0 - self.steps / self.wall if self.wall > 0 else 0.0

    def line(self, name: str) -> str:
        """One log line: the wall time, the share inside steps, and what the rest was."""
        return (
            f"{name}: {self.wall:.1f} s for {self.steps_run} steps, {1 - self.outside_share:.1%} in training steps; "
            "outside them: "
            f"validation and logging {self.periods:.1f} s, checkpoints {self.checkpoints:.1f} s "
            f"({self.written} written), resume {self.resume:.1f} s"
        )


CHECKPOINT_NAME = re.compile(r"checkpoint_step_(\d+)\.pth")
PARTIAL_NAME = re.compile(r"\.checkpoint_step_\d+\.pth\.tmp")  # io.Staged's temp name: a write that was killed
STATE_KEYS = {"config_hash", "step", "last", "task"}


def _partials(folder: Path) -> list[Path]:
    """Temp files of checkpoint writes that a kill interrupted (each write has its own name, so nothing else
    would replace them); called only while this process holds the folder's lock, so no write of ours is running."""
    return [p for p in folder.iterdir() if PARTIAL_NAME.fullmatch(p.name) and p.is_file() and not p.is_symlink()]


def _checkpoints(folder: Path) -> list[Path]:
    """The engine's checkpoint files in `folder`, oldest first; any other file (a copy named `... (1).pth`, the
    user's notes) is neither read nor deleted."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def _versions() -> dict[str, str]:
    """Library versions that shape a result: a checkpoint made under others is not resumed."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    for name in ("timm", "diffusers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def _folder_error(folder: Path, e: OSError) -> CheckpointError:
    return CheckpointError(
        f"cannot use checkpoint folder {folder}: {e.strerror or e}; it must be a writable "
        "folder (fix its permissions or remove what is in its way), then rerun"
    )


def _open_folder(folder: Path) -> list[Path]:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return _checkpoints(folder)
    except OSError as e:
        raise _folder_error(folder, e) from None


def discard(folder: Path) -> None:
    """After a successful run, once its outputs are written: remove this engine's checkpoints and training log
    from `folder`, and the folder itself when nothing else is left in it (a user's own files stay)."""
    if not folder.is_dir():
        return
    _clear(folder)
    try:
        if not any(folder.iterdir()):  # files the engine did not write stay, and so does their folder
            folder.rmdir()
    except OSError as e:
        raise _folder_error(folder, e) from None


def _clear(folder: Path) -> None:
    """Remove this engine's checkpoints, partial checkpoint files and training log from `folder`, nothing else."""
    try:
        for f in _checkpoints(folder) + _partials(folder):
            f.unlink()
        if (folder / "live").is_dir():
            shutil.rmtree(folder / "live")
    except OSError as e:
        raise _folder_error(folder, e) from None


def _restore(task: Task, path: Path, state: Any) -> tuple[int, dict[str, float]]:
    """Load a checkpoint whose config hash matched into `task`; CheckpointError when it does not fit."""
    if not STATE_KEYS <= set(state):
        raise CheckpointError(
            f"checkpoint {path} lacks {', '.join(sorted(STATE_KEYS - set(state)))}: it was not "
            "written by this engine; delete it to start over"
        )
    try:
        task.load_state_dict(state["task"])
        return int(state["step"]), dict(state["last"])
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {path} does not fit the {task.name} being trained "
            f"({type(e).__name__}: {first_line(e)}); delete it to start over"
        ) from None


def _truncate_log(live: Path, count: int) -> None:
    """Drop dvclive rows logged after the checkpoint being resumed (a kill between a log and a checkpoint
    would otherwise repeat them in the curves)."""
    for tsv in live.glob("plots/metrics/**/*.tsv"):
        lines = tsv.read_text().splitlines()
        step = lines[0].split("\t").index("step") if lines else 0
        kept = lines[:1] + [ln for ln in lines[1:] if int(float(ln.split("\t")[step])) <= count]
        tsv.write_text("\n".join(kept) + "\n")


def _resume(
    task: Task, plan: TrainingPlan, h: str, rt: Runtime, log: Callable[[str], None]
) -> tuple[int | None, dict[str, float]]:
    """Load the newest matching checkpoint into `task`; (its step, its last means), or (None, {}) when fresh."""
    assert plan.folder is not None
    found = _open_folder(plan.folder)
    start, last = None, {}
    if found:
        state = load_checkpoint(found[-1])
        if not isinstance(state, dict):
            raise CheckpointError(
                f"checkpoint {found[-1]} holds a {type(state).__name__}, not a training "
                "checkpoint; delete it to start over"
            )
        if state.get("config_hash") == h:
            start, last = _restore(task, found[-1], state)
            log(f"{task.name}: resuming from checkpoint {found[-1]} after step {start}")
        else:
            log(f"{task.name}: checkpoints in {plan.folder} are for another config; starting over")
    rt.barrier()  # every rank has read the checkpoint before rank 0 may clear the folder
    if rt.main:
        if start is None:
            _clear(plan.folder)
        else:
            for f in _partials(plan.folder):
                f.unlink()
            if (plan.folder / "live").is_dir():
                _truncate_log(plan.folder / "live", start)
    return start, last


def cpu_copy(obj: Any) -> Any:
    """A deep copy of a (nested) state dict whose tensors are new CPU tensors: what a background writer may
    serialise while the loop goes on changing the live weights, optimiser moments and history."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return copy.deepcopy(obj)


class CheckpointWriter:
    """Writes checkpoints on one background thread, one at a time: `submit` waits for the previous write (rarely:
    writes are minutes apart), then starts the next and returns. A failed write is raised (CheckpointError) by the
    next `submit` or by `wait`, which the loop calls at its end, so no failure goes unreported."""

    def __init__(self, folder: Path, keep: int) -> None:
        self.folder, self.keep = folder, keep
        self.thread: threading.Thread | None = None
        self.error: CheckpointError | None = None

    def submit(self, path: Path, payload: dict[str, Any]) -> None:
        """Write `payload` (already a CPU copy) to `path` in the background, then drop all but the newest `keep`."""
        self.wait()
        self.thread = threading.Thread(target=self._write, args=(path, payload), name=f"checkpoint {path.name}")
        self.thread.start()

    def _write(self, path: Path, payload: dict[str, Any]) -> None:
        try:
            save_checkpoint(path, payload)
            for old in _checkpoints(self.folder)[: -self.keep]:
                old.unlink()
        except CheckpointError as e:
            self.error = e
        except OSError as e:
            self.error = _folder_error(self.folder, e)

    def wait(self) -> None:
        """Block until the running write is done; raise its error, if any."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.error is not None:
            error, self.error = self.error, None
            raise error


def _read(sums: dict[str, torch.Tensor], n: int, rt: Runtime) -> dict[str, float]:
    """Means over the period's steps (and over ranks): the one host synchronisation per period."""
    if not sums:
        return {}
    v = torch.stack([s.float() for s in sums.values()]) / max(n, 1)
    if rt.world > 1:
        torch.distributed.all_reduce(v)
        v = v / rt.world
    return dict(zip(sums, v.cpu().tolist()))


def fit(task: Task, plan: TrainingPlan, rt: Runtime = Runtime(), log: Callable[[str], None] = print) -> Fitted:
    """Run `plan.steps` steps of `task`, resuming from `plan.folder` when a checkpoint matches.

    Raises Diverged when a period's mean scalar is NaN/Inf (before anything of that period is saved) or when
    the task's end_period says so; CheckpointError for an unreadable/unwritable checkpoint; OutputBusy when
    another live process trains into the same checkpoint folder (its lock, melanoma.io.owner_lock, is held for
    the whole fit: two runs of one stage would otherwise resume from each other's checkpoints).
    """
    if plan.folder is None or not rt.main:
        return _fit(task, plan, rt, log)
    plan.folder.parent.mkdir(parents=True, exist_ok=True)
    with owner_lock(plan.folder):
        return _fit(task, plan, rt, log)


def now() -> float:
    """The engine's clock (seconds, monotonic); tests replace it to take checkpoints at chosen steps."""
    return time.perf_counter()


def _fit(task: Task, plan: TrainingPlan, rt: Runtime, log: Callable[[str], None]) -> Fitted:
    t0 = now()
    timing = Timing()
    h = config_hash(
        {**plan.config, "code": files_md5(plan.code), "versions": _versions(), "device": rt.device.type}
    )  # random streams differ per device type: never resume across
    start, last = _resume(task, plan, h, rt, log) if plan.folder is not None else (None, {})
    live = _live(plan.folder, start is not None) if plan.folder is not None and rt.main else None
    saving = plan.folder is not None and plan.checkpoint_minutes is not None and rt.main
    writer = CheckpointWriter(plan.folder, plan.keep) if saving and plan.folder is not None else None
    timing.resume = now() - t0
    try:
        last = _loop(task, plan, rt, h, start, last, live, writer, timing)
    except BaseException:
        if writer is not None and writer.thread is not None:
            writer.thread.join()  # a write under way finishes (a kill mid-write keeps the previous checkpoint)
        raise
    t = now()
    if writer is not None:
        writer.wait()
    timing.checkpoints += now() - t
    rt.barrier()
    if live is not None:
        live.end()
    timing.wall = now() - t0
    if rt.main and timing.wall > 0:
        log(timing.line(task.name))
    return Fitted(start, last, h, timing)


def _loop(
    task: Task,
    plan: TrainingPlan,
    rt: Runtime,
    h: str,
    start: int | None,
    last: dict[str, float],
    live: Any,
    writer: CheckpointWriter | None,
    timing: Timing,
) -> dict[str, float]:
    """The steps from `start`, a host read and end_period per period, checkpoints when due; the last means."""
    sums: dict[str, torch.Tensor] = {}
    n, saved_at = 0, now()
    for step in range(start or 0, plan.steps):
        if step % plan.period == 0:
            if getattr(task, "stop", False):
                break
            torch.manual_seed(plan.seed * 100_003 + step // plan.period)  # dropout, drop-path
        for k, v in task.step(step).items():
            sums[k] = sums[k] + v.detach() if k in sums else v.detach().clone()
        n += 1
        timing.steps_run += 1
        if (step + 1) % plan.period and step + 1 < plan.steps:
            continue
        means = _read(sums, n, rt)  # waits for the period's steps: counted as step time
        t = now()
        last = _end_period(task, step, means, live, plan)
        sums, n = {}, 0
        timing.periods += now() - t
        due = plan.checkpoint_minutes is not None and now() - saved_at >= 60 * plan.checkpoint_minutes
        if writer is not None and (due or step + 1 == plan.steps or getattr(task, "stop", False)):
            t = now()
            payload = {"config_hash": h, "step": step + 1, "last": last, "task": cpu_copy(task.state_dict())}
            writer.submit(plan.folder / f"checkpoint_step_{step + 1}.pth", payload)  # type: ignore[operator]
            saved_at = now()
            timing.checkpoints += saved_at - t
            timing.written += 1
    return last


def _live(folder: Path, resume: bool) -> Any:
    """dvclive's logger in folder/live (curves per period), continuing the resumed run's curves."""
    from dvclive import Live

    try:
        return Live(str(folder / "live"), dvcyaml=False, save_dvc_exp=False, resume=resume, report=None)
    except OSError as e:
        raise _folder_error(folder / "live", e) from None


def _end_period(task: Task, step: int, means: dict[str, float], live: Any, plan: TrainingPlan) -> dict[str, float]:
    bad = {k: v for k, v in means.items() if not math.isfinite(v)}
    if bad:
        raise Diverged(
            f"{task.name}: {', '.join(f'{k} became {v}' for k, v in bad.items())} by step {step + 1}; "
            + getattr(task, "advice", "lower the learning rate or change the seed")
        )
    hook = getattr(task, "end_period", None)
    row = {**means, **((hook(step, means) if hook else None) or {})}
    if live is not None:
        live.step = step + 1
        for k, v in row.items():
            live.log_metric(k, v)
        live.next_step()
    return row

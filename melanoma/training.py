"""What every training loop here shares: config hashes, checkpoints that survive kills and full disks, LR schedule.

Generators and classifiers both resume a killed run from a checkpoint only when the hash of everything that
shapes the result (params, data) matches; any other checkpoint is ignored with a log line.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint file cannot be read; the message names it."""


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def files_md5(paths: list[Path]) -> str:
    """One md5 over the bytes of several files, read in chunks (a dataset pack can be a gigabyte)."""
    h = hashlib.md5()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()


def cosine_with_floor(step: int, total: int, warmup: int, floor: float) -> float:
    """LR multiplier: linear warmup, then cosine down to `floor` (never to zero, so late steps still learn)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temp name and rename: a kill or a full disk mid-write leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save's writer reports open/write failures as RuntimeError
        if tmp.is_file():
            tmp.unlink()
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0][-160:]
        raise CheckpointError(f"cannot write checkpoint {path}: {reason}; the previous one is kept. "
                              "Free disk space or fix permissions, then rerun to resume") from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file (UnpicklingError, RuntimeError, EOFError)
        raise CheckpointError(f"checkpoint {path} is corrupt or not a weights-only checkpoint "
                              f"({type(e).__name__}); delete it to start over") from None

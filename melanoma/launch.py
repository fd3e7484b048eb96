"""Starting a stage on several processes: the stage script relaunches itself under torchrun, so dvc.yaml's
command never names a process count or a device."""

from __future__ import annotations

import os
import sys

from melanoma.params import ParamsError


def under_torchrun(processes: int, batch: int, where: str) -> None:
    """With processes > 1, replace this process by `torchrun --standalone --nproc_per_node=<processes>` running
    the same script and arguments (each rank then finds WORLD_SIZE set and runs the stage). No-op with one
    process or when already under torchrun. `where` is the params section holding `batch_size` and `processes`
    (e.g. "classifiers.train"): a batch that does not split evenly is one ParamsError here, before torchrun
    starts, rather than one error per rank inside it."""
    if batch % processes:
        raise ParamsError(
            f"{where}.batch_size ({batch}) must be divisible by {where}.processes ({processes}): every "
            "process takes an equal share of each global batch"
        )
    if processes > 1 and "WORLD_SIZE" not in os.environ:
        os.execv(
            sys.executable,
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *sys.argv],
        )

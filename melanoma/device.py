"""Which device a run may use: params.yaml's `device` (auto | cuda | cpu) and whether CUDA is usable here.

A study needs a GPU: with `device: cuda` every stage refuses to start, within a second or two and before any
work, when CUDA is not usable (no driver, a driver older than the installed torch build's CUDA, GPUs hidden),
instead of running for weeks on the CPU. `device: cpu` is the explicit opt-in to the CPU (the rehearsal);
`auto` (the demo) takes CUDA when it works and the CPU otherwise. torch is imported only to check CUDA.
"""

from __future__ import annotations

import os

from melanoma.errors import MelanomaError, first_line

DEVICES = ("auto", "cuda", "cpu")  # params.yaml `device`: the values it may take
# The oldest Linux driver each CUDA major version runs on (minor-version compatibility), from NVIDIA's CUDA
# Toolkit release notes, table "CUDA Toolkit and Minimum Required Driver Version for CUDA Minor Version
# Compatibility".
MIN_DRIVER = {11: "450.80.02", 12: "525.60.13", 13: "580"}


class DeviceUnavailable(MelanomaError):
    """params.yaml asks for a device this machine cannot run on (`device: cuda` without a usable GPU)."""


def _driver_cuda_version() -> int | None:
    """The CUDA version the installed NVIDIA driver supports, as CUDA encodes it (12040 = 12.4), from libcuda's
    cuDriverGetVersion; None when no driver library is installed."""
    import ctypes

    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    return version.value if lib.cuDriverGetVersion(ctypes.byref(version)) == 0 else None


def cuda_problem() -> str | None:
    """None when this process can run CUDA kernels, else one sentence saying why not and how to fix it: a CPU
    build of torch, no NVIDIA driver, a driver older than the torch build's CUDA (naming the driver it needs),
    GPUs hidden by CUDA_VISIBLE_DEVICES, or a GPU the build has no kernels for. Takes about a second."""
    import torch

    built = torch.version.cuda  # "13.0" for the pinned 2.14.1+cu130 wheels; None for a CPU build
    if built is None:
        return (
            f"this torch ({torch.__version__}) is a CPU-only build; install a CUDA build, e.g. "
            "pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu130"
        )
    if torch.cuda.is_available():
        try:
            (torch.ones(1, device="cuda") + 1).item()
            return None
        except RuntimeError as e:  # e.g. "no kernel image is available for execution on the device"
            return f"a CUDA kernel failed on {torch.cuda.get_device_name(0)} ({first_line(e)})"
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None and not os.environ["CUDA_VISIBLE_DEVICES"].strip(" ,"):
        return "CUDA_VISIBLE_DEVICES is set but empty, which hides every GPU; unset it or name a GPU"
    need_major, need_minor = (int(x) for x in built.split(".")[:2])
    driver = _driver_cuda_version()
    if driver is None:
        return "no NVIDIA driver found (libcuda.so.1 is missing): this machine has no usable NVIDIA GPU"
    have = (driver // 1000, driver % 1000 // 10)
    if have < (need_major, 0):
        minimum = MIN_DRIVER.get(need_major, f"one supporting CUDA {built}")
        return (
            f"the NVIDIA driver supports CUDA {have[0]}.{have[1]} but this torch ({torch.__version__}) is built "
            f"for CUDA {built}, which needs driver >= {minimum}; update the driver, or install a torch build "
            f"for CUDA {have[0]}.x, e.g. pip install torch==2.14.1 torchvision==0.29.1 --index-url "
            f"https://download.pytorch.org/whl/cu{have[0]}{have[1]} (pick a cuXY the index lists for 2.14.1)"
        )
    return (
        f"torch sees no usable GPU although the driver supports CUDA {have[0]}.{have[1]} (check nvidia-smi and "
        "that this process may open /dev/nvidia*)"
    )


def require_device(device: str) -> None:
    """Refuse, in about a second, to start work that params.yaml's `device` says must run on CUDA when CUDA is
    not usable here. DeviceUnavailable names the reason and the two ways on."""
    if device != "cuda":
        return
    problem = cuda_problem()
    if problem:
        raise DeviceUnavailable(
            f"params.yaml device: cuda, but CUDA is not usable here: {problem}. To run on the "
            "CPU anyway (days for the study; the rehearsal does this on purpose), set device: cpu "
            "(dvc exp run -S device=cpu)"
        )

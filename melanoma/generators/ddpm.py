"""DDPM (Ho et al., 2020) with diffusers: a UNet2DModel trained to predict the noise, sampled by a chosen solver.

Training always uses the 1000-step DDPMScheduler (epsilon prediction); sampling can use ancestral DDPM (all
steps), DDIM, or DPM-Solver++ (about 20 steps for similar quality), built from the training scheduler's config
so that the noise schedule is the one the UNet learned.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from melanoma.engine import Runtime, adamw, cosine_schedule, ema
from melanoma.errors import PretrainedUnavailable, first_line
from melanoma.params import SAMPLERS, ParamsError

if TYPE_CHECKING:
    from diffusers import DDPMScheduler, UNet2DModel


def unet_config(
    image_size: int, block_out_channels: list[int], layers_per_block: int, attention_resolutions: list[int]
) -> dict[str, Any]:
    """UNet2DModel kwargs: one down/up block per channel entry; the blocks working at a feature-map side listed in
    `attention_resolutions` (px; block i works at image_size / 2^i) get self-attention, on the way down and up.

    Ho et al. (2020) attend at 16 x 16 and ADM (Dhariwal & Nichol 2021) at 32, 16 and 8 for 64 px images; at
    2 x 2, the lowest block of the study's 6-block UNet, attention sees 4 positions and adds nothing. Raises
    ParamsError when diffusers could not build or run it: each block but the last halves the image, so
    image_size must divide by 2^(blocks - 1); GroupNorm needs every channel count divisible by its group count;
    an attention resolution that no block works at would silently do nothing.
    """
    n = len(block_out_channels)
    groups = min(32, min(block_out_channels))
    if image_size % 2 ** (n - 1):
        raise ParamsError(
            f"generators.image_size ({image_size}) must be divisible by 2^{n - 1} = {2 ** (n - 1)}: "
            f"the UNet has {n} blocks (generators.ddpm.block_out_channels) and all but the last halve it"
        )
    if groups < 1 or any(c % groups for c in block_out_channels):
        raise ParamsError(
            f"generators.ddpm.block_out_channels {list(block_out_channels)}: each must be a positive "
            f"multiple of the GroupNorm group count min(32, smallest) = {groups}"
        )
    sides = [image_size // 2**i for i in range(n)]
    missing = sorted(set(attention_resolutions) - set(sides), reverse=True)
    if missing:
        raise ParamsError(
            f"generators.ddpm.attention_resolutions {list(attention_resolutions)}: no block works at {missing} px "
            f"(at image_size {image_size} the {n} blocks work at {sides} px)"
        )
    down = ["AttnDownBlock2D" if s in attention_resolutions else "DownBlock2D" for s in sides]
    up = ["AttnUpBlock2D" if s in attention_resolutions else "UpBlock2D" for s in reversed(sides)]
    return {
        "sample_size": image_size,
        "in_channels": 3,
        "out_channels": 3,
        "layers_per_block": layers_per_block,
        "block_out_channels": list(block_out_channels),
        "down_block_types": down,
        "up_block_types": up,
        "norm_num_groups": groups,
    }


def params_unet_config(image_size: int, cfg: dict[str, Any]) -> dict[str, Any]:
    """unet_config from params' `generators.ddpm` section `cfg` at `image_size`."""
    return unet_config(image_size, cfg["block_out_channels"], cfg["layers_per_block"], cfg["attention_resolutions"])


def build_unet(config: dict[str, Any], pretrained: str = "") -> UNet2DModel:
    # diffusers is imported where it is used: importing it costs ~4 s, and modules that only need this
    # package's data helpers (the upscaler, synthesis of DCGAN images) should not pay for it
    from diffusers import UNet2DModel

    if not pretrained:
        return UNet2DModel(**config)
    try:
        unet = UNet2DModel.from_pretrained(
            pretrained,
            subfolder="unet" if (Path(pretrained) / "unet").is_dir() else None,
            use_safetensors=True,
            low_cpu_mem_usage=False,
        )
    except (OSError, ValueError) as e:
        raise PretrainedUnavailable(
            f"generators.ddpm.pretrained: cannot load a UNet2DModel from '{pretrained}' ({first_line(e)}); "
            "pre-fill the Hugging Face cache or give a local folder, or set generators.ddpm.pretrained: '' "
            "to train from scratch"
        ) from None
    differ = [
        k
        for k in ("sample_size", "block_out_channels", "layers_per_block", "down_block_types")
        if list(np.atleast_1d(unet.config[k])) != list(np.atleast_1d(config[k]))
    ]
    if differ:
        raise PretrainedUnavailable(
            f"pretrained UNet '{pretrained}' does not match the params: "
            + "; ".join(f"{k} {unet.config[k]} there, {config[k]} here" for k in differ)
            + " (generators.image_size, generators.ddpm.block_out_channels / layers_per_block / attention_resolutions)"
        )
    return unet


def train_scheduler(num_train_timesteps: int, beta_schedule: str, clip_range: float = 1.0) -> DDPMScheduler:
    """`clip_range` bounds predicted clean images: the largest |value| a standardised real pixel can take."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        prediction_type="epsilon",
        clip_sample=True,
        clip_sample_range=clip_range,
    )


def min_snr_weights(scheduler: DDPMScheduler, gamma: float) -> torch.Tensor:
    """Per-timestep loss weights min(SNR_t, gamma) / SNR_t for epsilon prediction (Hang et al., 2023).

    Low-noise steps are easy and dominate plain MSE gradients; capping their weight makes training converge
    several times faster, which is what lets a CPU demo learn anything. gamma = 0 gives plain MSE.
    """
    ac = scheduler.alphas_cumprod
    snr = ac / (1 - ac)
    if gamma <= 0:
        return torch.ones_like(snr)
    return torch.clamp(snr, max=gamma) / snr


def standardisation(x: torch.Tensor) -> tuple[list[float], list[float], float]:
    """Per-channel mean and std of images in [-1, 1], and the clip range they imply.

    Dermoscopy images sit far from zero mean (skin is bright and reddish); diffusing standardised images means
    the noise the model starts from is centred on skin colour, which a small, briefly trained UNet otherwise
    gets wrong (green or purple skin).
    """
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    clip = torch.maximum((1 - mean) / std, (1 + mean) / std).max().item()
    return mean.tolist(), std.tolist(), clip


def sampling_scheduler(train: DDPMScheduler, sampler: str):
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if sampler == "ddpm":
        return DDPMScheduler.from_config(train.config)
    if sampler == "ddim":
        return DDIMScheduler.from_config(train.config)
    if sampler == "dpmsolver++":
        # no dynamic thresholding: on standardised images it rescales each sample and washes colours out
        return DPMSolverMultistepScheduler.from_config(train.config, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown sampler '{sampler}'; choose one of {', '.join(SAMPLERS)}")


@torch.no_grad()
def sample(
    unet: UNet2DModel,
    train: DDPMScheduler,
    sampler: str,
    steps: int,
    n: int,
    generator: torch.Generator,
    batch_size: int = 64,
    rt: Runtime = Runtime(),
) -> torch.Tensor:
    """n images as float32 (n, 3, S, S) on `rt`'s device, in the (standardised) space the UNet was trained in.

    `generator` must live on that device: the initial noise and the ancestral sampler's per-step noise are
    drawn there, so no step waits on a host copy. The UNet runs under the runtime's autocast (bf16 on CUDA);
    the solver updates stay float32. `steps` is ignored by the ancestral sampler, which takes them all."""
    unet.eval()
    size = unet.config.sample_size
    out = []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        sched = sampling_scheduler(train, sampler)
        sched.set_timesteps(train.config.num_train_timesteps if sampler == "ddpm" else steps, device=rt.device)
        x = torch.randn((m, 3, size, size), generator=generator, device=rt.device)
        for t in sched.timesteps:
            with rt.autocast():
                eps = unet(x, t).sample.float()
            kw = {"generator": generator} if sampler == "ddpm" else {}
            x = sched.step(eps, t, x, **kw).prev_sample
        out.append(x)
    return torch.cat(out)


class DDPMTask:
    """The diffusion step as an engine Task: noise a batch at random timesteps, regress the noise (min-SNR
    weighted MSE), clip the gradient norm, update the EMA (timm ModelEmaV3) that samples come from.

    `data`: standardised training images, float (N, 3, S, S), moved to the runtime's device. Batch indices,
    flips, noise and timesteps come from generators on that device seeded by `seed`.
    """

    def __init__(
        self, cfg: dict[str, Any], data: torch.Tensor, image_size: int, seed: int, rt: Runtime, clip_range: float = 1.0
    ) -> None:
        torch.manual_seed(seed)
        self.cfg, self.rt, self.name = cfg, rt, "ddpm"
        self.advice = "lower generators.ddpm.lr or change generators.seed"
        self.data = data.to(rt.device)
        config = params_unet_config(image_size, cfg)
        self.unet = rt.prepare(build_unet(config, cfg["pretrained"]))
        self.scheduler = train_scheduler(cfg["num_train_timesteps"], cfg["beta_schedule"], clip_range)
        self.weights = min_snr_weights(self.scheduler, cfg["min_snr_gamma"]).to(rt.device)
        self.opt = adamw(self.unet, cfg["lr"], cfg["weight_decay"])
        self.sched = cosine_schedule(self.opt, cfg["steps"], cfg["warmup_steps"], cfg["lr_floor"])
        self.ema = ema(self.unet, cfg["ema_decay"])
        self.batches, self.rng = rt.generator(seed), rt.generator(seed + 1)
        self.net: nn.Module = self.unet  # the UNet, or its DDP wrapper under torchrun (distribute)

    def step(self, step: int) -> dict[str, torch.Tensor]:
        self.sched.step_update(step)
        self.unet.train()
        dev, n = self.rt.device, self.cfg["batch_size"]
        x = self.data[torch.randint(0, len(self.data), (n,), generator=self.batches, device=dev)]
        x = torch.where(torch.rand(n, 1, 1, 1, generator=self.rng, device=dev) < 0.5, x.flip(3), x)
        noise = torch.randn(x.shape, generator=self.rng, device=dev)
        t = torch.randint(0, self.cfg["num_train_timesteps"], (n,), generator=self.rng, device=dev)
        if self.rt.world > 1:  # this rank's slice of the global batch
            mine = slice(self.rt.rank * n // self.rt.world, (self.rt.rank + 1) * n // self.rt.world)
            x, noise, t = x[mine], noise[mine], t[mine]
        with self.rt.autocast():
            pred = self.net(self.scheduler.add_noise(x, noise, t), t).sample
        per_image = ((pred.float() - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per_image * self.weights[t]).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.unet.parameters(), self.cfg["grad_clip"])
        self.opt.step()
        self.ema.update(self.unet)
        return {"loss": loss.detach(), "grad_norm": grad_norm.detach()}

    def distribute(self) -> None:
        """Under torchrun: wrap the UNet in DistributedDataParallel; each rank then trains on its own equal slice
        of every global batch (all ranks draw the same global batch from the same seeded generators), and
        DDP's gradient average equals the single-process gradient of the whole batch."""
        if self.cfg["batch_size"] % self.rt.world:
            raise ParamsError(
                f"generators.ddpm.batch_size ({self.cfg['batch_size']}) must be divisible by "
                f"generators.ddpm.processes ({self.rt.world})"
            )
        cuda = self.rt.device.type == "cuda"
        self.net = nn.parallel.DistributedDataParallel(self.unet, device_ids=[self.rt.device.index] if cuda else None)

    def state_dict(self) -> dict[str, Any]:
        return {
            "unet": self.unet.state_dict(),
            "ema": self.ema.module.state_dict(),
            "opt": self.opt.state_dict(),
            "rng": self.rng.get_state(),
            "batches": self.batches.get_state(),
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.unet.load_state_dict(s["unet"])
        self.ema.module.load_state_dict(s["ema"])
        self.opt.load_state_dict(s["opt"])
        self.rng.set_state(s["rng"])
        self.batches.set_state(s["batches"])

    def save(self, folder: Path) -> None:
        """The EMA UNet (safetensors) -> folder/unet/, the training noise schedule -> folder/scheduler/."""
        self.ema.module.save_pretrained(folder / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")

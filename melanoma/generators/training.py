"""One resumable training loop for both generator families.

A family is a `Trainer`: it owns its networks, optimisers, EMA copy and RNG, takes one step on a batch, and
samples. The loop around it is shared: seeded batches, NaN/divergence checks, dvclive curves, checkpoints
every N steps that a killed run resumes from when the config hash matches (and ignores, with a log line, when
it does not), and the final folder written atomically.
"""
from __future__ import annotations

import copy
import math
import shutil
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from melanoma.generators import dcgan, ddpm
from melanoma.training import config_hash, cosine_with_floor, files_md5, load_checkpoint, save_checkpoint


class GeneratorDiverged(RuntimeError):
    """Training produced NaN/Inf or a discriminator that wins outright; the message says what to change."""


class EMA:
    """Exponential moving average of a model's weights (buffers copied), used for sampling."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


class Trainer(Protocol):
    name: str

    def step(self, batch: torch.Tensor, step: int) -> dict[str, float]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def save(self, folder: Path) -> None: ...


class DCGANTrainer:
    """GAN step: D on real vs fake (one-sided label smoothing, optional DiffAugment), then G, then EMA of G."""

    def __init__(self, cfg: dict[str, Any], image_size: int, seed: int, clip_range: float = 1.0) -> None:
        torch.manual_seed(seed)
        self.cfg, self.name = cfg, "dcgan"
        self.G = dcgan.Generator(cfg["nz"], cfg["ngf"], 3, image_size)
        self.D = dcgan.Discriminator(cfg["ndf"], 3, image_size)
        self.G.apply(dcgan.init_weights)
        self.D.apply(dcgan.init_weights)
        betas = (cfg["beta1"], cfg["beta2"])
        self.opt_g = torch.optim.Adam(self.G.parameters(), cfg["lr"], betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), cfg["lr"], betas=betas)
        self.ema = EMA(self.G, cfg["ema_decay"])
        self.rng = torch.Generator().manual_seed(seed + 1)
        self.loss = nn.BCEWithLogitsLoss()
        self.d_wins = 0  # consecutive steps the discriminator won outright

    def _set_lr(self, step: int) -> None:
        lr = self.cfg["lr"] * cosine_with_floor(step, self.cfg["steps"], 0, self.cfg["lr_floor"])
        for opt in (self.opt_g, self.opt_d):
            for g in opt.param_groups:
                g["lr"] = lr

    def step(self, real: torch.Tensor, step: int) -> dict[str, float]:
        self._set_lr(step)
        self.G.train()
        self.D.train()
        n = real.shape[0]
        aug = (lambda x: dcgan.diff_augment(x, self.rng)) if self.cfg["diff_augment"] else (lambda x: x)
        z = torch.randn(n, self.cfg["nz"], generator=self.rng)
        fake = self.G(z)
        real_target = torch.full((n,), 1.0 - self.cfg["label_smoothing"])
        d_real, d_fake = self.D(aug(real)), self.D(aug(fake.detach()))
        loss_d = self.loss(d_real, real_target) + self.loss(d_fake, torch.zeros(n))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        loss_g = self.loss(self.D(aug(fake)), torch.ones(n))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.ema.update(self.G)
        p_fake = torch.sigmoid(d_fake).mean().item()
        self.d_wins = self.d_wins + 1 if p_fake < 1e-3 and torch.sigmoid(d_real).mean().item() > 0.99 else 0
        if self.d_wins >= self.cfg["divergence_steps"]:
            raise GeneratorDiverged(
                f"the discriminator has won outright for {self.d_wins} steps (D(G(z)) = {p_fake:.1e}): G gets no "
                "gradient. Lower generators.dcgan.lr, enable diff_augment or raise label_smoothing")
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item(), "d_real": torch.sigmoid(d_real).mean().item(),
                "d_fake": p_fake}

    def state_dict(self) -> dict[str, Any]:
        return {"G": self.G.state_dict(), "D": self.D.state_dict(), "ema": self.ema.model.state_dict(),
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(), "rng": self.rng.get_state(),
                "d_wins": self.d_wins}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.G.load_state_dict(s["G"])
        self.D.load_state_dict(s["D"])
        self.ema.model.load_state_dict(s["ema"])
        self.opt_g.load_state_dict(s["opt_g"])
        self.opt_d.load_state_dict(s["opt_d"])
        self.rng.set_state(s["rng"])
        self.d_wins = s["d_wins"]

    def save(self, folder: Path) -> None:
        save_file(self.ema.model.state_dict(), str(folder / "generator.safetensors"))


class DDPMTrainer:
    """Diffusion step: noise a batch at random timesteps, regress the noise (min-SNR weighted MSE), clip, EMA."""

    def __init__(self, cfg: dict[str, Any], image_size: int, seed: int, clip_range: float = 1.0) -> None:
        torch.manual_seed(seed)
        self.cfg, self.name = cfg, "ddpm"
        self.unet = ddpm.build_unet(ddpm.unet_config(image_size, cfg["block_out_channels"], cfg["layers_per_block"],
                                                     cfg["attention"]), cfg["pretrained"])
        self.scheduler = ddpm.train_scheduler(cfg["num_train_timesteps"], cfg["beta_schedule"], clip_range)
        self.weights = ddpm.min_snr_weights(self.scheduler, cfg["min_snr_gamma"])
        self.opt = torch.optim.AdamW(self.unet.parameters(), cfg["lr"], weight_decay=cfg["weight_decay"])
        self.ema = EMA(self.unet, cfg["ema_decay"])
        self.rng = torch.Generator().manual_seed(seed + 1)

    def step(self, x: torch.Tensor, step: int) -> dict[str, float]:
        for g in self.opt.param_groups:
            g["lr"] = self.cfg["lr"] * cosine_with_floor(step, self.cfg["steps"], self.cfg["warmup_steps"],
                                                         self.cfg["lr_floor"])
        self.unet.train()
        x = torch.where(torch.rand(x.shape[0], 1, 1, 1, generator=self.rng) < 0.5, x.flip(3), x)
        noise = torch.randn(x.shape, generator=self.rng)
        t = torch.randint(0, self.cfg["num_train_timesteps"], (x.shape[0],), generator=self.rng)
        pred = self.unet(self.scheduler.add_noise(x, noise, t), t).sample
        per_image = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
        loss = (per_image * self.weights[t]).mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.unet.parameters(), self.cfg["grad_clip"])
        self.opt.step()
        self.ema.update(self.unet)
        return {"loss": loss.item(), "grad_norm": float(grad_norm)}

    def state_dict(self) -> dict[str, Any]:
        return {"unet": self.unet.state_dict(), "ema": self.ema.model.state_dict(), "opt": self.opt.state_dict(),
                "rng": self.rng.get_state()}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.unet.load_state_dict(s["unet"])
        self.ema.model.load_state_dict(s["ema"])
        self.opt.load_state_dict(s["opt"])
        self.rng.set_state(s["rng"])

    def save(self, folder: Path) -> None:
        self.ema.model.save_pretrained(folder / "unet", safe_serialization=True)
        self.scheduler.save_pretrained(folder / "scheduler")


# the code that shapes a trained generator: a checkpoint made by other code is not resumed (DVC reruns the stage
# when this code changes; resuming the old code's checkpoint would silently keep most of the old result)
CODE = sorted(Path(__file__).parent.glob("*.py")) + [Path(__file__).parents[1] / "training.py"]

TRAINERS = {"dcgan": DCGANTrainer, "ddpm": DDPMTrainer}


# ---------------------------------------------------------------- the loop

def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[-1, 1] (N, 3, H, W) -> uint8 (N, H, W, 3)."""
    return ((x.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def grid(images: np.ndarray, cols: int = 8) -> Image.Image:
    n, h, w, c = images.shape
    rows = math.ceil(n / cols)
    canvas = np.full((rows * h, cols * w, c), 255, np.uint8)
    for i, im in enumerate(images):
        canvas[(i // cols) * h:(i // cols + 1) * h, (i % cols) * w:(i % cols + 1) * w] = im
    return Image.fromarray(canvas)


def fit(trainer: Trainer, data: torch.Tensor, *, steps: int, batch_size: int, seed: int, config: dict[str, Any],
        ckpt_dir: Path, checkpoint_every: int, log_every: int = 25, log=print) -> dict[str, Any]:
    """Train for `steps` steps on `data` ((N, 3, S, S) in [-1, 1]), resuming from ckpt_dir when it matches."""
    from dvclive import Live

    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / "last.pt"
    h = config_hash({**config, "code": files_md5(CODE)})
    batches = torch.Generator().manual_seed(seed)
    start, resumed = 0, False
    if ckpt.exists():
        state = load_checkpoint(ckpt)
        if state.get("config_hash") == h:
            trainer.load_state_dict(state["trainer"])
            batches.set_state(state["batches"])
            start, resumed = int(state["step"]), True
            log(f"{trainer.name}: resuming from checkpoint {ckpt} at step {start}")
        else:
            log(f"{trainer.name}: checkpoint {ckpt} is for another config ({state.get('config_hash')} != {h}); "
                "starting fresh")
            shutil.rmtree(ckpt_dir)
            ckpt_dir.mkdir(parents=True)
    live = Live(str(ckpt_dir / "live"), dvcyaml=False, save_dvc_exp=False, resume=resumed, report=None)
    last: dict[str, float] = {}
    for step in tqdm(range(start, steps), initial=start, total=steps, desc=trainer.name, unit="step"):
        idx = torch.randint(0, data.shape[0], (batch_size,), generator=batches)
        last = trainer.step(data[idx], step)
        bad = {k: v for k, v in last.items() if not math.isfinite(v)}
        if bad:
            raise GeneratorDiverged(f"{trainer.name} diverged at step {step}: {bad}; lower the learning rate "
                                    f"(generators.{trainer.name}.lr) or change the seed")
        if (step + 1) % log_every == 0 or step + 1 == steps:
            live.step = step + 1
            for k, v in last.items():
                live.log_metric(k, v)
            live.next_step()
        if (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            save_checkpoint(ckpt, {"config_hash": h, "step": step + 1, "trainer": trainer.state_dict(),
                                   "batches": batches.get_state()})
    live.end()
    return {"steps": steps, "resumed_from": start if resumed else None, "final": last}

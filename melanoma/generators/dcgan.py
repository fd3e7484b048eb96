"""DCGAN (Radford et al., 2016): the seed study's generator, sized by resolution.

`Generator(nz=100, ngf=64, nc=3)` keeps the seed's signature. A 4x4 seed map is doubled by transposed
convolutions until it reaches `image_size` (64: four doublings, 128: one block more), with BatchNorm+ReLU
inside and Tanh out; the discriminator mirrors it with strided convolutions and LeakyReLU and ends in one
logit (the loss is BCE-with-logits, numerically safer than Sigmoid+BCE).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from melanoma.engine import Diverged, Runtime, cosine_schedule, ema
from melanoma.params import ParamsError


def _doublings(image_size: int) -> int:
    n = math.log2(image_size / 4)
    if image_size < 16 or n != int(n):
        raise ParamsError(f"generators.image_size must be a power of two >= 16 for the DCGAN, got {image_size}")
    return int(n)


class Generator(nn.Module):
    def __init__(self, nz: int = 100, ngf: int = 64, nc: int = 3, image_size: int = 64) -> None:
        super().__init__()
        n = _doublings(image_size)
        ch = ngf * 2 ** (n - 1)
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
        for _ in range(n - 1):
            layers += [nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.ConvTranspose2d(ch, nc, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.nz = nz

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, nz) or (N, nz, 1, 1) noise -> (N, nc, S, S) images in [-1, 1]."""
        return self.main(z.view(z.shape[0], self.nz, 1, 1))


class Discriminator(nn.Module):
    def __init__(self, ndf: int = 64, nc: int = 3, image_size: int = 64) -> None:
        super().__init__()
        n = _doublings(image_size)
        layers: list[nn.Module] = [nn.Conv2d(nc, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        ch = ndf
        for _ in range(n - 1):
            layers += [nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.LeakyReLU(0.2, True)]
            ch *= 2
        layers += [nn.Conv2d(ch, 1, 4, 1, 0, bias=False)]
        self.main = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


def init_weights(m: nn.Module) -> None:
    """DCGAN init: conv weights N(0, 0.02), BatchNorm scale N(1, 0.02) and bias 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def diff_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """DiffAugment (Zhao et al., 2020): colour, translation and cutout applied identically to real and fake
    batches before D, so D cannot memorise a few hundred images; differentiable, so G learns through it."""
    n, _, h, w = x.shape
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=dev)

    x = x + (rand(n, 1, 1, 1) - 0.5)  # brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (rand(n, 1, 1, 1) * 2) + mean  # saturation
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (rand(n, 1, 1, 1) + 0.5) + mean  # contrast
    # translation by up to 1/8 of the size, zero padded
    sh, sw = h // 8, w // 8
    ty = (rand(n) * (2 * sh + 1)).long() - sh
    tx = (rand(n) * (2 * sw + 1)).long() - sw
    padded = nn.functional.pad(x, (sw, sw, sh, sh))
    iy = (torch.arange(h, device=dev)[None, :] + sh - ty.to(dev)[:, None]).clamp(0, h + 2 * sh - 1)
    ix = (torch.arange(w, device=dev)[None, :] + sw - tx.to(dev)[:, None]).clamp(0, w + 2 * sw - 1)
    x = padded[torch.arange(n, device=dev)[:, None, None], :, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)
    # cutout: one square of half the size per image
    ch, cw = h // 2, w // 2
    cy = (rand(n) * (h + 1 - ch % 2)).long()
    cx = (rand(n) * (w + 1 - cw % 2)).long()
    yy = torch.arange(h, device=dev)[None, :, None]
    xx = torch.arange(w, device=dev)[None, None, :]
    keep = ~(((yy - cy.to(dev)[:, None, None]).abs() < ch // 2) & ((xx - cx.to(dev)[:, None, None]).abs() < cw // 2))
    return x * keep[:, None].to(x.dtype)


class DCGANTask:
    """The GAN step as an engine Task: D on real vs fake (one-sided label smoothing, optional DiffAugment), then
    G, then the EMA of G (timm ModelEmaV3), which is what samples come from.

    `data`: the class's training images, float (N, 3, S, S) in [-1, 1], moved to the runtime's device. Every
    random number (batch indices, z, DiffAugment) comes from generators on that device seeded by `seed`, so a
    step never waits on a host copy and a resumed run continues the same stream.
    """

    def __init__(
        self, cfg: dict[str, Any], data: torch.Tensor, image_size: int, seed: int, rt: Runtime, clip_range: float = 1.0
    ) -> None:
        torch.manual_seed(seed)
        self.cfg, self.rt, self.name = cfg, rt, "dcgan"
        self.advice = "lower generators.dcgan.lr or change generators.seed"
        self.data = data.to(rt.device)
        self.G = rt.prepare(Generator(cfg["nz"], cfg["ngf"], 3, image_size))
        self.D = rt.prepare(Discriminator(cfg["ndf"], 3, image_size))
        self.G.apply(init_weights)
        self.D.apply(init_weights)
        betas = (cfg["beta1"], cfg["beta2"])
        self.opt_g = torch.optim.Adam(self.G.parameters(), cfg["lr"], betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), cfg["lr"], betas=betas)
        self.scheds = [cosine_schedule(o, cfg["steps"], 0, cfg["lr_floor"]) for o in (self.opt_g, self.opt_d)]
        self.ema = ema(self.G, cfg["ema_decay"])
        self.batches, self.rng = rt.generator(seed), rt.generator(seed + 1)
        self.loss = nn.BCEWithLogitsLoss()
        self.d_wins = torch.zeros((), dtype=torch.long, device=rt.device)  # consecutive steps D won outright
        self.longest = torch.zeros_like(self.d_wins)  # longest such run since the last end_period

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return diff_augment(x, self.rng) if self.cfg["diff_augment"] else x

    def step(self, step: int) -> dict[str, torch.Tensor]:
        for s in self.scheds:
            s.step_update(step)
        self.G.train()
        self.D.train()
        dev, n = self.rt.device, self.cfg["batch_size"]
        real = self.data[torch.randint(0, len(self.data), (n,), generator=self.batches, device=dev)]
        z = torch.randn(n, self.cfg["nz"], generator=self.rng, device=dev)
        with self.rt.autocast():
            fake = self.G(z)
            d_real, d_fake = self.D(self._augment(real)).float(), self.D(self._augment(fake.detach())).float()
        real_target = torch.full((n,), 1.0 - self.cfg["label_smoothing"], device=dev)
        loss_d = self.loss(d_real, real_target) + self.loss(d_fake, torch.zeros(n, device=dev))
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        with self.rt.autocast():
            d_gen = self.D(self._augment(fake)).float()
        loss_g = self.loss(d_gen, torch.ones(n, device=dev))
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        self.ema.update(self.G)
        p_real, p_fake = torch.sigmoid(d_real).mean().detach(), torch.sigmoid(d_fake).mean().detach()
        self.d_wins = torch.where((p_fake < 1e-3) & (p_real > 0.99), self.d_wins + 1, 0)
        self.longest = torch.maximum(self.longest, self.d_wins)
        return {"loss_d": loss_d.detach(), "loss_g": loss_g.detach(), "d_real": p_real, "d_fake": p_fake}

    def end_period(self, step: int, means: dict[str, float]) -> None:
        """Stop when D has won outright (D(G(z)) < 1e-3, D(x) > 0.99) for divergence_steps steps in a row."""
        longest, self.longest = int(self.longest), torch.zeros_like(self.longest)
        if longest >= self.cfg["divergence_steps"]:
            raise Diverged(
                f"dcgan: the discriminator has won outright for {longest} steps in a row by step {step + 1} "
                f"(D(G(z)) = {means['d_fake']:.1e}): G gets no gradient. Lower generators.dcgan.lr, enable "
                "diff_augment or raise label_smoothing"
            )

    def state_dict(self) -> dict[str, Any]:
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "ema": self.ema.module.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": self.rng.get_state(),
            "batches": self.batches.get_state(),
            "d_wins": int(self.d_wins),
        }

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.G.load_state_dict(s["G"])
        self.D.load_state_dict(s["D"])
        self.ema.module.load_state_dict(s["ema"])
        self.opt_g.load_state_dict(s["opt_g"])
        self.opt_d.load_state_dict(s["opt_d"])
        self.rng.set_state(s["rng"])
        self.batches.set_state(s["batches"])
        self.d_wins.fill_(s["d_wins"])

    def save(self, folder: Path) -> None:
        """The EMA generator's weights -> folder/generator.safetensors."""
        save_file(
            {k: v.contiguous() for k, v in self.ema.module.state_dict().items()}, str(folder / "generator.safetensors")
        )

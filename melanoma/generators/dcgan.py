"""DCGAN (Radford et al., 2016): the seed study's generator, sized by resolution.

`Generator(nz=100, ngf=64, nc=3)` keeps the seed's signature. A 4x4 seed map is doubled by transposed
convolutions until it reaches `image_size` (64: four doublings, 128: one block more), with BatchNorm+ReLU
inside and Tanh out; the discriminator mirrors it with strided convolutions and LeakyReLU and ends in one
logit (the loss is BCE-with-logits, numerically safer than Sigmoid+BCE).
"""
from __future__ import annotations

import math

import torch
from torch import nn


def _doublings(image_size: int) -> int:
    n = math.log2(image_size / 4)
    if image_size < 16 or n != int(n):
        raise ValueError(f"DCGAN image_size must be a power of two >= 16, got {image_size}")
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
        return torch.rand(*shape, generator=generator, device="cpu").to(dev)

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

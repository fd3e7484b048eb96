"""MedViT (Manzari et al., 2023), written out as a small, readable PyTorch module.

MedViT: "A Robust Vision Transformer for Generalized Medical Image Classification", Computers in Biology and
Medicine 157:106791 (arXiv 2302.09462). Reference code: github.com/Omid-Nejati/MedViT, itself built on Next-ViT
(Li et al., 2022). This file is our own rewrite from the paper and that code: same architecture, same parameter
count, own structure and names.

Shape of the network (an image of side S, a multiple of 32):

    stem    4 conv-BN-ReLU, stride 4, channels 3 -> 64 -> 32 -> 64 -> 64             (S/4)
    stage 1 ECB x d1 at 96                                                           (S/4)
    stage 2 ECB x (d2-1) at 192, then one LTB -> 256                                 (S/8)
    stage 3 (ECB x 4 at 384, then one LTB -> 512), repeated d3/5 times               (S/16)
    stage 4 ECB x (d4-1) at 768, then one LTB -> 1024                                (S/32)
    head    BatchNorm -> global average pool -> Linear(1024, num_classes)

The first block of stages 2-4 halves the resolution (2x2 average pool inside its patch embedding). The
interleaving of a few transformer blocks among many convolution blocks is Next-ViT's "next hybrid strategy".

Blocks:
  ECB  efficient convolution block: patch embedding, then x + MHCA(x), then the locality feed-forward LFFN on
       a BatchNorm of x. MHCA (multi-head convolutional attention) is a grouped 3x3 conv with one group per
       32-channel "head", BN, ReLU and a 1x1 projection: local mixing that plays attention's role cheaply.
  LTB  local transformer block: the input is embedded to 75 % of the output channels (mix_block_ratio, rounded to
       a multiple of 32), goes through E-MHSA (multi-head self-attention whose keys/values come from an average-
       pooled, i.e. spatially reduced, copy of the map: sr_ratio 8/4/2/1 per stage), is projected to the other
       25 % which go through an MHCA, the two parts are concatenated, and the LFFN follows. Global context (E-MHSA)
       and local detail (MHCA) thus sit side by side in the channel dimension.
  LFFN 1x1 conv expand (x3 in ECB, x2 in LTB), BN, hard-swish, depthwise 3x3, BN, hard-swish, squeeze-excite,
       1x1 conv back, BN (LocalViT's feed-forward with a depthwise conv, so the FFN also sees neighbours).

Variants. The paper calls them MedViT-T/S/L; the reference code calls the same three MedViT_small/_base/_large
(the authors confirm the mapping T=small, S=base, L=large in github.com/Omid-Nejati/MedViT/issues/19). They differ
only in stage-3 depth: depths (3, 4, 10, 3), (3, 4, 20, 3), (3, 4, 30, 3). Here: medvit_tiny, medvit_small,
medvit_large. With a 1000-class head they have 32.16 M, 45.43 M and 58.70 M parameters (identical to the reference
code); without the head 31.14 M, 44.41 M, 57.68 M; at 224 px about 11.7, 16.7 and 21.7 GFLOPs (2 x MACs). The one
published figure we could check, MedViT-T = 31.1 M parameters and 11.7 GFLOPs, matches the backbone plus a
MedMNIST-sized head.

Left out or changed, on purpose:
  * The Patch Momentum Changer (PMC) of the paper is a training-time feature augmentation (mixing the channel
    mean/std of feature maps between samples of a batch), not a layer of the network, so it is not here.
  * Spatial reduction in E-MHSA. The reference (from Next-ViT) flattens the map to a token sequence and
    average-pools runs of sr^2 consecutive tokens (AvgPool1d), so its windows straddle row ends. We pool sr x sr
    squares of the 2-D map instead, which is what "spatial reduction" means in the paper and in PVT, and clamp the
    window to the map size so that small inputs (e.g. 64 px, where stage 4 is 2x2) never reduce below 1x1. The
    parameter count is unchanged; outputs would differ from reference checkpoints, which we do not load anyway.
  * The reference's BN-merging helpers (unused and broken there) and its einops dependency are dropped.
  * Behaviour kept although it looks odd: the reference's LFFN carries its own residual inside the block's
    residual, so a block ends with x + y + ffn(y) where y = BN(x); we write that sum out explicitly. Stochastic
    depth applies to the attention/MHCA branches only (in an LTB split 75/25 between its two branches), as there.

No pretrained weights: the authors' ImageNet checkpoints sit on Google Drive/Dropbox in their own format and there
are none on the Hugging Face Hub, so `medvit(..., pretrained=True)` refuses. The variants are registered
with timm (`timm.create_model("medvit_small", num_classes=2)`) once this module is imported. Everything here is
plain conv / BN /
linear / matmul + softmax with no branching on tensor values, so the model exports to ONNX (checked in the tests
with the TorchScript exporter at a fixed input size; the E-MHSA pooling window is then a constant of that size).
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn
from torch.nn import functional as F

from melanoma.errors import PretrainedUnavailable

NORM_EPS = 1e-5
HEAD_DIM = 32  # channels per attention head, in MHCA (conv groups) and E-MHSA alike

# depths per stage; stage 3 is built from groups of 5 blocks (4 ECB + 1 LTB). drop_path_rate is the reference's
# stochastic-depth setting for each variant (MedViT() itself defaults to 0.0).
CONFIGS: dict[str, dict] = {
    "medvit_tiny": dict(depths=(3, 4, 10, 3), drop_path_rate=0.1),  # paper MedViT-T = reference MedViT_small
    "medvit_small": dict(depths=(3, 4, 20, 3), drop_path_rate=0.2),  # paper MedViT-S = reference MedViT_base
    "medvit_large": dict(depths=(3, 4, 30, 3), drop_path_rate=0.2),  # paper MedViT-L = reference MedViT_large
}


def _round_to(v: float, divisor: int) -> int:
    """Nearest multiple of `divisor` (at least `divisor`), bumped up if rounding lost more than 10 %."""
    rounded = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * v else rounded


def stage_plan(depths, widths=(96, 192, 384, 768), ltb_widths=(256, 512, 1024)) -> list[list[tuple[str, int]]]:
    """The next-hybrid layout: for each stage, the (block kind, output channels) of every block in order."""
    d1, d2, d3, d4 = depths
    if d3 < 5 or d3 % 5:
        raise ValueError(f"stage-3 depth must be a positive multiple of 5 (groups of 4 ECB + 1 LTB), got {d3}")
    if min(d1, d2, d4) < 1:
        raise ValueError(f"every stage needs at least one block, got depths {tuple(depths)}")
    return [
        [("ecb", widths[0])] * d1,
        [("ecb", widths[1])] * (d2 - 1) + [("ltb", ltb_widths[0])],
        ([("ecb", widths[2])] * 4 + [("ltb", ltb_widths[1])]) * (d3 // 5),
        [("ecb", widths[3])] * (d4 - 1) + [("ltb", ltb_widths[2])],
    ]


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch for a random subset of samples (and rescale)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


def conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=1, bias=False),
        nn.BatchNorm2d(cout, eps=NORM_EPS),
        nn.ReLU(inplace=True),
    )


class PatchEmbed(nn.Module):
    """Change resolution/width between blocks: 2x2 average pool when downsampling, then 1x1 conv + BN.

    Identity when neither resolution nor width changes (most blocks)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False) if stride == 2 else nn.Identity()
        if stride == 2 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout, eps=NORM_EPS))
        else:
            self.proj = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.pool(x))


class MHCA(nn.Module):
    """Multi-head convolutional attention: a 3x3 conv with one group per head, BN, ReLU, 1x1 projection.

    Each head mixes its 32 channels over a 3x3 neighbourhood; the projection then mixes across heads, the way the
    output projection of self-attention does."""

    def __init__(self, channels: int, head_dim: int = HEAD_DIM) -> None:
        super().__init__()
        if channels % head_dim:
            raise ValueError(f"MHCA channels ({channels}) must be a multiple of head_dim ({head_dim})")
        self.local = nn.Conv2d(channels, channels, 3, padding=1, groups=channels // head_dim, bias=False)
        self.norm = nn.BatchNorm2d(channels, eps=NORM_EPS)
        self.proj = nn.Conv2d(channels, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.norm(self.local(x))))


class SqueezeExcite(nn.Module):
    """Channel gating from the global average: reduce to `hidden` channels, ReLU, expand, hard-sigmoid."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * F.hardsigmoid(self.expand(F.relu(self.reduce(s))))


class LFFN(nn.Module):
    """Locality feed-forward network (LocalViT): expand, depthwise 3x3 (the locality), squeeze-excite, project.

    As in the reference, the squeeze-excite bottleneck is hidden // channels = the expansion ratio wide (3 or 2
    channels): the SE "reduction" there is set to the block width. Returns the branch only (no residual)."""

    def __init__(self, channels: int, expansion: int) -> None:
        super().__init__()
        hidden = channels * expansion
        self.body = nn.Sequential(
            nn.Conv2d(channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.Hardswish(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.Hardswish(),
            SqueezeExcite(hidden, hidden // channels),
            nn.Conv2d(hidden, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ECB(nn.Module):
    """Efficient convolution block: x = embed(x); x = x + MHCA(x); x = x + y + LFFN(y) with y = BN(x)."""

    kind = "ecb"

    def __init__(self, cin: int, cout: int, stride: int = 1, drop_path: float = 0.0, mlp_ratio: int = 3) -> None:
        super().__init__()
        self.out_channels = cout
        self.embed = PatchEmbed(cin, cout, stride)
        self.mhca = MHCA(cout)
        self.drop_path = DropPath(drop_path)
        self.norm = nn.BatchNorm2d(cout, eps=NORM_EPS)
        self.lffn = LFFN(cout, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.drop_path(self.mhca(x))
        y = self.norm(x)
        return x + y + self.lffn(y)  # the reference's LFFN has its own residual, nested in the block's


class EfficientSelfAttention(nn.Module):
    """E-MHSA: multi-head self-attention over all positions, with keys/values from a spatially reduced map.

    Queries come from every position; keys and values from the map average-pooled by sr x sr (then BN), which
    cuts the attention cost by sr^2 where maps are large. The window is clamped to the map, so a map smaller than
    sr is reduced to 1x1 at most, never to nothing. Plain matmul + softmax, for ONNX."""

    def __init__(
        self, dim: int, sr_ratio: int = 1, head_dim: int = HEAD_DIM, attn_drop: float = 0.0, proj_drop: float = 0.0
    ) -> None:
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"E-MHSA width ({dim}) must be a multiple of head_dim ({head_dim})")
        self.heads, self.head_dim, self.sr_ratio = dim // head_dim, head_dim, sr_ratio
        self.scale = head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.BatchNorm2d(dim, eps=NORM_EPS) if sr_ratio > 1 else nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, N, head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        kv = x
        if self.sr_ratio > 1:
            r = min(self.sr_ratio, h, w)  # shapes, not tensor values: fixed at trace time
            kv = self.norm(F.avg_pool2d(x, r, r, ceil_mode=True, count_include_pad=False))
        q = self._split_heads(self.q(x.flatten(2).transpose(1, 2)))
        kv = kv.flatten(2).transpose(1, 2)
        k, v = self._split_heads(self.k(kv)), self._split_heads(self.v(kv))
        attn = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1))
        out = (attn @ v).transpose(1, 2).reshape(b, h * w, c)
        out = self.proj_drop(self.proj(out))
        return out.transpose(1, 2).reshape(b, c, h, w)


class LTB(nn.Module):
    """Local transformer block: E-MHSA on a 75 % slice of the channels, MHCA on the rest, concat, LFFN.

    x = embed(x)                                     (cout * mix_block_ratio channels)
    x = x + E-MHSA(BN(x))                            global context
    z = proj(x);  z = z + MHCA(z)                    the remaining channels, local detail
    x = concat(x, z)                                 (cout channels)
    x = x + y + LFFN(y),  y = BN(x)
    """

    kind = "ltb"

    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int = 1,
        sr_ratio: int = 1,
        drop_path: float = 0.0,
        mlp_ratio: int = 2,
        mix_block_ratio: float = 0.75,
        attn_drop: float = 0.0,
        drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.out_channels = cout
        mhsa_ch = _round_to(int(cout * mix_block_ratio), HEAD_DIM)  # whole heads: 256 -> 192 + 64, 1024 -> 768 + 256
        mhca_ch = cout - mhsa_ch
        self.embed = PatchEmbed(cin, mhsa_ch, stride)
        self.norm1 = nn.BatchNorm2d(mhsa_ch, eps=NORM_EPS)
        self.attn = EfficientSelfAttention(mhsa_ch, sr_ratio, attn_drop=attn_drop, proj_drop=drop)
        self.attn_drop_path = DropPath(drop_path * mix_block_ratio)
        self.split = PatchEmbed(mhsa_ch, mhca_ch)
        self.mhca = MHCA(mhca_ch)
        self.mhca_drop_path = DropPath(drop_path * (1 - mix_block_ratio))
        self.norm2 = nn.BatchNorm2d(cout, eps=NORM_EPS)
        self.lffn = LFFN(cout, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn_drop_path(self.attn(self.norm1(x)))
        z = self.split(x)
        z = z + self.mhca_drop_path(self.mhca(z))
        x = torch.cat([x, z], dim=1)
        y = self.norm2(x)
        return x + y + self.lffn(y)


class MedViT(nn.Module):
    """MedViT classifier: stem, four hybrid stages (see `stage_plan`), BN, global average pool, linear head.

    Accepts any input whose sides are multiples of 32 (e.g. 64 or 224 px)."""

    def __init__(
        self,
        depths=(3, 4, 10, 3),
        stem_chs=(64, 32, 64),
        widths=(96, 192, 384, 768),
        ltb_widths=(256, 512, 1024),
        sr_ratios=(8, 4, 2, 1),
        num_classes: int = 1000,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        mix_block_ratio: float = 0.75,
        ecb_mlp_ratio: int = 3,
        ltb_mlp_ratio: int = 2,
    ) -> None:
        super().__init__()
        self.plan = stage_plan(depths, widths, ltb_widths)
        self.num_classes = num_classes
        s0, s1, s2 = stem_chs
        self.stem = nn.Sequential(
            conv_bn_relu(in_chans, s0, 2), conv_bn_relu(s0, s1, 1), conv_bn_relu(s1, s2, 1), conv_bn_relu(s2, s2, 2)
        )

        # stochastic depth grows linearly from 0 at the first block to drop_path_rate at the last
        rates = torch.linspace(0, drop_path_rate, sum(len(s) for s in self.plan)).tolist()
        cin, i, stages = s2, 0, []
        for stage_idx, blocks in enumerate(self.plan):
            layers = []
            for block_idx, (kind, cout) in enumerate(blocks):
                stride = 2 if stage_idx > 0 and block_idx == 0 else 1
                if kind == "ecb":
                    layers.append(ECB(cin, cout, stride, rates[i], ecb_mlp_ratio))
                else:
                    layers.append(
                        LTB(
                            cin,
                            cout,
                            stride,
                            sr_ratios[stage_idx],
                            rates[i],
                            ltb_mlp_ratio,
                            mix_block_ratio,
                            attn_drop_rate,
                            drop_rate,
                        )
                    )
                cin, i = cout, i + 1
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.num_features = cin
        self.norm = nn.BatchNorm2d(cin, eps=NORM_EPS)
        self.head = nn.Linear(cin, num_classes)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The reference's init: truncated normal (std 0.02) for every conv and linear, zero biases, BN at 1/0."""
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def forward_stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of each stage: strides 4, 8, 16, 32 and widths 96, 256, 512, 1024."""
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, 1024, H/32, W/32), normalised, before pooling."""
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> logits (B, num_classes)."""
        return self.head(self.forward_features(x).mean(dim=(2, 3)))


def medvit(name: str, num_classes: int = 1000, pretrained: bool = False, **overrides: Any) -> MedViT:
    """Build a MedViT variant by name (see CONFIGS); `overrides` replace config/constructor arguments.

    Inputs must be RGB with sides a multiple of 32 (the registry checks the configured size). Raises
    PretrainedUnavailable for pretrained=True: no weights are published in a loadable (safetensors or
    weights-only) form, and a random initialisation must never pass for pretrained weights.
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown MedViT variant {name!r}; choose one of {sorted(CONFIGS)}")
    if pretrained:
        raise PretrainedUnavailable(
            f"no pretrained weights for {name}: the MedViT authors' checkpoints are not published in a form this "
            "project can load safely (safetensors or a weights-only state dict on the Hub); set "
            "classifiers.models.MedViT.pretrained: false"
        )
    for timm_arg in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):  # what timm.create_model adds
        overrides.pop(timm_arg, None)
    return MedViT(**{**CONFIGS[name], "num_classes": num_classes, **overrides})


# timm entrypoints, so that `timm.create_model("medvit_small", num_classes=2)` builds it like any timm model
@register_model
def medvit_tiny(pretrained: bool = False, **kwargs: Any) -> MedViT:
    """MedViT-T (Manzari et al., 2023): depths (3, 4, 10, 3), ~31 M parameters at 1000 classes."""
    return medvit("medvit_tiny", pretrained=pretrained, **kwargs)


@register_model
def medvit_small(pretrained: bool = False, **kwargs: Any) -> MedViT:
    """MedViT-S (Manzari et al., 2023): depths (3, 4, 20, 3), the study's member."""
    return medvit("medvit_small", pretrained=pretrained, **kwargs)


@register_model
def medvit_large(pretrained: bool = False, **kwargs: Any) -> MedViT:
    """MedViT-L (Manzari et al., 2023): depths (3, 4, 30, 3)."""
    return medvit("medvit_large", pretrained=pretrained, **kwargs)

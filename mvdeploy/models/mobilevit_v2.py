"""MobileViTv2 (Mehta & Rastegari, TMLR 2023), numerically equal to transformers'
MobileViTV2ForImageClassification (tests/test_mobilevit_v2.py) and so to ml-cvnets.

Structure: 3x3 stem -> layer1 (1 MV2) -> layer2 (2 MV2) -> layer3..5 (stride-2 MV2 + MobileViTv2
block) -> global average pool -> linear; no 1x1 "exp" conv, unlike v1. The MobileViTv2 block is
depthwise 3x3 conv -> 1x1 conv to d -> unfold to [B, d, P, N] -> L pre-norm layers of separable
self-attention and a 1x1-conv FFN -> norm -> fold -> 1x1 conv + BatchNorm back to C; no concat
with the block input and no fusion conv.

Separable self-attention is linear in the number of tokens: one 1x1 conv gives a score per
token (softmax over the N patches), keys weighted by it and summed give one context vector per
patch pixel, which gates ReLU(values). Its "layer norm" is GroupNorm with one group, normalising
each sample over all of d x P x N, as ml-cvnets' LayerNorm2D and transformers do.

Module names follow mvdeploy's v1 network (stem, stages, local_conv, to_tokens, transformer,
norm, from_tokens, classifier), so layer groups and key maps read both the same way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mvdeploy.errors import ConfigError
from mvdeploy.models.mobilevit import ConvBNAct, GraphForm, InvertedResidual, padded_size
from mvdeploy.models.patches import Patch, PatchSizes
from mvdeploy.models.variants import V2_CFGS, MobileViTV2Cfg

# MobileViTv2 uses 2x2 patches in every stage (transformers' patch_size = 2): preset A
V2_PATCHES: PatchSizes = ((2, 2), (2, 2), (2, 2))
# its graph forms, as v1's GraphForm spells them: the fold is always rank 4 (unfold_v2) and the
# tokens and qkv fields do not apply; eager runs the native GroupNorm, exports the written-out one
V2_EAGER_FORM = GraphForm(fold="rank4")
V2_FORM = GraphForm(fold="rank4", norm="means")


def get_v2_cfg(name: str) -> MobileViTV2Cfg:
    try:
        return V2_CFGS[name]
    except KeyError:
        raise ConfigError(f"unknown MobileViTv2 model {name!r}: choose one of "
                          f"{', '.join(V2_CFGS)}") from None


def unfold_v2(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """[B, d, H, W] -> [B, d, P, N] in F.unfold's order (patch pixel p = i*pw + j, patch
    n = r*nw + c), with two 4-D transposes instead of im2col, so no tensor exceeds rank 4."""
    b, d, h, w = x.shape
    nh, nw = h // ph, w // pw
    x = x.reshape(b * d * nh, ph, nw, pw).transpose(1, 2)  # [B*d*nh, nw, ph, pw]
    return x.reshape(b, d, nh * nw, ph * pw).transpose(2, 3)  # [B, d, P, N]


def fold_v2(x: torch.Tensor, ph: int, pw: int, h: int, w: int) -> torch.Tensor:
    b, d = x.shape[:2]
    nh, nw = h // ph, w // pw
    x = x.transpose(2, 3).reshape(b * d * nh, nw, ph, pw).transpose(1, 2)  # [B*d*nh, ph, nw, pw]
    return x.reshape(b, d, h, w)


class GroupNorm1(nn.GroupNorm):
    """GroupNorm with one group (ml-cvnets' LayerNorm2D): each sample normalised over all of
    d x P x N, then a per-channel scale and shift; nn.GroupNorm's parameters and keys.

    `means=True` (the export form, V2_FORM) spells it with means over the last two dims
    (_mean) instead of aten.native_group_norm: XNNPACK delegates such a mean but not
    group_norm, which also cut the ExecuTorch graph so that XNNPACK refused it ("pass through
    arguments"); every other converter lowers the plain ops too. The eager default stays
    native, bit-identical to transformers; the two agree to float rounding (about 1e-5 of the
    logits, as far as transformers' own float32 is from float64; tests/test_mobilevit_v2.py)."""

    def __init__(self, channels: int, eps: float):
        super().__init__(1, channels, eps=eps)
        self.means = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.means:
            return super().forward(x)
        b, d = x.shape[:2]
        mean = self._mean(x, b, d)  # [B, 1, 1, 1]
        centred = x - mean
        var = self._mean(centred * centred, b, d)
        scale = self.weight.reshape(1, d, 1, 1) * torch.rsqrt(var + self.eps)
        return centred * scale + self.bias.reshape(1, d, 1, 1)

    @staticmethod
    def _mean(x: torch.Tensor, b: int, d: int) -> torch.Tensor:
        """The mean over d x P x N of [B, d, P, N] as two means over the last two dims (the
        reduction XNNPACK delegates): per channel over P x N, then over the d channel means.
        One mean over all d*P*N elements summed them in one run in XNNPACK, 1.9e-4 of the
        logits off at 256x256 (mobilevitv2_100), above the 1e-4 float32 gate; the two short
        runs are 4e-5 off. A mean over one dim is not delegated (it cut the graph 3-fold)."""
        return x.mean(dim=(2, 3), keepdim=True).reshape(b, 1, d, 1).mean(dim=(2, 3),
                                                                         keepdim=True)


class SeparableAttention(nn.Module):
    """Separable self-attention over [B, d, P, N]: cost linear in N."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim
        self.qkv = nn.Conv2d(dim, 1 + 2 * dim, 1)  # one score channel, then keys and values
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query, key, value = self.qkv(x).split([1, self.dim, self.dim], dim=1)
        scores = query.softmax(dim=-1)  # [B, 1, P, N]: over the patches
        context = (key * scores).sum(dim=-1, keepdim=True)  # [B, d, P, 1]
        return self.proj(F.relu(value) * context)


class ConvMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LinearTransformerLayer(nn.Module):
    """x + attention(norm(x)), then x + FFN(norm(x)); the norms are GroupNorm(1, d)."""

    def __init__(self, dim: int, mlp_hidden: int, eps: float):
        super().__init__()
        self.norm1 = GroupNorm1(dim, eps)
        self.attn = SeparableAttention(dim)
        self.norm2 = GroupNorm1(dim, eps)
        self.mlp = ConvMLP(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MobileViTV2Block(nn.Module):
    """Depthwise local conv -> 1x1 to d -> unfold -> transformer -> norm -> fold -> 1x1 to C."""

    def __init__(self, channels: int, dim: int, depth: int, *, patch: Patch,
                 ffn_multiplier: float, eps: float):
        super().__init__()
        self.patch = patch
        self.local_conv = ConvBNAct(channels, channels, 3, groups=channels)
        self.to_tokens = nn.Conv2d(channels, dim, 1, bias=False)
        hidden = int(ffn_multiplier * dim) // 16 * 16  # ml-cvnets keeps FFN widths at x16
        self.transformer = nn.ModuleList(
            LinearTransformerLayer(dim, hidden, eps) for _ in range(depth))
        self.norm = GroupNorm1(dim, eps)
        self.from_tokens = ConvBNAct(dim, channels, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.patch
        y = self.to_tokens(self.local_conv(x))  # [B, d, H, W]
        h, w = y.shape[-2:]
        hp, wp = padded_size(h, ph), padded_size(w, pw)
        resize = (hp, wp) != (h, w)
        if resize:  # as v1 does; transformers refuses such sizes, so this is not compared
            y = F.interpolate(y, size=(hp, wp), mode="bilinear", align_corners=False)
        tokens = unfold_v2(y, ph, pw)  # [B, d, P, N]
        for layer in self.transformer:
            tokens = layer(tokens)
        y = fold_v2(self.norm(tokens), ph, pw, hp, wp)
        if resize:
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return self.from_tokens(y)

    def extra_repr(self) -> str:
        return f"patch={self.patch}"


class MobileViTV2(nn.Module):
    """MobileViTv2 classifier. Input: [B, 3, H, W] float, H and W multiples of 32."""

    def __init__(self, cfg: MobileViTV2Cfg, *, num_classes: int = 1000,
                 patch_sizes: PatchSizes = V2_PATCHES, form: GraphForm | None = None):
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
        self.cfg, self.num_classes, self.patch_sizes = cfg, num_classes, patch_sizes
        self.form = V2_EAGER_FORM
        if form is not None:
            self.set_form(form)
        self.class_labels: list[str] | None = None
        self.preprocessing = None
        self.preprocessing_origin = "the published default (seeded weights)"
        self.checkpoint_path = None
        c = cfg.channels
        mv2 = {"expand_ratio": cfg.expand_ratio}
        self.stem = ConvBNAct(3, c[0], 3, stride=2)
        stages: list[nn.Module] = [
            nn.Sequential(InvertedResidual(c[0], c[1], stride=1, **mv2)),
            nn.Sequential(InvertedResidual(c[1], c[2], stride=2, **mv2),
                          InvertedResidual(c[2], c[2], stride=1, **mv2)),
        ]
        for i in range(3):
            stages.append(nn.Sequential(
                InvertedResidual(c[i + 2], c[i + 3], stride=2, **mv2),
                MobileViTV2Block(c[i + 3], cfg.attn_dims[i], cfg.depths[i],
                                 patch=patch_sizes[i], ffn_multiplier=cfg.ffn_multiplier,
                                 eps=cfg.layer_norm_eps)))
        self.stages = nn.Sequential(*stages)
        self.classifier = nn.Linear(c[5], num_classes)

    def flip_input_channels_(self) -> None:
        """Reverse the stem's input channels in place (BGR <-> RGB), exactly."""
        with torch.no_grad():
            self.stem.conv.weight.copy_(self.stem.conv.weight.flip(1))

    def set_form(self, form: GraphForm) -> None:
        """V2_EAGER_FORM or V2_FORM (how GroupNorm is spelt); another form is refused, not
        silently ignored."""
        if form not in (V2_EAGER_FORM, V2_FORM):
            raise ConfigError(f"MobileViTv2 has a rank-4 fold only, not the form {form}")
        for module in self.modules():
            if isinstance(module, GroupNorm1):
                module.means = form.norm == "means"
        self.form = form

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(pixel_values))  # [B, C5, H/32, W/32]
        return self.classifier(x.mean(dim=(2, 3)))

"""MobileViT v1 (Mehta & Rastegari, ICLR 2022), numerically equal to ml-cvnets and transformers.

Structure: 3x3 stem -> layer1 (1 MV2) -> layer2 (3 MV2) -> layer3..5 (stride-2 MV2 + MobileViT
block) -> 1x1 "exp" conv -> global average pool -> linear. The MobileViT block is
local 3x3 conv -> 1x1 conv to d -> unfold -> L pre-norm transformer layers -> LayerNorm -> fold
-> 1x1 conv back to C -> concat with the block input -> 3x3 fusion conv.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from mvdeploy.errors import ConfigError
from mvdeploy.models.patches import PATCH_PRESETS, Patch, PatchSizes
from mvdeploy.models.variants import (  # noqa: F401  (re-exported: where they lived)
    MODEL_CFGS,
    MobileViTCfg,
    check_resolution,
    get_model_cfg,
    interpolated_stages,
    list_models,
    make_divisible,
    padded_size,
    parse_resolution,
)

FoldImpl = Literal["nhwc", "rank4", "permute"]
FOLD_IMPLS: tuple[FoldImpl, ...] = ("nhwc", "rank4", "permute")
TOKEN_FORMS = ("2d", "3d")
QKV_FORMS = ("packed", "separate")
NORM_FORMS = ("native", "means")


@dataclass(frozen=True)
class GraphForm:
    """How the exported graph spells the same maths. Eager outputs agree in every form up to
    float rounding (tests/test_models.py); exporters and runtimes see different ops, so each
    format's backend picks the form its runtime runs fastest (FormatSpec.graph_form, measured
    in benchmarks/results/graph_forms.md)."""

    fold: FoldImpl = "nhwc"  # unfold/fold formulation (permute makes rank 6, the others 4)
    # 2d: tokens stay [B*P*N, d] between attentions, so every linear is a plain GEMM with no
    # reshape around it; 3d: [B*P, N, d] throughout (transformers' form)
    tokens: str = "2d"
    # separate: q, k and v from three linears on slices of the packed weight (no Split/SLICE
    # op); packed: one qkv linear, then split (the checkpoint's layout either way)
    qkv: str = "packed"
    # MobileViTv2's GroupNorm(1): native (aten.group_norm: bit-identical to transformers, the
    # eager default) or means (two means over a 4-D view: what XNNPACK delegates; exports).
    # v1 has LayerNorm only and keeps native.
    norm: str = "native"

    def __post_init__(self) -> None:
        for name, value, choices in (("fold", self.fold, FOLD_IMPLS),
                                     ("tokens", self.tokens, TOKEN_FORMS),
                                     ("qkv", self.qkv, QKV_FORMS),
                                     ("norm", self.norm, NORM_FORMS)):
            if value not in choices:
                raise ConfigError(f"unknown {name} form {value!r}: choose one of "
                                  f"{', '.join(choices)}")

    def recorded(self) -> dict[str, str]:
        """The fields a manifest records: `norm` only where it is not the default (v2's
        export form; v1 has no GroupNorm, so its manifests keep their three fields)."""
        fields = {"fold": self.fold, "tokens": self.tokens, "qkv": self.qkv}
        return fields if self.norm == "native" else {**fields, "norm": self.norm}

    def with_fold(self, fold: str) -> GraphForm:
        return replace(self, fold=fold)


PLAIN_FORM = GraphForm(fold="rank4", tokens="3d", qkv="packed")  # ml-cvnets / transformers


# ---------------------------------------------------------------- unfold / fold
# Both implementations order tokens identically: patch pixel p = i*pw + j (row-major inside a
# patch), patch n = r*nw + c (row-major over the grid). They differ only in tensor rank.


def unfold_permute(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """One 6-D reshape + permute: the plain formulation (rank 6: Core ML and ANE reject it)."""
    b, c, h, w = x.shape
    nh, nw = h // ph, w // pw
    x = x.reshape(b, c, nh, ph, nw, pw)  # [B, C, nh, ph, nw, pw]
    x = x.permute(0, 3, 5, 2, 4, 1)  # [B, ph, pw, nh, nw, C]
    return x.reshape(b * ph * pw, nh * nw, c)  # [B*P, N, C]


def fold_permute(x: torch.Tensor, batch: int, ph: int, pw: int, h: int, w: int) -> torch.Tensor:
    c = x.shape[-1]
    nh, nw = h // ph, w // pw
    x = x.reshape(batch, ph, pw, nh, nw, c)  # [B, ph, pw, nh, nw, C]
    x = x.permute(0, 5, 3, 1, 4, 2)  # [B, C, nh, ph, nw, pw]
    return x.reshape(batch, c, h, w)  # [B, C, H, W]


def unfold_rank4(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Same result with no tensor above rank 4 (Core ML, ANE, TFLite GPU delegate).

    pixel_unshuffle would do for square patches only, and torch.export decomposes it into a
    6-D view anyway, so this uses two 4-D transposes instead (the ml-cvnets formulation).
    """
    b, c, h, w = x.shape
    nh, nw = h // ph, w // pw
    x = x.reshape(b * c * nh, ph, nw, pw)  # [B*C*nh, ph, nw, pw]
    x = x.transpose(1, 2)  # [B*C*nh, nw, ph, pw]
    x = x.reshape(b, c, nh * nw, ph * pw)  # [B, C, N, P]
    x = x.transpose(1, 3)  # [B, P, N, C]
    return x.reshape(b * ph * pw, nh * nw, c)  # [B*P, N, C]


def fold_rank4(x: torch.Tensor, batch: int, ph: int, pw: int, h: int, w: int) -> torch.Tensor:
    c = x.shape[-1]
    nh, nw = h // ph, w // pw
    x = x.reshape(batch, ph * pw, nh * nw, c)  # [B, P, N, C]
    x = x.transpose(1, 3)  # [B, C, N, P]
    x = x.reshape(batch * c * nh, nw, ph, pw)  # [B*C*nh, nw, ph, pw]
    x = x.transpose(1, 2)  # [B*C*nh, ph, nw, pw]
    return x.reshape(batch, c, h, w)  # [B, C, H, W]


def unfold_nhwc(x: torch.Tensor, ph: int, pw: int) -> torch.Tensor:
    """Same result, rank <= 4, channels moved last first: ONNX Runtime then fuses the layout
    changes into its NCHWc reorders and LiteRT's NHWC convs need no transposes around them
    (XXS on ORT: 0.99 -> 0.92 of the transformers export, benchmarks/results/graph_forms.md)."""
    b, c, h, w = x.shape
    nh, nw = h // ph, w // pw
    x = x.permute(0, 2, 3, 1)  # [B, H, W, C]
    x = x.reshape(b, nh, ph, nw * pw * c).transpose(1, 2)  # [B, ph, nh, nw*pw*C]
    x = x.reshape(b * ph, nh * nw, pw, c).transpose(1, 2)  # [B*ph, pw, N, C]
    return x.reshape(b * ph * pw, nh * nw, c)  # [B*P, N, C]


def fold_nhwc(x: torch.Tensor, batch: int, ph: int, pw: int, h: int, w: int) -> torch.Tensor:
    c = x.shape[-1]
    nh, nw = h // ph, w // pw
    x = x.reshape(batch * ph, pw, nh * nw, c).transpose(1, 2)  # [B*ph, N, pw, C]
    x = x.reshape(batch, ph, nh, nw * pw * c).transpose(1, 2)  # [B, nh, ph, nw*pw*C]
    return x.reshape(batch, h, w, c).permute(0, 3, 1, 2)  # [B, C, H, W]


_UNFOLD = {"nhwc": (unfold_nhwc, fold_nhwc), "rank4": (unfold_rank4, fold_rank4),
           "permute": (unfold_permute, fold_permute)}


# ---------------------------------------------------------------- building blocks


class ConvBNAct(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> optional SiLU (ReLU with `relu`: DeepLabV3's ASPP)."""

    def __init__(self, cin: int, cout: int, kernel: int, *, stride: int = 1, groups: int = 1,
                 act: bool = True, relu: bool = False, dilation: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=(kernel - 1) // 2 * dilation,
                              dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        if act:
            self.act = nn.ReLU() if relu else nn.SiLU()


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 project (+ residual)."""

    def __init__(self, cin: int, cout: int, *, stride: int, expand_ratio: float,
                 dilation: int = 1):
        super().__init__()
        hidden = make_divisible(round(cin * expand_ratio))
        self.use_residual = stride == 1 and cin == cout
        self.expand = ConvBNAct(cin, hidden, 1)
        self.dw = ConvBNAct(hidden, hidden, 3, stride=stride, groups=hidden, dilation=dilation)
        self.project = ConvBNAct(hidden, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.use_residual else y


class Attention(nn.Module):
    """Multi-head self-attention with explicit matmuls (so MAC counters and quantisers see them)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"transformer dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.separate_qkv = False

    def forward(self, x: torch.Tensor, bp: int, n: int) -> torch.Tensor:
        """x: [BP, N, d] or [BP*N, d] (GraphForm.tokens); the result has x's shape."""
        d = x.shape[-1]
        if self.separate_qkv:  # three [.., d] linears on row blocks of the packed weight
            w, b = self.qkv.weight, self.qkv.bias
            parts = [F.linear(x, w[i * d:(i + 1) * d], b[i * d:(i + 1) * d]) for i in range(3)]
        else:  # split before reshaping so no tensor exceeds rank 4
            parts = list(self.qkv(x).chunk(3, dim=-1))
        q, k, v = (t.reshape(bp, n, self.num_heads, self.head_dim).transpose(1, 2)
                   for t in parts)  # 3 x [BP, h, N, hd]
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # [BP, h, N, N]
        out = torch.matmul(scores.softmax(dim=-1), v)  # [BP, h, N, hd]
        return self.proj(out.transpose(1, 2).reshape(x.shape))  # [BP, N, d] or [BP*N, d]


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: x + MHSA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, mlp_hidden)

    def forward(self, x: torch.Tensor, bp: int, n: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bp, n)
        return x + self.mlp(self.norm2(x))


class MobileViTBlock(nn.Module):
    """Local conv -> unfold -> transformer -> fold -> fuse with the block input."""

    def __init__(self, channels: int, dim: int, depth: int, *, patch: Patch, form: GraphForm,
                 num_heads: int, mlp_ratio: float, eps: float):
        super().__init__()
        self.patch = patch
        self.local_conv = ConvBNAct(channels, channels, 3)
        self.to_tokens = nn.Conv2d(channels, dim, 1, bias=False)
        self.transformer = nn.ModuleList(
            TransformerLayer(dim, num_heads, int(dim * mlp_ratio), eps) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.from_tokens = ConvBNAct(dim, channels, 1)
        self.fusion = ConvBNAct(2 * channels, channels, 3)
        self.set_form(form)

    def set_form(self, form: GraphForm) -> None:
        self.form = form
        self._unfold, self._fold = _UNFOLD[form.fold]
        for layer in self.transformer:
            layer.attn.separate_qkv = form.qkv == "separate"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.patch
        y = self.to_tokens(self.local_conv(x))  # [B, d, H, W]
        b, _, h, w = y.shape
        hp, wp = padded_size(h, ph), padded_size(w, pw)
        resize = (hp, wp) != (h, w)
        if resize:  # patch does not divide the map: resize up, and back after folding
            y = F.interpolate(y, size=(hp, wp), mode="bilinear", align_corners=False)
        tokens = self._unfold(y, ph, pw)  # [B*P, N, d]
        bp, n, d = tokens.shape
        if self.form.tokens == "2d":
            tokens = tokens.reshape(bp * n, d)  # [B*P*N, d]
        for layer in self.transformer:
            tokens = layer(tokens, bp, n)
        tokens = self.norm(tokens).reshape(bp, n, d)  # [B*P, N, d]
        y = self._fold(tokens, b, ph, pw, hp, wp)  # [B, d, hp, wp]
        if resize:
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        return self.fusion(torch.cat((x, self.from_tokens(y)), dim=1))

    def extra_repr(self) -> str:
        return f"patch={self.patch}, form={self.form}"


class MobileViT(nn.Module):
    """MobileViT v1 classifier. Input: [B, 3, H, W] float, H and W multiples of 32."""

    def __init__(self, cfg: MobileViTCfg, *, num_classes: int = 1000,
                 patch_sizes: PatchSizes = PATCH_PRESETS["A"], form: GraphForm | None = None):
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
        self.cfg = cfg
        self.num_classes = num_classes
        self.patch_sizes = patch_sizes
        form = form or GraphForm()
        self.form = form
        self.class_labels: list[str] | None = None  # filled from checkpoints that carry them
        self.preprocessing = None  # a checkpoint's Preprocessing (None: the published default)
        self.preprocessing_origin = "the published default (seeded weights)"
        self.checkpoint_path = None  # where load_pretrained read the weights
        c = cfg.channels
        self.stem = ConvBNAct(3, c[0], 3, stride=2)
        mv2 = {"expand_ratio": cfg.expand_ratio}
        stages: list[nn.Module] = [
            nn.Sequential(InvertedResidual(c[0], c[1], stride=1, **mv2)),
            nn.Sequential(
                InvertedResidual(c[1], c[2], stride=2, **mv2),
                InvertedResidual(c[2], c[2], stride=1, **mv2),
                InvertedResidual(c[2], c[2], stride=1, **mv2),
            ),
        ]
        for i in range(3):
            cin, cout = c[i + 2], c[i + 3]
            stages.append(nn.Sequential(
                InvertedResidual(cin, cout, stride=2, **mv2),
                MobileViTBlock(cout, cfg.hidden_sizes[i], cfg.depths[i], patch=patch_sizes[i],
                               form=form, num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_ratio,
                               eps=cfg.layer_norm_eps),
            ))
        self.stages = nn.Sequential(*stages)
        self.head_conv = ConvBNAct(c[5], c[6], 1)
        self.classifier = nn.Linear(c[6], num_classes)

    def flip_input_channels_(self) -> None:
        """Reverse the stem convolution's input channels, in place: a model trained on BGR then
        takes RGB (and back). Exact: conv(w, x[::-1]) = conv(w[:, ::-1], x), and the zero
        padding is the same in either order."""
        with torch.no_grad():
            self.stem.conv.weight.copy_(self.stem.conv.weight.flip(1))

    def set_form(self, form: GraphForm) -> None:
        """Switch every block to another graph form: same weights, same outputs, other ops."""
        for module in self.modules():
            if isinstance(module, MobileViTBlock):
                module.set_form(form)
        self.form = form

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.head_conv(self.stages(self.stem(pixel_values)))  # [B, exp, H/32, W/32]
        return self.classifier(x.mean(dim=(2, 3)))  # [B, num_classes]

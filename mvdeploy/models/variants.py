"""The MobileViT v1 and v2 variants and input-size rules, without torch: `mvdeploy models`,
`--help` and config checks read these without paying torch's import (mvdeploy.models.mobilevit
builds the network from them)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from mvdeploy.errors import ConfigError
from mvdeploy.models.patches import PatchSizes


@dataclass(frozen=True)
class MobileViTCfg:
    """One MobileViT v1 variant; channel numbers follow ml-cvnets / transformers' config names."""

    name: str
    # stem, layer1..layer5 outputs, exp conv: transformers' `neck_hidden_sizes`
    channels: tuple[int, int, int, int, int, int, int]
    hidden_sizes: tuple[int, int, int]  # transformer dim d of layer3..layer5
    expand_ratio: float  # MV2 expansion
    depths: tuple[int, int, int] = (2, 4, 3)  # transformer layers in layer3..layer5
    num_heads: int = 4
    mlp_ratio: float = 2.0
    layer_norm_eps: float = 1e-5
    # published reference numbers (paper; docs/reference.md), for display and tests
    paper_params: int = 0
    paper_gmacs: float = 0.0
    paper_top1: float = 0.0
    task: str = "classification"  # what the head predicts: a module of mvdeploy.tasks
    family: str = "v1"


MODEL_CFGS: dict[str, MobileViTCfg] = {
    cfg.name: cfg
    for cfg in (
        MobileViTCfg("mobilevit_xxs", (16, 16, 24, 48, 64, 80, 320), (64, 80, 96), 2.0,
                     paper_params=1_272_024, paper_gmacs=0.42, paper_top1=69.0),
        MobileViTCfg("mobilevit_xs", (16, 32, 48, 64, 80, 96, 384), (96, 120, 144), 4.0,
                     paper_params=2_317_848, paper_gmacs=1.05, paper_top1=74.8),
        MobileViTCfg("mobilevit_s", (16, 32, 64, 96, 128, 160, 640), (144, 192, 240), 4.0,
                     paper_params=5_578_632, paper_gmacs=2.03, paper_top1=78.4),
    )
}


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round channels to a multiple of `divisor` (at least `min_value`, default `divisor`),
    never more than 10 % down, as ml-cvnets and transformers do."""
    new_value = max(min_value or divisor, int(value + divisor / 2) // divisor * divisor)
    return int(new_value + divisor if new_value < 0.9 * value else new_value)


@dataclass(frozen=True)
class MobileViTV2Cfg:
    """One MobileViTv2 width (Mehta & Rastegari, "Separable Self-attention for Mobile Vision
    Transformers", TMLR 2023): every channel count is the width multiplier times a base,
    rounded as ml-cvnets and transformers' MobileViTV2Config do."""

    name: str
    width: float  # width_multiplier
    base_attn_dims: tuple[int, int, int] = (128, 192, 256)  # base_attn_unit_dims
    depths: tuple[int, int, int] = (2, 4, 3)  # n_attn_blocks
    expand_ratio: float = 2.0
    ffn_multiplier: float = 2.0
    layer_norm_eps: float = 1e-5
    # reference numbers: parameters as transformers' MobileViTV2ForImageClassification counts
    # them (tests/test_mobilevit_v2.py), ImageNet top-1 at 256x256 from the paper (Table 1 of
    # arXiv 2206.02680, docs/reference.md); no published MACs are quoted (0: not shown)
    paper_params: int = 0
    paper_top1: float = 0.0
    paper_gmacs: float = 0.0
    task: str = "classification"
    family: str = "v2"

    @property
    def channels(self) -> tuple[int, int, int, int, int, int]:
        """Stem, layer1..layer5 outputs."""
        w = self.width
        return (make_divisible(min(64.0, max(16.0, 32 * w)), 8, 16), make_divisible(64 * w, 16),
                *(make_divisible(base * w, 8) for base in (128, 256, 384, 512)))

    @property
    def attn_dims(self) -> tuple[int, int, int]:
        return tuple(make_divisible(base * self.width, 8) for base in self.base_attn_dims)


# the paper's seven widths; timm and transformers name them the same way (mobilevitv2_050 ...)
V2_CFGS: dict[str, MobileViTV2Cfg] = {
    f"mobilevitv2_{round(w * 100):03d}": MobileViTV2Cfg(
        f"mobilevitv2_{round(w * 100):03d}", w, paper_params=params, paper_top1=top1)
    for w, params, top1 in ((0.5, 1_370_593, 70.2), (0.75, 2_866_009, 75.6),
                            (1.0, 4_901_841, 78.1), (1.25, 7_478_089, 79.6),
                            (1.5, 10_594_753, 80.4), (1.75, 14_251_833, 80.8),
                            (2.0, 18_449_329, 81.2))
}

OUTPUT_STRIDES = (8, 16, 32)  # what transformers' segmentation backbones offer


@dataclass(frozen=True)
class DeepLabV3Cfg:
    """DeepLabV3 segmentation on a MobileViT backbone, as Apple trained it (ml-cvnets) and
    transformers builds it (MobileViT(V2)ForSemanticSegmentation): the backbone's last stage
    feeds an ASPP head; strides past `output_stride` become dilations, so the logits come out
    at 1/output_stride of the input (32x32 for 512x512 at 16). Defaults are the published
    checkpoints' (their config.json; transformers' convert_mlcvnets_to_pytorch.py)."""

    name: str
    backbone: str  # the classification variant whose stem and stages it uses
    aspp_channels: int
    atrous_rates: tuple[int, int, int]
    output_stride: int = 16
    num_classes: int = 21  # PASCAL VOC: background + 20 classes
    resolution: int = 512
    paper_miou: float = 0.0  # PASCAL VOC val mIoU from the model card (docs/reference.md)
    task: str = "segmentation"

    @property
    def family(self) -> str:
        return ALL_CFGS[self.backbone].family


SEG_CFGS: dict[str, DeepLabV3Cfg] = {
    cfg.name: cfg
    for cfg in (
        *(DeepLabV3Cfg(f"deeplabv3_{v}", v, 256, (6, 12, 18), paper_miou=miou)
          for v, miou in (("mobilevit_xxs", 73.6), ("mobilevit_xs", 77.1),
                          ("mobilevit_s", 79.1))),
        # v2: what ml-cvnets trains DeepLabV3-MobileViTv2 on PASCAL VOC with
        # (config/segmentation/pascal_voc/deeplabv3_mobilevitv2.yaml: output stride 16, ASPP
        # 512 channels, rates 6/12/18); 12/24/36 is only transformers' converter's fallback
        # and ml-cvnets' ADE20K config (output stride 8)
        *(DeepLabV3Cfg(f"deeplabv3_{v}", v, 512, (6, 12, 18)) for v in V2_CFGS),
    )
}


ModelCfg = MobileViTCfg | MobileViTV2Cfg
ALL_CFGS: dict[str, ModelCfg] = {**MODEL_CFGS, **V2_CFGS}
FAMILIES = ("v1", "v2")


def list_models(family: str | None = None) -> list[str]:
    """Every variant's name, or one family's ("v1": MobileViT, "v2": MobileViTv2)."""
    return [name for name, cfg in ALL_CFGS.items() if family in (None, cfg.family)]


def get_model_cfg(name: str) -> ModelCfg | DeepLabV3Cfg:
    """A classification variant's config, or a segmentation model's (SEG_CFGS)."""
    try:
        return ALL_CFGS[name] if name in ALL_CFGS else SEG_CFGS[name]
    except KeyError:
        looks_like_path = any(c in str(name) for c in "/\\.") or Path(str(name)).exists()
        hint = " (a checkpoint goes to --weights; --model names the variant)" \
            if looks_like_path else ""
        raise ConfigError(
            f"unknown model {name!r}: choose one of {', '.join([*ALL_CFGS, *SEG_CFGS])}{hint}"
        ) from None


def padded_size(size: int, patch: int) -> int:
    """Feature-map size after resizing up to the next multiple of the patch (ml-cvnets rule)."""
    return int(math.ceil(size / patch) * patch)


def parse_resolution(spec: str | int | tuple[int, int]) -> tuple[int, int]:
    """'256' -> (256, 256); '320x256' -> (height 320, width 256); checked for multiples of 32."""
    if isinstance(spec, int):
        size = (spec, spec)
    elif isinstance(spec, tuple):
        size = spec
    else:
        parts = spec.strip().lower().split("x")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(
                f"bad resolution {spec!r}: use HEIGHTxWIDTH such as 320x256, or one number (256)"
            )
        size = (int(parts[0]), int(parts[-1]))
    check_resolution(*size)
    return size


def check_resolution(height: int, width: int) -> None:
    """MobileViT downsamples 5 times: both sides must be positive multiples of 32."""
    for side, value in (("height", height), ("width", width)):
        if value < 32 or value % 32:
            raise ConfigError(
                f"input {side} {value} is not a multiple of 32: use e.g. "
                f"{max(32, round(value / 32) * 32)}"
            )


def interpolated_stages(patch_sizes: PatchSizes, height: int, width: int) -> list[int]:
    """Which MobileViT stages (0..2 = strides 8/16/32) must resize because the patch doesn't fit."""
    out = []
    for i, (ph, pw) in enumerate(patch_sizes):
        stride = 8 * 2**i
        h, w = height // stride, width // stride
        if (padded_size(h, ph), padded_size(w, pw)) != (h, w):
            out.append(i)
    return out


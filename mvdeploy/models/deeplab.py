"""DeepLabV3 segmentation on a MobileViT (v1 or v2) backbone.

As transformers' MobileViTForSemanticSegmentation / MobileViTV2ForSemanticSegmentation build it
(and ml-cvnets trained it): the classifier's stem and five stages, with the stride-2 MV2 block
of each stage past `output_stride` made stride 1 (and, past the first such stage, dilated), then
ASPP on the last stage (1x1, three dilated 3x3 and an image-pooling branch, each conv + BN +
ReLU, concatenated and projected) and a 1x1 classifier. Output: per-pixel class logits
[B, classes, H/output_stride, W/output_stride], not upsampled (as transformers returns them).
"""

from __future__ import annotations

import torch
from torch import nn

from mvdeploy.errors import ConfigError
from mvdeploy.models.mobilevit import ConvBNAct, GraphForm, InvertedResidual, MobileViT
from mvdeploy.models.patches import PATCH_PRESETS, PatchSizes
from mvdeploy.models.variants import OUTPUT_STRIDES, DeepLabV3Cfg, get_model_cfg


class ASPPPooling(nn.Module):
    """The image-level branch: global mean -> 1x1 conv + BN + ReLU -> spread over the map.
    transformers upsamples the 1x1 map bilinearly, which for one pixel is the same value
    everywhere: written as a broadcast sum with zeros of the map's size, so no converter sees
    a resize from 1x1 (an expand became TFLite's BROADCAST_TO, which LiteRT refused after
    the layout pass, and Core ML's tile, which the reference executor does not run; coremltools
    has no new_ones). Adding zeros is exact."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv_1x1 = ConvBNAct(cin, cout, 1, relu=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv_1x1(x.mean(dim=(2, 3), keepdim=True))
        return pooled + torch.zeros_like(x[:, :1])


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates: tuple[int, int, int]):
        super().__init__()
        self.convs = nn.ModuleList([
            ConvBNAct(cin, cout, 1, relu=True),
            *(ConvBNAct(cin, cout, 3, relu=True, dilation=r) for r in rates),
            ASPPPooling(cin, cout),
        ])
        self.fuse = ConvBNAct(5 * cout, cout, 1, relu=True)  # transformers' aspp.project

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3(nn.Module):
    """DeepLabV3-MobileViT. Input: [B, 3, H, W] float, H and W multiples of 32."""

    def __init__(self, cfg: DeepLabV3Cfg, *, num_classes: int | None = None,
                 patch_sizes: PatchSizes | None = None, form: GraphForm | None = None):
        """`cfg` carries the head's shape (a checkpoint's config.json sets it: weights.py)."""
        super().__init__()
        self.cfg = cfg
        self.backbone_cfg = get_model_cfg(cfg.backbone)
        self.num_classes = num_classes or cfg.num_classes
        self.output_stride = cfg.output_stride
        if self.output_stride not in OUTPUT_STRIDES:
            raise ConfigError(f"output_stride {self.output_stride} is not supported: choose one "
                              f"of {', '.join(map(str, OUTPUT_STRIDES))}")
        if self.backbone_cfg.family == "v2":
            from mvdeploy.models.mobilevit_v2 import MobileViTV2 as backbone_class
        else:
            backbone_class = MobileViT
        backbone = backbone_class(self.backbone_cfg, num_classes=1, form=form,
                                  patch_sizes=patch_sizes or PATCH_PRESETS["A"])
        self.patch_sizes, self.form = backbone.patch_sizes, backbone.form
        self.stem, self.stages = backbone.stem, backbone.stages
        self._backbone_class = type(backbone)
        self._dilate()
        c = self.backbone_cfg.channels
        self.aspp = ASPP(c[5], cfg.aspp_channels, cfg.atrous_rates)
        self.classifier = nn.Conv2d(cfg.aspp_channels, self.num_classes, 1)
        self.class_labels: list[str] | None = None
        self.preprocessing = None
        self.preprocessing_origin = "the published default (seeded weights)"
        self.checkpoint_path = None

    def _dilate(self) -> None:
        """transformers' rule: output stride 16 makes stage 5's downsampling block stride 1;
        8 does so for stages 4 and 5, stage 5's depthwise conv then dilated 2. The block is
        rebuilt (its weights' shapes do not change)."""
        stages = {16: (4,), 8: (3, 4)}.get(self.output_stride, ())
        c, dilation = self.backbone_cfg.channels, 1
        for index in stages:
            dilation *= 2
            self.stages[index][0] = InvertedResidual(
                c[index], c[index + 1], stride=1, dilation=max(1, dilation // 2),
                expand_ratio=self.backbone_cfg.expand_ratio)

    def set_form(self, form: GraphForm) -> None:
        """The backbone's graph forms (v1's fold and attention spellings, v2's GroupNorm), set
        by the backbone class's own method on these same blocks."""
        self._backbone_class.set_form(self, form)

    def flip_input_channels_(self) -> None:
        """Reverse the stem's input channels in place (BGR <-> RGB), exactly."""
        self._backbone_class.flip_input_channels_(self)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.stages(self.stem(pixel_values))
        return self.classifier(self.aspp(features))

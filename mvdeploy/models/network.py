"""The network class of a variant: MobileViT (v1), MobileViTV2 (v2) or DeepLabV3 on either.

One place that knows both classes, so the factory (seeded weights) and the checkpoint loader
build the same network without importing each other."""

from __future__ import annotations

from torch import nn

from mvdeploy.models.mobilevit import GraphForm, MobileViT
from mvdeploy.models.patches import PatchSizes
from mvdeploy.models.variants import DeepLabV3Cfg, ModelCfg


def build_network(cfg: ModelCfg | DeepLabV3Cfg, *, num_classes: int = 1000,
                  patch_sizes: PatchSizes, form: GraphForm | None = None) -> nn.Module:
    """`cfg`'s network, PyTorch-initialised, in training mode (as nn.Module builds it)."""
    if cfg.task == "segmentation":
        from mvdeploy.models.deeplab import DeepLabV3

        return DeepLabV3(cfg, num_classes=num_classes, patch_sizes=patch_sizes, form=form)
    if cfg.family == "v2":
        from mvdeploy.models.mobilevit_v2 import MobileViTV2

        return MobileViTV2(cfg, num_classes=num_classes, patch_sizes=patch_sizes, form=form)
    return MobileViT(cfg, num_classes=num_classes, patch_sizes=patch_sizes, form=form)

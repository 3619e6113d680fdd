"""The MobileViT model family and checkpoint import."""

from mvdeploy.models.factory import INITS, create_model
from mvdeploy.models.mobilevit import (
    FOLD_IMPLS,
    MODEL_CFGS,
    PLAIN_FORM,
    GraphForm,
    MobileViT,
    MobileViTCfg,
    check_resolution,
    get_model_cfg,
    interpolated_stages,
    list_models,
    parse_resolution,
)
from mvdeploy.models.patches import (
    PATCH_PRESETS,
    PatchSizes,
    check_attention_memory,
    format_patch_sizes,
    parse_patch_sizes,
)

__all__ = [
    "FOLD_IMPLS",
    "INITS",
    "MODEL_CFGS",
    "PATCH_PRESETS",
    "PLAIN_FORM",
    "GraphForm",
    "MobileViT",
    "MobileViTCfg",
    "PatchSizes",
    "check_attention_memory",
    "check_resolution",
    "create_model",
    "format_patch_sizes",
    "get_model_cfg",
    "interpolated_stages",
    "list_models",
    "parse_patch_sizes",
    "parse_resolution",
]

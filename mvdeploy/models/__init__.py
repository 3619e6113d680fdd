"""The MobileViT model family and checkpoint import.

Names load on first use (PEP 562), so `from mvdeploy.models.variants import ...` and the
torch-free names below cost no torch import; the network itself (`create_model`, `MobileViT`)
imports torch when it is first asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "INITS": "factory", "create_model": "factory",
    "FOLD_IMPLS": "mobilevit", "PLAIN_FORM": "mobilevit", "GraphForm": "mobilevit",
    "MobileViT": "mobilevit",
    "MODEL_CFGS": "variants", "MobileViTCfg": "variants", "check_resolution": "variants",
    "get_model_cfg": "variants", "interpolated_stages": "variants", "list_models": "variants",
    "parse_resolution": "variants",
    "PATCH_PRESETS": "patches", "PatchSizes": "patches", "check_attention_memory": "patches",
    "format_patch_sizes": "patches", "parse_patch_sizes": "patches",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value

"""The peer baseline: the same weights in `transformers`' MobileViT(V2)ForImageClassification,
exported the plain way (each format's `plain_export`: the converter's one documented call),
no mvdeploy graph changes. It shows what mvdeploy's model and export path cost or save."""

from __future__ import annotations

from pathlib import Path

import torch

from mvdeploy.errors import MissingDependencyError
from mvdeploy.models import create_model
from mvdeploy.models.weights import export_state_dict


class _Logits(torch.nn.Module):
    """transformers returns an output object; converters want a tensor."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def transformers_model(name: str, weights: str) -> torch.nn.Module:
    """transformers' MobileViT or MobileViTV2 (patch 2 at every stage) holding the weights of
    `weights`."""
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError("transformers", "dev", "the peer baseline") from None
    ours = create_model(name, weights=weights)
    cfg = ours.cfg
    if cfg.family == "v2":
        config = transformers.MobileViTV2Config(width_multiplier=cfg.width,
                                                num_labels=ours.num_classes)
        model = transformers.MobileViTV2ForImageClassification(config)
    else:
        config = transformers.MobileViTConfig(hidden_sizes=list(cfg.hidden_sizes),
                                              neck_hidden_sizes=list(cfg.channels),
                                              expand_ratio=cfg.expand_ratio,
                                              num_labels=ours.num_classes)
        model = transformers.MobileViTForImageClassification(config)
    model.load_state_dict(export_state_dict(ours, "huggingface"), strict=True)
    return _Logits(model.eval()).eval()


def export_peer(name: str, weights: str, fmt: str, example: torch.Tensor, path: Path) -> None:
    """Export the transformers model the way its users would, without mvdeploy's pipeline."""
    from mvdeploy.backends import get_backend, spec

    if not spec(fmt).peer:
        raise ValueError(f"the peer baseline has no plain export to {fmt}")
    get_backend(fmt).plain_export(transformers_model(name, weights), example, path)

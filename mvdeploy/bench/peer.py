"""The peer baseline: the same weights in `transformers`' MobileViTForImageClassification,
exported the plain way (torch.onnx.export with dynamo, litert_torch.convert), no mvdeploy
graph changes. It shows what mvdeploy's model and export path cost or save."""

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
    """transformers' MobileViT (patch 2 at every stage) holding the weights of `weights`."""
    try:
        from transformers import MobileViTConfig, MobileViTForImageClassification
    except ImportError:
        raise MissingDependencyError("transformers", "dev", "the peer baseline") from None
    ours = create_model(name, weights=weights)
    cfg = ours.cfg
    config = MobileViTConfig(hidden_sizes=list(cfg.hidden_sizes),
                             neck_hidden_sizes=list(cfg.channels),
                             expand_ratio=cfg.expand_ratio, num_labels=ours.num_classes)
    model = MobileViTForImageClassification(config)
    model.load_state_dict(export_state_dict(ours, "huggingface"), strict=True)
    return _Logits(model.eval()).eval()


def export_peer(name: str, weights: str, fmt: str, example: torch.Tensor, path: Path) -> None:
    """Export the transformers model the way its users would, without mvdeploy's pipeline."""
    model = transformers_model(name, weights)
    if fmt == "onnx":
        torch.onnx.export(model, (example,), str(path), dynamo=True,
                          input_names=["pixel_values"], output_names=["logits"])
    elif fmt == "tflite":
        import litert_torch

        litert_torch.convert(model, (example,)).export(str(path))
    else:
        raise ValueError(f"the peer baseline exports onnx and tflite, not {fmt}")

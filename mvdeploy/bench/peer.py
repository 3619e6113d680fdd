"""The peer baseline: the same weights in `transformers`' MobileViT(V2)ForImageClassification
(or ...ForSemanticSegmentation for DeepLabV3),
exported the plain way (each format's `plain_export`: the converter's one documented call),
no mvdeploy graph changes. It shows what mvdeploy's model and export path cost or save."""

from __future__ import annotations

from pathlib import Path

import torch

from mvdeploy.errors import MissingDependencyError
from mvdeploy.models import create_model
from mvdeploy.models.weights import export_state_dict, hf_model_config


class _Logits(torch.nn.Module):
    """transformers returns an output object; converters want a tensor."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def transformers_model(name: str, weights: str) -> torch.nn.Module:
    """transformers' MobileViT or MobileViTV2 (patch 2 at every stage), classifier or DeepLabV3,
    holding the weights of `weights`."""
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError("transformers", "dev", "the peer baseline") from None
    ours = create_model(name, weights=weights)
    # the config.json mvdeploy writes for Hugging Face folders (v1 or v2), read by
    # transformers' own auto classes: the peer is exactly the model a hub user would load
    conf = hf_model_config(ours, (256, 256))  # image_size only names the training size
    config = transformers.AutoConfig.for_model(conf.pop("model_type"), **conf)
    # the task's head: ...ForImageClassification, or ...ForSemanticSegmentation (DeepLabV3)
    model = getattr(transformers, conf["architectures"][0])(config)
    model.load_state_dict(export_state_dict(ours, "huggingface"), strict=True)
    return _Logits(model.eval()).eval()


def export_peer(name: str, weights: str, fmt: str, example: torch.Tensor, path: Path) -> None:
    """Export the transformers model the way its users would, without mvdeploy's pipeline."""
    from mvdeploy.backends import get_backend, spec

    if not spec(fmt).peer:
        raise ValueError(f"the peer baseline has no plain export to {fmt}")
    get_backend(fmt).plain_export(transformers_model(name, weights), example, path)

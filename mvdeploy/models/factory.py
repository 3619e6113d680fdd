"""Build a MobileViT (v1 or v2) by name: seeded input-sensitive weights, or a checkpoint's.

Kept apart from the architecture file so that the model definition and the checkpoint loader
never import each other (the split timm makes between a model file and its builder).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import torch
from torch import nn

from mvdeploy.errors import ConfigError
from mvdeploy.models.mobilevit import GraphForm
from mvdeploy.models.network import build_network
from mvdeploy.models.patches import PatchSizes, parse_patch_sizes
from mvdeploy.models.variants import get_model_cfg

Init = Literal["photos", "random"]
INITS: tuple[Init, ...] = ("photos", "random")


@lru_cache(maxsize=8)
def _seeded_state(name: str, num_classes: int, patches: PatchSizes, seed: int) -> dict:
    """The input-sensitive seeded weights (mvdeploy.models.init), initialised in the default
    graph form (whose packed qkv linear the alignment hooks see), so every form gets the same
    weights for a seed."""
    from mvdeploy.models.init import align_to_inputs_, calibrate_, smooth_kernels_

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(get_model_cfg(name), num_classes=num_classes,
                              patch_sizes=patches)
        align_to_inputs_(smooth_kernels_(model), model.classifier)
        calibrate_(model, model.classifier)
    return {k: v.clone() for k, v in model.state_dict().items()}


def create_model(name: str, *, num_classes: int | None = None,
                 patch_sizes: str | PatchSizes | list = "A", form: GraphForm | None = None,
                 weights: str | None = None, init: Init = "photos", seed: int = 0) -> nn.Module:
    """A MobileViT (v1: MobileViT, v2: MobileViTV2) in eval mode.

    `weights`: a Hugging Face Hub id (`apple/mobilevit-small`, `timm/mobilevit_xxs.cvnets_in1k`,
    `org/name@revision`), a Hugging Face or timm model directory, an ml-cvnets `.pt`, or an
    mvdeploy state dict; the class count then comes from the checkpoint unless `num_classes`
    is given (and must match). Without weights the model is seeded from `seed`, and with
    `init="photos"` (the default) made input-sensitive (mvdeploy.models.init); `init="random"`
    is PyTorch's plain initialisation, whose outputs barely depend on the input: use it only
    where no output is looked at (parameter or MAC counts).
    """
    cfg = get_model_cfg(name)
    patches = parse_patch_sizes(patch_sizes)
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}: choose one of {', '.join(INITS)}")
    if weights is None:
        classes = num_classes or getattr(cfg, "num_classes", 1000)  # DeepLabV3Cfg: 21
        with torch.random.fork_rng(devices=[]):  # the caller's random stream is left alone
            torch.manual_seed(seed)
            model = build_network(cfg, num_classes=classes, patch_sizes=patches)
        if init == "photos":  # seconds of work, so made once per process and settings
            model.load_state_dict(_seeded_state(name, classes, patches, seed))
        if form is not None:
            model.set_form(form)
        return model.eval()
    from mvdeploy.models.weights import load_pretrained

    model = load_pretrained(weights, patch_sizes=patches, form=form)
    if model.cfg.name != name:
        raise ConfigError(
            f"checkpoint {weights} holds {model.cfg.name}, not {name}: "
            f"pass --model {model.cfg.name}"
        )
    if num_classes is not None and num_classes != model.num_classes:
        raise ConfigError(
            f"checkpoint {weights} has {model.num_classes} classes, not {num_classes}"
        )
    return model

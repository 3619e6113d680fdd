"""Seeded weights whose outputs depend on the input, for exports and tests without a checkpoint.

A MobileViT with PyTorch's default initialisation gives nearly the same logits for every photo
(they vary across photos by about 1e-4 of their size and the top-1 class never changes), so any
fidelity figure measured on it only says how well a constant is reproduced. A data-dependent
initialisation fixes that cheaply: BatchNorm running statistics are set from real photos (the
bundled samples), which keeps every layer's activations at unit scale for real inputs, and the
classifier is scaled so the logits spread by about 1 across classes and photos. The result
tells photos apart (about half the photos get a top-1 class of their own), is deterministic
for a seed, and takes well under a second.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

INIT_RESOLUTION = 256  # BatchNorm statistics are taken at the published input size


@lru_cache(maxsize=1)
def _init_photos() -> np.ndarray:
    from mvdeploy.data import load_images, sample_image_paths

    images, _, _ = load_images(sample_image_paths(), INIT_RESOLUTION, INIT_RESOLUTION)
    return images


@torch.no_grad()
def calibrate_(model: nn.Module, head: nn.Linear, images: np.ndarray | None = None,
               forward=None) -> nn.Module:
    """Set every BatchNorm's running statistics from `images` (default: the bundled photos) and
    scale `head` so the logits have unit standard deviation; works on any MobileViT module
    (mvdeploy's or transformers'). `forward(model, x)` returns logits (default: model(x))."""
    forward = forward or (lambda m, x: m(x))
    x = torch.from_numpy(_init_photos() if images is None else images)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    forward(model, x)
    model.eval()
    for norm in norms:
        norm.momentum = 0.1
    logits = forward(model, x)
    head.weight.div_(logits.std().clamp_min(1e-6))
    head.bias.zero_()
    return model


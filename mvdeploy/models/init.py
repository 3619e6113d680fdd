"""Seeded weights whose outputs depend on the input, for exports and tests without a checkpoint.

A MobileViT with PyTorch's default initialisation gives nearly the same logits for every photo
(they vary across photos by about 1e-4 of their size and the top-1 class never changes), so any
fidelity figure measured on it only says how well a constant is reproduced. A data-dependent
initialisation fixes that cheaply: BatchNorm running statistics are set from real photos (the
bundled samples), which keeps every layer's activations at unit scale for real inputs, and the
classifier is scaled so the logits spread by about 1 across classes and photos. The result
tells photos apart, is deterministic for a seed, and takes well under a second.

Before that, the random weights are shaped like trained ones in two ways, because plain random
weights make a network that amplifies noise: it lost 25 dB more to half an 8-bit pixel step
than the trained fixture (benchmarks/results/conditioning.md), so no int8 scheme could hold on
it, while trained networks are known to tolerate int8.
- `smooth_kernels_`: random 3x3 kernels are high-pass filters, and photos keep their power at
  low spatial frequencies, so each such layer raises pixel noise relative to the signal.
  Trained 3x3 kernels are mostly smooth (colour blobs, low-frequency edges).
- `align_to_inputs_`: a random conv or linear reads every direction of its input equally, and
  BatchNorm then scales up the outputs that happen to read only low-variance (noise-like)
  directions. Trained layers read the directions their input actually varies in, so every
  conv and linear is projected onto the principal directions that hold 99.9 % of its input's
  variance on the photos (a data-dependent init, like Kraehenbuehl et al., ICLR 2016).
With both, the seeded network is about as well conditioned as the trained fixture and still
gives the bundled photos top-1 classes of their own.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

INIT_RESOLUTION = 256  # BatchNorm statistics are taken at the published input size


@lru_cache(maxsize=1)
def _init_photos() -> np.ndarray:
    from mvdeploy.data import load_images, sample_image_paths

    images, _, _ = load_images(sample_image_paths(), INIT_RESOLUTION, INIT_RESOLUTION)
    return images


ALIGNED_VARIANCE = 0.999  # share of an input's variance a layer's weights may read
_ALIGN_ROWS = 8_192  # input vectors sampled per layer for its covariance

# a 3x3 binomial (low-pass) kernel of unit norm, and how much random high-pass detail is mixed in
_SMOOTH = torch.outer(torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 2.0, 1.0]))
_SMOOTH = _SMOOTH / _SMOOTH.norm()
_DETAIL = 0.1


@torch.no_grad()
def smooth_kernels_(model: nn.Module) -> nn.Module:
    """Make every 3x3 conv kernel a random gain times a binomial blur, plus a little of its
    random kernel (draws from torch's global generator: seed it first)."""
    for conv in model.modules():
        if isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3):
            cout, cin = conv.weight.shape[:2]
            gain = torch.randn(cout, cin, 1, 1) / cin**0.5
            detail = conv.weight / conv.weight.std() * gain.std() / 3
            conv.weight.copy_((1 - _DETAIL) * gain * _SMOOTH + _DETAIL * detail)
    return model


@torch.no_grad()
def align_to_inputs_(model: nn.Module, head: nn.Linear, images: np.ndarray | None = None
                     ) -> nn.Module:
    """Project each dense conv's and linear's weight rows (not `head`'s) onto the principal
    subspace of its input on `images` (default: the bundled photos), keeping row norms.

    One forward pass in training mode (BatchNorm on batch statistics, so activations stay at
    unit scale): a pre-hook sets each layer's weights from the input it receives, which already
    reflects the layers before it."""
    x = torch.from_numpy(_init_photos() if images is None else images)
    generator = torch.Generator().manual_seed(0)

    def align(layer: nn.Module, args: tuple) -> None:
        inputs = args[0]
        if isinstance(layer, nn.Conv2d):
            rows = F.unfold(inputs, layer.kernel_size, padding=layer.padding,
                            stride=layer.stride).transpose(1, 2)
        else:
            rows = inputs
        rows = rows.reshape(-1, layer.weight[0].numel())
        rows = rows[torch.randperm(len(rows), generator=generator)[:_ALIGN_ROWS]]
        variance, directions = torch.linalg.eigh(torch.cov(rows.T))  # ascending
        variance, directions = variance.flip(0), directions.flip(1)
        kept = int((variance.cumsum(0) / variance.sum() < ALIGNED_VARIANCE).sum()) + 1
        basis = directions[:, :kept].float()
        weight = layer.weight.reshape(len(layer.weight), -1)
        aligned = weight @ basis @ basis.T
        aligned *= weight.norm(dim=1, keepdim=True) / aligned.norm(dim=1, keepdim=True).clamp_min(
            1e-12)
        layer.weight.copy_(aligned.reshape(layer.weight.shape))

    layers = [m for m in model.modules() if m is not head and (
        isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1))]
    hooks = [layer.register_forward_pre_hook(align) for layer in layers]
    try:
        model.train()
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
        model.eval()
    return model


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
    # only the norms learn: a dropout left in training mode (transformers' MobileViT has them)
    # would draw from the global random stream, so the statistics would differ from process
    # to process (a pytest-xdist worker rebuilding a checkpoint got other weights)
    model.eval()
    for norm in norms:
        norm.train()
    forward(model, x)
    for norm in norms:
        norm.eval()
        norm.momentum = 0.1
    logits = forward(model, x)
    head.weight.div_(logits.std().clamp_min(1e-6))
    head.bias.zero_()
    return model


"""Helpers shared by several test modules."""

from __future__ import annotations

import torch


def perturb_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter and buffer distinct, well-scaled random values (activations O(1))."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var") or (t.ndim == 1 and name.endswith("weight")):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)  # scales and variances > 0
            elif t.ndim == 1:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.1)  # biases, running means
            else:
                fan_in = t[0].numel()
                t.copy_(torch.randn(t.shape, generator=gen) / fan_in**0.5)
    return module

"""Multiply-accumulate counts, including the attention matmuls (QK^T and AV).

Uses torch's own FlopCounterMode (conv, linear, matmul; it reports FLOPs = 2 x MACs) rather
than a hand-written per-layer formula, so any architecture change is counted automatically.
Elementwise work (BN, SiLU, softmax, LayerNorm, resizing) is not counted, as in the papers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from mvdeploy.models.mobilevit import MobileViT

_MATMUL_OPS = {"bmm", "matmul", "mm"}


@dataclass(frozen=True)
class MacCount:
    total: int  # all MACs for one image
    attention: int  # QK^T and AV only (part of total)

    @property
    def gmacs(self) -> float:
        return self.total / 1e9


def count_macs(model: MobileViT, height: int = 256, width: int = 256) -> MacCount:
    """MACs of one forward pass at batch 1 and the given input size."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, height, width))
    flops = counter.get_flop_counts()
    total = sum(flops["Global"].values())
    # Attention modules own the qkv/proj Linear layers too; those run as addmm, not (b)mm.
    attention = sum(
        count
        for name, ops in flops.items()
        if name.endswith(".attn")
        for op, count in ops.items()
        if str(op).removeprefix("aten.").split(".")[0] in _MATMUL_OPS  # e.g. "aten.bmm"
    )
    return MacCount(total=int(total) // 2, attention=int(attention) // 2)

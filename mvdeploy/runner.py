"""What runs a model or an artifact: a function from an NCHW float32 batch to scores.

Defined once, below the layers that produce runners (backends' sessions, eager PyTorch) and
the ones that consume them (tasks, validation, evaluation, the bench).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Runner = Callable[[np.ndarray], np.ndarray]  # NCHW float32 batch -> scores [N, ...]


def run_batched(runner: Runner, x: np.ndarray, batch: int | None) -> np.ndarray:
    """Feed N inputs to an artifact with a fixed batch size, padding the last chunk."""
    if not batch:
        return runner(x)
    outs = []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        outs.append(runner(chunk)[: batch - pad])
    return np.concatenate(outs)

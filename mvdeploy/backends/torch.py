"""PyTorch: the captured torch.export program saved as .pt2 (the reference other tools can load)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch

from mvdeploy.backends import Runner, tensor_info
from mvdeploy.capture import INPUT_NAME, OUTPUT_NAME, Captured, save_program

SUFFIX = ".pt2"


def check_installed() -> None:
    """torch is a core dependency."""


def export(captured: Captured, cfg, path: Path, *, calibration=None) -> dict:
    save_program(captured, path)
    return {"torch": torch.__version__}


def load(path: Path, *, threads: int | None = None) -> Runner:
    if threads:
        torch.set_num_threads(threads)
    module = torch.export.load(str(path)).module()

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(**{INPUT_NAME: torch.from_numpy(x)})[OUTPUT_NAME].numpy()

    return run


def describe(path: Path) -> dict:
    program = torch.export.load(str(path))
    nodes = [n for n in program.graph.nodes if n.op == "call_function"]
    inputs = [n for n in program.graph.nodes
              if n.op == "placeholder" and n.name in program.graph_signature.user_inputs]
    outputs = list(program.graph.nodes)[-1].args[0]
    ranks = [n.meta["val"].dim() for n in program.graph.nodes
             if isinstance(n.meta.get("val"), torch.Tensor)]
    return {
        "inputs": [tensor_info(INPUT_NAME, n.meta["val"].shape, str(n.meta["val"].dtype))
                   for n in inputs],
        "outputs": [tensor_info(OUTPUT_NAME, n.meta["val"].shape, str(n.meta["val"].dtype))
                    for n in outputs],
        "ops": dict(Counter(str(n.target) for n in nodes).most_common()),
        "max_rank": max(ranks, default=0),
    }

"""PyTorch: the captured torch.export program saved as .pt2 (the reference other tools can load).

Not an export.formats choice: `export.save_program` writes it beside the other formats.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mvdeploy.backends import FormatSpec, Job, Package, Recipe, Session, tensor_info
from mvdeploy.tensor_names import INPUT_NAME, OUTPUT_NAME


@dataclass(frozen=True)
class TorchOptions:
    """The .pt2 has no options of its own."""


SPEC = FormatSpec(
    name="torch", title="PyTorch (torch.export)", suffix=".pt2", extra="",
    export_needs=(Package("torch", "torch", "model, torch.export capture, eager reference"),),
    run_needs=(Package("torch", "torch", "model, torch.export capture, eager reference"),),
    recipes={"fp32": Recipe("float32 (the captured program)", tolerance="fp32")},
    options=TorchOptions, dynamic_batch=True, selectable=False,
)


def check_installed() -> None:
    """torch is a core dependency."""


def convert(job: Job) -> dict:
    import torch

    from mvdeploy.capture import program_bytes

    job.path.write_bytes(program_bytes(job.captured))
    return {"torch": torch.__version__}


def load(path: Path, *, threads: int | None = None, accelerator: str = "cpu") -> Session:
    import torch

    if threads:
        torch.set_num_threads(threads)
    module = torch.export.load(str(path)).module()

    def infer(x):
        with torch.no_grad():
            return module(**{INPUT_NAME: x})[OUTPUT_NAME]

    return Session(prepare=torch.from_numpy, infer=infer, scores=lambda out: out.numpy())


def describe(path: Path) -> dict:
    import torch

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




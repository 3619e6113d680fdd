"""Capture the model once with torch.export; every backend converts this one program (the
backend contract's input, so it lives with the backends: Job.captured)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch

from mvdeploy.tensor_names import INPUT_NAME, OUTPUT_NAME


@dataclass(frozen=True)
class Captured:
    program: torch.export.ExportedProgram
    example: torch.Tensor  # [B, 3, H, W] float32, the input the program was traced with
    dynamic_batch: bool
    labels: tuple[str, ...] | None = None  # the checkpoint's class names, if it has them
    num_classes: int = 0

    @property
    def module(self) -> torch.nn.Module:
        """The captured graph as a module: module(pixel_values=x) -> {"logits": y}."""
        return self.program.module()


class NamedOutputs(torch.nn.Module):
    """forward(pixel_values) -> {"logits": ...}: converters name signature outputs after dict
    keys (litert-torch) and the saved program documents itself."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {OUTPUT_NAME: self.model(pixel_values)}


def capture(model: torch.nn.Module, example: torch.Tensor, *,
            dynamic_batch: bool = False) -> Captured:
    """torch.export in eval mode; optionally with a symbolic batch dimension."""
    model = NamedOutputs(model.eval()).eval()
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = {INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=1024)}}
    with torch.no_grad():
        program = torch.export.export(model, (), {INPUT_NAME: example},
                                      dynamic_shapes=dynamic_shapes)
    labels = getattr(model.model, "class_labels", None)
    return Captured(program=program, example=example, dynamic_batch=dynamic_batch,
                    labels=tuple(labels) if labels else None,
                    num_classes=int(getattr(model.model, "num_classes", 0)))


def program_bytes(captured: Captured) -> bytes:
    """The .pt2 file's bytes (torch.export.save into memory; the caller writes them)."""
    buffer = io.BytesIO()
    torch.export.save(captured.program, buffer)
    return buffer.getvalue()

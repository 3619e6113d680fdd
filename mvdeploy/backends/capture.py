"""Capture the model once with torch.export; every backend converts this one program (the
backend contract's input, so it lives with the backends: Job.captured)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import torch

from mvdeploy.tensor_names import INPUT_NAME, MASK_NAME, OUTPUT_NAME


@dataclass(frozen=True)
class Captured:
    program: torch.export.ExportedProgram
    example: torch.Tensor  # [B, 3, H, W] float32, the input the program was traced with
    dynamic_batch: bool
    labels: tuple[str, ...] | None = None  # the checkpoint's class names, if it has them
    num_classes: int = 0
    output: str = OUTPUT_NAME  # the program's one output: logits, or a segmentation mask

    @property
    def module(self) -> torch.nn.Module:
        """The captured graph as a module: module(pixel_values=x) -> {output: y}."""
        return self.program.module()


class NamedOutputs(torch.nn.Module):
    """forward(pixel_values) -> {"logits": ...}: converters name signature outputs after dict
    keys (litert-torch) and the saved program documents itself."""

    def __init__(self, model: torch.nn.Module, name: str = OUTPUT_NAME) -> None:
        super().__init__()
        self.model, self.name = model, name

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.name: self.model(pixel_values)}


def capture(model: torch.nn.Module, example: torch.Tensor, *,
            dynamic_batch: bool = False, mask: bool = False) -> Captured:
    """torch.export in eval mode; optionally with a symbolic batch dimension. `mask`: a
    segmentation model's argmax mask at the input's size instead of its logits."""
    from mvdeploy.models.heads import ArgmaxMask

    plain = model.eval()
    output = MASK_NAME if mask else OUTPUT_NAME
    model = NamedOutputs(ArgmaxMask(plain) if mask else plain, output).eval()
    dynamic_shapes = None
    if dynamic_batch:
        dynamic_shapes = {INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=1024)}}
    with torch.no_grad():
        program = torch.export.export(model, (), {INPUT_NAME: example},
                                      dynamic_shapes=dynamic_shapes)
    labels = getattr(plain, "class_labels", None)
    return Captured(program=program, example=example, dynamic_batch=dynamic_batch,
                    labels=tuple(labels) if labels else None,
                    num_classes=int(getattr(plain, "num_classes", 0)), output=output)


def program_bytes(captured: Captured) -> bytes:
    """The .pt2 file's bytes (torch.export.save into memory; the caller writes them)."""
    buffer = io.BytesIO()
    torch.export.save(captured.program, buffer)
    return buffer.getvalue()

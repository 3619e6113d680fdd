"""What sits on top of a captured model for apps: class probabilities (per pixel for
segmentation)."""

from __future__ import annotations

import torch

from mvdeploy.tensor_names import INPUT_NAME, OUTPUT_NAME, PROBS_NAME


class WithSoftmax(torch.nn.Module):
    """A captured module with softmax folded in: forward(pixel_values) -> {"probabilities"}.
    Apps then read probabilities directly, and Core ML's classifier needs them."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.module(**{INPUT_NAME: pixel_values})[OUTPUT_NAME]
        # the class axis: [B, classes], or [B, classes, h, w] per pixel (segmentation)
        return {PROBS_NAME: torch.softmax(logits, dim=1)}


class ArgmaxMask(torch.nn.Module):
    """Segmentation for apps that want the answer, not scores: forward(pixel_values) -> [B, H, W]
    int32 class indices at the input's size. The logits are upsampled bilinearly
    (align_corners=False) before the argmax, as transformers' post_process_semantic_segmentation
    and `mvdeploy predict` do, so the phone does neither."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        logits = self.model(pixel_values)
        logits = torch.nn.functional.interpolate(logits, size=pixel_values.shape[-2:],
                                                 mode="bilinear", align_corners=False)
        return logits.argmax(dim=1).to(torch.int32)

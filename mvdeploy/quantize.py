"""Quantisation shared by several formats: calibration data and PyTorch-level (PT2E) int8.

Which recipes a format offers, and how its file proves them, is in the format's SPEC; this
module answers questions about a (format, recipe) pair through the registry. PT2E runs here
on the captured graph for the formats that quantise in PyTorch before conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mvdeploy.backends import spec
from mvdeploy.errors import ConfigError

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
KEEP_FLOAT_CHOICES = ("softmax", "layernorm", "attention")


def check_recipe(fmt: str, recipe: str) -> None:
    recipes = spec(fmt).recipes
    if recipe not in recipes:
        raise ConfigError(
            f"{fmt} cannot do precision {recipe!r}: choose one of {', '.join(recipes)}"
        )


def needs_calibration(fmt: str, recipe: str) -> bool:
    return spec(fmt).recipes[recipe].calibrated


def tolerance_kind(fmt: str, recipe: str) -> str:
    """'fp32' (relative max abs), 'fp16' or 'quantized' (SNR)."""
    return spec(fmt).recipes[recipe].tolerance


@dataclass(frozen=True)
class Calibration:
    images: np.ndarray  # [N, 3, H, W], preprocessed like inference
    names: list[str]


def pt2e_quantize(module, calibration: Calibration, *, per_channel: bool, input_name: str):
    """Insert observers with litert-torch's symmetric int8 quantizer, calibrate, convert.

    Returns (quantized module, quantizer). LiteRT needs the quantizer again at conversion.
    """
    import torch
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import quantize_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel))
    prepared = quantize_pt2e.prepare_pt2e(module, quantizer)
    with torch.no_grad():
        for image in calibration.images:
            prepared(**{input_name: torch.from_numpy(image[None])})
    return quantize_pt2e.convert_pt2e(prepared, fold_quantize=False), quantizer

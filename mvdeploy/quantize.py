"""Quantisation recipes: which format can do what, calibration data, and proof in the file.

PyTorch-level recipes (PT2E: TFLite int8-static, Core ML w8a8) run here on the captured graph;
backend-native recipes (ORT quantisation, coremltools weight compression, LiteRT's fp16 and
dynamic-range recipes) run inside each backend's export.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mvdeploy.errors import ConfigError

RECIPES: dict[str, dict[str, str]] = {
    "onnx": {
        "fp32": "float32 (no quantisation)",
        "fp16": "float16 weights and activations, float32 model I/O",
        "int8-dynamic": "int8 weights, activations quantised at run time (ORT quantize_dynamic)",
        "int8-static": "int8 QDQ, per-channel weights, calibrated activations (ORT "
                       "quantize_static); softmax/LayerNorm/attention matmuls kept float",
    },
    "tflite": {
        "fp32": "float32 (no quantisation)",
        "fp16": "float16 weights (LiteRT fp16 recipe)",
        "int8-dynamic": "int8 weights, dynamic-range activations (LiteRT dynamic recipe)",
        "int8-static": "full integer, per-channel weights, calibrated activations (PT2E with "
                       "litert-torch's quantizer); int8 model input and output",
    },
    "coreml": {
        "fp32": "float32 compute",
        "fp16": "float16 compute",
        "int8-weights": "int8 linear weight quantisation, fp16 compute",
        "palettize-4": "4-bit k-means weight palettisation, fp16 compute",
        "palettize-6": "6-bit k-means weight palettisation, fp16 compute",
        "palettize-8": "8-bit k-means weight palettisation, fp16 compute",
        "w8a8": "int8 weights and activations, calibrated in PyTorch (PT2E) before conversion; "
                "needs iOS17+",
    },
}
FLOAT_RECIPES = ("fp32", "fp16")
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
KEEP_FLOAT_CHOICES = ("softmax", "layernorm", "attention")


def check_recipe(fmt: str, recipe: str) -> None:
    if recipe not in RECIPES[fmt]:
        raise ConfigError(
            f"{fmt} cannot do precision {recipe!r}: choose one of {', '.join(RECIPES[fmt])}"
        )


def needs_calibration(fmt: str, recipe: str) -> bool:
    return recipe in ("int8-static", "w8a8")


def tolerance_kind(recipe: str) -> str:
    """'fp32' (max abs), 'fp16' (SNR >= 40 dB) or 'quantized' (SNR >= 20 dB by default)."""
    return recipe if recipe in FLOAT_RECIPES else "quantized"


@dataclass(frozen=True)
class Calibration:
    images: np.ndarray  # [N, 3, H, W], preprocessed like inference
    names: list[str]


def pt2e_quantize(module: torch.nn.Module, calibration: Calibration, *, per_channel: bool,
                  input_name: str):
    """Insert observers with litert-torch's symmetric int8 quantizer, calibrate, convert.

    Returns (quantized module, quantizer). LiteRT needs the quantizer again at conversion.
    """
    from litert_torch.quantize import pt2e_quantizer
    from torchao.quantization.pt2e import quantize_pt2e

    quantizer = pt2e_quantizer.PT2EQuantizer().set_global(
        pt2e_quantizer.get_symmetric_quantization_config(is_per_channel=per_channel))
    prepared = quantize_pt2e.prepare_pt2e(module, quantizer)
    with torch.no_grad():
        for image in calibration.images:
            prepared(**{input_name: torch.from_numpy(image[None])})
    return quantize_pt2e.convert_pt2e(prepared, fold_quantize=False), quantizer


def evidence_failure(fmt: str, recipe: str, structure: dict) -> str | None:
    """Check the produced file's tensor types or ops: never a silent float artifact."""
    if recipe == "fp32":
        return None
    types = structure.get("tensor_types", {})
    ops = structure.get("ops", {})
    need: dict[tuple[str, str], tuple[str, bool]] = {
        ("onnx", "fp16"): ("float16 tensors", types.get("float16", 0) > 0),
        ("onnx", "int8-dynamic"): ("int8 weights", types.get("int8", 0) + types.get("uint8", 0)
                                   > 0),
        ("onnx", "int8-static"): ("QuantizeLinear/DequantizeLinear and int8 weights",
                                  ops.get("QuantizeLinear", 0) > 0 and types.get("int8", 0) > 0),
        ("tflite", "fp16"): ("float16 weights", types.get("float16", 0) > 0),
        ("tflite", "int8-dynamic"): ("int8 weights", types.get("int8", 0) > 0),
        ("tflite", "int8-static"): ("an int8 input and int8 tensors",
                                    types.get("int8", 0) > 0 and any(
                                        i["dtype"] == "int8" for i in structure["inputs"])),
        ("coreml", "fp16"): ("fp16 compute (cast ops)", ops.get("cast", 0) > 0),
        ("coreml", "int8-weights"): ("int8 weight constants",
                                     ops.get("constexpr_affine_dequantize", 0)
                                     + ops.get("constexpr_blockwise_shift_scale", 0) > 0),
        ("coreml", "w8a8"): ("activation quantize ops and int8 weights",
                             ops.get("quantize", 0) > 0),
    }
    if recipe.startswith("palettize"):
        need[(fmt, recipe)] = ("palettised weights (lookup tables)",
                               ops.get("constexpr_lut_to_dense", 0) > 0)
    what, ok = need[(fmt, recipe)]
    return None if ok else f"{recipe} artifact has no {what}: the recipe did not apply"

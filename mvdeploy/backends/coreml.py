"""Core ML: coremltools converts the captured program to an ML Program (.mlpackage).

Predictions need macOS. Elsewhere the package is read without compiling and checked for its
structure: inputs, outputs, op types, and no tensor above rank 5 (Core ML's limit).
"""

from __future__ import annotations

import platform
from collections import Counter
from pathlib import Path

import numpy as np

from mvdeploy import __version__
from mvdeploy.backends import BackendUnavailable, Runner, decode_record, require, tensor_info
from mvdeploy.capture import INPUT_NAME, OUTPUT_NAME, Captured
from mvdeploy.quantize import Calibration, pt2e_quantize

SUFFIX = ".mlpackage"
MAX_RANK = 5
_PRECISIONS = {"fp16": "FLOAT16", "fp32": "FLOAT32"}


def _ct():
    return require("coremltools", "coremltools", "coreml", "Core ML export")


def check_installed() -> None:
    _ct()


def export(captured: Captured, cfg, path: Path, *, calibration: Calibration | None = None) -> dict:
    ct = _ct()
    recipe = cfg.precision("coreml")
    program = captured.program
    if recipe == "w8a8":
        # coremltools' activation calibration needs macOS, so quantise in PyTorch (PT2E) first.
        # Per-tensor weights: its converter reads quantize_per_tensor but not per_channel.
        import torch

        module, _ = pt2e_quantize(captured.module, calibration, per_channel=False,
                                  input_name=INPUT_NAME)
        program = torch.export.export(module, (), {INPUT_NAME: captured.example})
    compute = recipe if recipe in ("fp16", "fp32") else cfg.coreml.compute_precision
    model = ct.convert(
        program.run_decompositions({}),  # coremltools reads the ATen dialect
        inputs=[ct.TensorType(name=INPUT_NAME, shape=tuple(captured.example.shape),
                              dtype=np.float32)],
        outputs=[ct.TensorType(name=OUTPUT_NAME, dtype=np.float32)],
        convert_to="mlprogram",
        minimum_deployment_target=getattr(ct.target, cfg.coreml.minimum_deployment_target),
        compute_precision=getattr(ct.precision, _PRECISIONS[compute]),
    )
    model = _compress(ct, model, recipe)
    model.author = f"mvdeploy {__version__}"
    model.short_description = (f"{cfg.model.name} (MobileViT v1), patch {cfg.model.patch}, "
                               f"input {cfg.model.resolution}")
    model.input_description[INPUT_NAME] = "Preprocessed image, see the preprocessing metadata"
    model.output_description[OUTPUT_NAME] = "Class logits"
    model.user_defined_metadata.update({
        "mvdeploy.model": cfg.model.name,
        "mvdeploy.patch": cfg.model.patch,
        "mvdeploy.resolution": cfg.model.resolution,
        "mvdeploy.channel_order": cfg.preprocessing.channel_order,
        "mvdeploy.scale": repr(cfg.preprocessing.scale),
        "mvdeploy.precision": recipe,
    })
    model.save(str(path))
    return {"minimum_deployment_target": cfg.coreml.minimum_deployment_target,
            "compute_precision": compute, "recipe": recipe, "coremltools": ct.__version__}


def _compress(ct, model, recipe: str):
    """coremltools' weight compression, which runs on Linux (no calibration data needed)."""
    import coremltools.optimize.coreml as cto

    if recipe == "int8-weights":
        op_config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8")
        return cto.linear_quantize_weights(model, cto.OptimizationConfig(global_config=op_config))
    if recipe.startswith("palettize-"):
        op_config = cto.OpPalettizerConfig(nbits=int(recipe.split("-")[1]), mode="kmeans")
        return cto.palettize_weights(model, cto.OptimizationConfig(global_config=op_config))
    return model


def embed_metadata(path: Path, metadata: dict) -> None:
    """The mvdeploy record as JSON in user_defined_metadata["mvdeploy"] (strings only there)."""
    import json
    import shutil

    ct = _ct()
    model = ct.models.MLModel(str(path), skip_model_load=True)  # no compilation: Linux is fine
    model.user_defined_metadata["mvdeploy"] = json.dumps(metadata)
    tmp = path.with_name(f".meta-{path.name}")
    model.save(str(tmp))
    shutil.rmtree(path)
    tmp.rename(path)


def can_run() -> bool:
    return platform.system() == "Darwin"


def load(path: Path, *, threads: int | None = None) -> Runner:
    if not can_run():
        raise BackendUnavailable(f"Core ML predictions need macOS (this is {platform.system()})")
    model = _ct().models.MLModel(str(path))

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict({INPUT_NAME: x})[OUTPUT_NAME], dtype=np.float32)

    return run


def _walk(block, ops: Counter, ranks: list[int]) -> None:
    for op in block.operations:
        ops[op.type] += 1
        ranks.extend(o.type.tensorType.rank for o in op.outputs if o.type.HasField("tensorType"))
        for inner in op.blocks:
            _walk(inner, ops, ranks)


def describe(path: Path) -> dict:
    ct = _ct()
    spec = ct.utils.load_spec(str(path))  # reads the protobuf; no compilation, works on Linux

    def info(feature) -> dict:
        array = feature.type.multiArrayType
        dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
        return tensor_info(feature.name, list(array.shape), dtype.lower())

    ops: Counter[str] = Counter()
    ranks: list[int] = []
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            _walk(block, ops, ranks)
    meta = spec.description.metadata
    return {
        "spec_version": spec.specificationVersion,
        "model_type": spec.WhichOneof("Type"),
        "inputs": [info(f) for f in spec.description.input],
        "outputs": [info(f) for f in spec.description.output],
        "ops": dict(ops.most_common()),
        "max_rank": max(ranks, default=0),
        "metadata": decode_record({"author": meta.author,
                                   "short_description": meta.shortDescription,
                                   **dict(meta.userDefined)}),
    }

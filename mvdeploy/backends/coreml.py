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
from mvdeploy.capture import INPUT_NAME, OUTPUT_NAME, Captured, WithSoftmax
from mvdeploy.quantize import Calibration, pt2e_quantize

SUFFIX = ".mlpackage"
MAX_RANK = 5
_PRECISIONS = {"fp16": "FLOAT16", "fp32": "FLOAT32"}


def _ct():
    return require("coremltools", "coremltools", "coreml", "Core ML export")


def check_installed() -> None:
    _ct()


CLASS_LABEL = "classLabel"  # coremltools' names for a classifier's outputs
CLASS_PROBS = "classLabel_probs"


def class_labels(labels, num_classes: int) -> list[str]:
    """The classifier's labels: the checkpoint's, or class indices as text."""
    return list(labels) if labels else [str(i) for i in range(num_classes)]


def _image_input(ct, cfg, shape: tuple):
    """ImageType with the preprocessing folded in: x = pixel * scale + bias, per channel.

    mvdeploy's preprocessing is x = (pixel * scale - mean) / std (mean/std in RGB order), so
    Core ML's single scale is scale / std (config checking requires one std) and its bias, given
    in the colour layout's channel order, is -mean / std.
    """
    prep = cfg.preprocessing
    std = prep.std[0]
    mean = prep.mean if prep.channel_order == "RGB" else prep.mean[::-1]
    return ct.ImageType(name=INPUT_NAME, shape=shape, scale=prep.scale / std,
                        bias=[-m / std for m in mean],
                        color_layout=getattr(ct.colorlayout, prep.channel_order))


def export(captured: Captured, cfg, path: Path, *, calibration: Calibration | None = None) -> dict:
    import torch

    ct = _ct()
    recipe = cfg.precision("coreml")
    program, module = captured.program, captured.module
    if recipe == "w8a8":
        # coremltools' activation calibration needs macOS, so quantise in PyTorch (PT2E) first.
        # Per-tensor weights: its converter reads quantize_per_tensor but not per_channel.
        module, _ = pt2e_quantize(module, calibration, per_channel=False, input_name=INPUT_NAME)
    if cfg.coreml.classifier:
        module = WithSoftmax(module)  # the classifier's dictionary holds probabilities
    if recipe == "w8a8" or cfg.coreml.classifier:
        program = torch.export.export(module, (), {INPUT_NAME: captured.example})
    shape = tuple(captured.example.shape)
    labels = class_labels(captured.labels, captured.num_classes)
    compute = recipe if recipe in ("fp16", "fp32") else cfg.coreml.compute_precision
    model = ct.convert(
        program.run_decompositions({}),  # coremltools reads the ATen dialect
        inputs=[_image_input(ct, cfg, shape) if cfg.coreml.image_input
                else ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)],
        outputs=None if cfg.coreml.classifier else [ct.TensorType(name=OUTPUT_NAME,
                                                                  dtype=np.float32)],
        classifier_config=ct.ClassifierConfig(labels, predicted_feature_name=CLASS_LABEL)
        if cfg.coreml.classifier else None,
        convert_to="mlprogram",
        minimum_deployment_target=getattr(ct.target, cfg.coreml.minimum_deployment_target),
        compute_precision=getattr(ct.precision, _PRECISIONS[compute]),
    )
    model = _compress(ct, model, recipe)
    _describe_for_xcode(model, cfg, recipe)
    model.save(str(path))
    return {"minimum_deployment_target": cfg.coreml.minimum_deployment_target,
            "compute_precision": compute, "recipe": recipe, "coremltools": ct.__version__,
            "image_input": cfg.coreml.image_input, "classifier": cfg.coreml.classifier}


def _describe_for_xcode(model, cfg, recipe: str) -> None:
    """Author, licence, version and descriptions: what Xcode's model page shows."""
    prep, meta = cfg.preprocessing, cfg.metadata
    height, width = cfg.height_width
    model.author = meta.author or f"mvdeploy {__version__}"
    model.license = meta.license
    model.version = meta.version
    model.short_description = meta.description or (
        f"{cfg.model.name} (MobileViT v1), patch {cfg.model.patch}, {height}x{width}, {recipe}")
    crop = (f"resize the shorter side to {prep.shorter_side(height, width)}, "
            f"centre-crop {height}x{width}")
    model.input_description[INPUT_NAME] = (
        f"{prep.channel_order} image {height}x{width} ({crop}); scale and bias are built in"
        if cfg.coreml.image_input else
        f"Preprocessed image [1, 3, {height}, {width}]: {crop}, scale {prep.scale:.6g}, "
        f"{prep.channel_order} channel order (see the mvdeploy metadata)")
    if cfg.coreml.classifier:
        model.output_description[CLASS_LABEL] = "Most likely class"
        model.output_description[CLASS_PROBS] = "Probability of each class"
    else:
        model.output_description[OUTPUT_NAME] = "Class logits (apply softmax for probabilities)"
    model.user_defined_metadata.update({
        "mvdeploy.model": cfg.model.name,
        "mvdeploy.patch": cfg.model.patch,
        "mvdeploy.resolution": cfg.model.resolution,
        "mvdeploy.channel_order": prep.channel_order,
        "mvdeploy.scale": repr(prep.scale),
        "mvdeploy.precision": recipe,
    })


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
    """NCHW float32 batch -> logits, or probabilities for a classifier; image inputs are fed
    as the photo the tensor came from (preprocessing undone, rounded to 8-bit pixels)."""
    if not can_run():
        raise BackendUnavailable(f"Core ML predictions need macOS (this is {platform.system()})")
    ct = _ct()
    model = ct.models.MLModel(str(path))
    spec = model.get_spec()
    record = decode_record(dict(spec.description.metadata.userDefined)).get("mvdeploy", {})
    image = spec.description.input[0].type.WhichOneof("Type") == "imageType"
    classifier = bool(spec.description.predictedProbabilitiesName)
    labels = class_labels(record.get("labels"), record.get("num_classes", 0))

    def run_one(x: np.ndarray) -> np.ndarray:
        feed = _to_image(x[0], record["preprocessing"]) if image else x
        out = model.predict({INPUT_NAME: feed})
        if classifier:
            probs = out[spec.description.predictedProbabilitiesName]
            return np.array([[probs[label] for label in labels]], dtype=np.float32)
        return np.asarray(out[OUTPUT_NAME], dtype=np.float32)

    def run(x: np.ndarray) -> np.ndarray:
        if not (image or classifier):
            return run_one(x)
        return np.concatenate([run_one(x[i:i + 1]) for i in range(len(x))])

    return run


def _to_image(x: np.ndarray, prep: dict):
    """[3, H, W] preprocessed tensor -> the RGB PIL image it came from."""
    from PIL import Image

    hwc = x.transpose(1, 2, 0)
    if prep["channel_order"] == "BGR":
        hwc = hwc[..., ::-1]
    pixels = (hwc * np.asarray(prep["std"]) + np.asarray(prep["mean"])) / prep["scale"]
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")


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
        kind = feature.type.WhichOneof("Type")
        if kind == "imageType":
            image = feature.type.imageType
            colour = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace)
            out = {**tensor_info(feature.name, [1, 3, image.height, image.width], "image"),
                   "color_layout": colour}
        elif kind == "multiArrayType":
            array = feature.type.multiArrayType
            dtype = ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
            out = tensor_info(feature.name, list(array.shape), dtype.lower())
        elif kind == "dictionaryType":  # a classifier's probabilities, keyed by label
            key = feature.type.dictionaryType.WhichOneof("KeyType").replace("KeyType", "")
            out = tensor_info(feature.name, [], f"dict[{key}, double]")
        else:  # stringType / int64Type: a classifier's label
            out = tensor_info(feature.name, [], kind.replace("Type", ""))
        return {**out, "description": feature.shortDescription}

    ops: Counter[str] = Counter()
    ranks: list[int] = []
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            _walk(block, ops, ranks)
    meta = spec.description.metadata
    classifier = spec.description.predictedFeatureName
    return {
        "spec_version": spec.specificationVersion,
        "model_type": spec.WhichOneof("Type"),
        "inputs": [info(f) for f in spec.description.input],
        "outputs": [info(f) for f in spec.description.output],
        "ops": dict(ops.most_common()),
        "max_rank": max(ranks, default=0),
        "classifier": {"label": classifier,
                       "probabilities": spec.description.predictedProbabilitiesName}
        if classifier else None,
        "metadata": decode_record({"author": meta.author, "license": meta.license,
                                   "version": meta.versionString,
                                   "short_description": meta.shortDescription,
                                   **dict(meta.userDefined)}),
    }

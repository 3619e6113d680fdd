"""Core ML: coremltools converts the captured program to an ML Program (.mlpackage).

Predictions need macOS. Elsewhere the package is read without compiling and checked for its
structure: inputs, outputs, op types, and no tensor above rank 5 (Core ML's limit).
"""

from __future__ import annotations

import platform
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvdeploy.backends import (
    CheckContext,
    Flag,
    FormatSpec,
    Job,
    Outputs,
    Package,
    Recipe,
    Runtime,
    Session,
    decode_record,
    require,
    tensor_info,
)
from mvdeploy.backends.pt2e import PT2E_PACKAGE
from mvdeploy.backends.snippet_text import is_segmentation, swift_region
from mvdeploy.errors import ArtifactError, ConfigError
from mvdeploy.tensor_names import INPUT_NAME, MASK_NAME, OUTPUT_NAME
from mvdeploy.version import __version__

TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15")
W8A8_TARGETS = ("iOS17", "iOS18", "macOS14", "macOS15")  # activation quantize ops
_PRECISIONS = {"fp16": "FLOAT16", "fp32": "FLOAT32"}
CLASS_LABEL = "classLabel"  # coremltools' names for a classifier's outputs
CLASS_PROBS = "classLabel_probs"


@dataclass(frozen=True)
class CoremlOptions:
    minimum_deployment_target: str = "iOS16"
    compute_precision: str | None = None  # fp16 unless set here or by --precision fp16/fp32
    image_input: bool = False  # ImageType: Vision / CVPixelBuffer in, preprocessing folded in
    classifier: bool = False  # ClassifierConfig: outputs classLabel and classLabel_probs


def _check(options: CoremlOptions, recipe: str | None, ctx: CheckContext) -> None:
    if options.minimum_deployment_target not in TARGETS:
        raise ConfigError("coreml.minimum_deployment_target must be one of "
                          f"{', '.join(TARGETS)} (ML Programs need iOS15 or later), "
                          f"got {options.minimum_deployment_target!r}")
    if options.compute_precision not in (None, *_PRECISIONS):
        raise ConfigError(f"coreml.compute_precision must be fp16 or fp32, "
                          f"got {options.compute_precision!r}")
    if recipe is None:  # not exported in this run: nothing else matters
        return
    if options.classifier and ctx.task != "classification":
        raise ConfigError(f"coreml.classifier is for classifiers, and this is a {ctx.task} "
                          "model (per-pixel scores out): set coreml.classifier=false")
    if recipe in _PRECISIONS and options.compute_precision not in (None, recipe):
        raise ConfigError(f"--precision {recipe} and --coreml-precision (coreml.compute_precision)"
                          f" {options.compute_precision} disagree: give one of them")
    if recipe == "w8a8" and options.minimum_deployment_target not in W8A8_TARGETS:
        raise ConfigError("quantize.precision w8a8 needs coreml.minimum_deployment_target "
                          "iOS17 or later (activation quantisation ops)")
    if options.image_input:
        if ctx.batch != 1:
            raise ConfigError("coreml.image_input takes one image: set export.batch=1 or "
                              "coreml.image_input=false")
        if len(set(ctx.preprocessing.std)) != 1:
            raise ConfigError("coreml.image_input folds preprocessing into one scale: "
                              "preprocessing.std must be the same for all channels, or set "
                              "coreml.image_input=false")


def _ops(s: dict) -> dict:
    return s.get("ops", {})


def _palettized(bits: int) -> Recipe:
    return Recipe(f"{bits}-bit k-means weight palettisation, fp16 compute",
                  evidence="palettised weights (lookup tables)",
                  shows=lambda s: _ops(s).get("constexpr_lut_to_dense", 0) > 0)


def _cannot_run_here() -> str | None:
    if platform.system() != "Darwin":
        return f"Core ML predictions need macOS (this is {platform.system()})"
    return None


SPEC = FormatSpec(
    name="coreml", title="Core ML", suffix=".mlpackage", extra="coreml",
    export_needs=(Package("coremltools", "coremltools", "Core ML converter"),
                  Package("scikit-learn", "sklearn", "k-means palettisation for Core ML")),
    run_needs=(Package("coremltools", "coremltools", "Core ML converter"),),
    recipes={
        "fp32": Recipe("float32 compute", tolerance="fp32"),
        "fp16": Recipe("float16 compute", tolerance="fp16", evidence="fp16 compute (cast ops)",
                       shows=lambda s: _ops(s).get("cast", 0) > 0),
        "int8-weights": Recipe(
            "int8 linear weight quantisation, fp16 compute", evidence="int8 weight constants",
            shows=lambda s: _ops(s).get("constexpr_affine_dequantize", 0)
            + _ops(s).get("constexpr_blockwise_shift_scale", 0) > 0),
        "palettize-4": _palettized(4),
        "palettize-6": _palettized(6),
        "palettize-8": _palettized(8),
        "w8a8": Recipe("int8 weights and activations, calibrated in PyTorch (PT2E) before "
                       "conversion; needs iOS17+", calibrated=True,
                       evidence="activation quantize ops and int8 weights",
                       shows=lambda s: _ops(s).get("quantize", 0) > 0,
                       needs=((PT2E_PACKAGE, "tflite"),)),
    },
    options=CoremlOptions, default_recipe=lambda o: o.compute_precision or "fp16", check=_check,
    outputs=lambda o: Outputs((CLASS_LABEL, CLASS_PROBS), CLASS_PROBS, "probabilities")
    if o.classifier else Outputs(),
    max_rank=5,  # Core ML and the ANE reject tensors above rank 5
    # ml-cvnets' rank-4 form, the one Apple converts; other forms are untimed on devices here
    graph_form={"fold": "rank4", "tokens": "3d", "qkv": "packed"},
    metadata=True,
    runtimes=(Runtime("coreml", ("apple",)),),
    flags=(Flag(("--coreml-target",), "minimum_deployment_target",
                help="Core ML minimum deployment target (iOS15..iOS18, macOS12..15; "
                     "default iOS16)."),
           Flag(("--coreml-precision",), "compute_precision", choices=tuple(_PRECISIONS),
                help="Core ML compute precision (default fp16).")),
    snippet_language="swift", cannot_run_here=_cannot_run_here,
    reference_runtime="mvdeploy's NumPy reference executor of the ML Program",
    calibration_methods=("histogram", "minmax"),  # PT2E activation observers (w8a8)
)


def _ct():
    return require("coremltools", "coremltools", "coreml", "Core ML export")


def check_installed() -> None:
    _ct()


def class_labels(labels, num_classes: int) -> list[str]:
    """The classifier's labels: the checkpoint's, or class indices as text."""
    return list(labels) if labels else [str(i) for i in range(num_classes)]


def _image_input(ct, prep, shape: tuple):
    """ImageType with the preprocessing folded in: x = pixel * scale + bias, per channel.

    mvdeploy's preprocessing is x = (pixel * scale - mean) / std (mean/std in RGB order), so
    Core ML's single scale is scale / std (config checking requires one std) and its bias, given
    in the colour layout's channel order, is -mean / std.
    """
    std = prep.std[0]
    mean = prep.mean if prep.channel_order == "RGB" else prep.mean[::-1]
    return ct.ImageType(name=INPUT_NAME, shape=shape, scale=prep.scale / std,
                        bias=[-m / std for m in mean],
                        color_layout=getattr(ct.colorlayout, prep.channel_order))


def convert(job: Job) -> dict:
    import torch

    from mvdeploy.backends import calibration_method
    from mvdeploy.backends.pt2e import pt2e_quantize
    from mvdeploy.models.heads import WithSoftmax

    ct = _ct()
    recipe, options, captured = job.recipe, job.options, job.captured
    program, module = captured.program, captured.module
    if recipe == "w8a8":
        # coremltools' activation calibration needs macOS, so quantise in PyTorch (PT2E) first.
        # Per-tensor weights: its converter reads quantize_per_tensor but not per_channel.
        module, _ = pt2e_quantize(module, job.calibration, per_channel=False,
                                  input_name=INPUT_NAME,
                                  observer=calibration_method(SPEC.name,
                                                              job.quantize.calibration_method))
    if options.classifier:
        module = WithSoftmax(module)  # the classifier's dictionary holds probabilities
    if recipe == "w8a8" or options.classifier:
        program = torch.export.export(module, (), {INPUT_NAME: captured.example})
    shape = tuple(captured.example.shape)
    labels = class_labels(captured.labels, captured.num_classes)
    compute = recipe if recipe in _PRECISIONS else options.compute_precision or "fp16"
    model = ct.convert(
        program.run_decompositions({}),  # coremltools reads the ATen dialect
        inputs=[_image_input(ct, job.preprocessing, shape) if options.image_input
                else ct.TensorType(name=INPUT_NAME, shape=shape, dtype=np.float32)],
        outputs=None if options.classifier else [ct.TensorType(
            name=captured.output, dtype=np.int32 if captured.output == MASK_NAME else np.float32)],
        classifier_config=ct.ClassifierConfig(labels, predicted_feature_name=CLASS_LABEL)
        if options.classifier else None,
        convert_to="mlprogram",
        minimum_deployment_target=getattr(ct.target, options.minimum_deployment_target),
        compute_precision=getattr(ct.precision, _PRECISIONS[compute]),
    )
    model = _compress(ct, model, recipe)
    _describe_for_xcode(model, job)
    model.save(str(job.path))
    return {"minimum_deployment_target": options.minimum_deployment_target,
            "compute_precision": compute, "recipe": recipe, "coremltools": ct.__version__,
            "image_input": options.image_input, "classifier": options.classifier}


def _describe_for_xcode(model, job: Job) -> None:
    """Author, licence, version and descriptions: what Xcode's model page shows."""
    prep, meta, options, recipe = job.preprocessing, job.metadata, job.options, job.recipe
    height, width = job.resolution
    model.author = meta.author or f"mvdeploy {__version__}"
    model.license = meta.license
    model.version = meta.version
    model.short_description = meta.description or (
        f"{job.model} (MobileViT v1), patch {job.patch}, {height}x{width}, {recipe}")
    crop = (f"resize the shorter side to {prep.shorter_side(height, width)}, "
            f"centre-crop {height}x{width}")
    model.input_description[INPUT_NAME] = (
        f"{prep.channel_order} image {height}x{width} ({crop}); scale and bias are built in"
        if options.image_input else
        f"Preprocessed image [1, 3, {height}, {width}]: {crop}, scale {prep.scale:.6g}, "
        f"{prep.channel_order} channel order (see the mvdeploy metadata)")
    if options.classifier:
        model.output_description[CLASS_LABEL] = "Most likely class"
        model.output_description[CLASS_PROBS] = "Probability of each class"
    elif job.captured.output == MASK_NAME:
        model.output_description[MASK_NAME] = (
            f"Class index of every pixel [{job.captured.example.shape[0]}, {height}, {width}] "
            "(int32), in the image's "
            "resized and cropped frame; the class names are in the mvdeploy metadata")
    else:
        model.output_description[OUTPUT_NAME] = "Class logits (apply softmax for probabilities)"
    model.user_defined_metadata.update({
        "mvdeploy.model": job.model,
        "mvdeploy.patch": job.patch,
        "mvdeploy.resolution": f"{height}x{width}",
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


REFERENCE_NOTE = ("numbers from mvdeploy's NumPy reference executor of the ML Program (Core ML "
                  "predictions need macOS): they check the conversion (layouts, permutations, "
                  "padding, split sizes, compression, fp16 casts), not what a device's CPU, "
                  "GPU or Neural Engine computes")


def load(path: Path, *, threads: int | None = None, accelerator: str = "ALL") -> Session:
    """NCHW float32 batch -> logits, or probabilities for a classifier; image inputs are fed
    as the photo the tensor came from (preprocessing undone, rounded to 8-bit pixels).
    `accelerator` is a Core ML compute unit (ALL, CPU_ONLY, CPU_AND_GPU, CPU_AND_NE).
    Off macOS, mvdeploy's reference executor (coreml_reference.py) runs the program."""
    ct = _ct()
    if _cannot_run_here():
        from mvdeploy.backends.coreml_reference import Program

        program = Program(path)
        spec, predict, runtime = program.spec, program, "reference"
    else:
        model = ct.models.MLModel(str(path), compute_units=getattr(ct.ComputeUnit, accelerator))
        spec, predict, runtime = model.get_spec(), model.predict, "coreml"
    record = decode_record(dict(spec.description.metadata.userDefined)).get("mvdeploy", {})
    image_type = spec.description.input[0].type
    image = image_type.WhichOneof("Type") == "imageType"
    bgr = image and ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(
        image_type.imageType.colorSpace) == "BGR"
    probs_name = spec.description.predictedProbabilitiesName
    output = spec.description.output[0].name  # logits, or a segmentation mask
    labels = class_labels(record.get("labels"), record.get("num_classes", 0))
    one_by_one = image or bool(probs_name)  # a picture or a dictionary per prediction

    def feed(x: np.ndarray):
        picture = _to_image(x, record["preprocessing"])
        if runtime == "coreml":
            return picture
        pixels = np.asarray(picture, dtype=np.float32)  # what Core ML makes of the picture
        pixels = pixels[..., ::-1] if bgr else pixels
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)[None])

    def prepare(x: np.ndarray) -> list[dict]:
        if not one_by_one:
            return [{INPUT_NAME: x}]
        return [{INPUT_NAME: feed(x[i]) if image else x[i:i + 1]} for i in range(len(x))]

    def scores(outs: list[dict]) -> np.ndarray:
        if probs_name:
            return np.array([[out[probs_name][label] for label in labels] for out in outs],
                            dtype=np.float32)
        found = np.concatenate([np.asarray(out[output]) for out in outs])
        return found if output == MASK_NAME else found.astype(np.float32)

    return Session(prepare=prepare, infer=lambda feeds: [predict(f) for f in feeds],
                   scores=scores, runtime=runtime,
                   note=REFERENCE_NOTE if runtime == "reference" else "")


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


def snippet(manifest: dict) -> str:
    """Swift for iOS: Vision with the artifact's real tensor names."""
    art, prep = manifest["artifact"], manifest["preprocessing"]
    (image,) = art["inputs"]
    names = [o["name"] for o in art["outputs"]]
    if is_segmentation(manifest):
        return _segmentation_snippet(art, prep)
    if image["dtype"] != "image" or len(names) != 2:
        raise ArtifactError("the Swift snippet uses Vision, which needs an image input and a "
                            "classifier: export with --set coreml.image_input=true --set "
                            "coreml.classifier=true (the *_ios.toml configs do)")
    label, probs = names
    cls = Path(art["file"]).stem  # Xcode names the generated class after the file
    height, width = prep["crop"]
    return f"""\
// {art['file']}: add it to the Xcode target,
// and Xcode generates the class `{cls}`.
// Input "{image['name']}": {image['color_layout']} image {width}x{height}, preprocessing built in.
// Outputs "{label}" (String) and "{probs}" ([String: Double]).
import CoreML
import Vision

func classify(_ photo: CGImage) throws -> (label: String, confidence: Float)? {{
    let model = try {cls}(configuration: MLModelConfiguration())
    let request = VNCoreMLRequest(model: try VNCoreMLModel(for: model.model))
{swift_region(prep)}\
    try VNImageRequestHandler(cgImage: photo).perform([request])
    guard let top = (request.results as? [VNClassificationObservation])?.first else {{ return nil }}
    return (top.identifier, top.confidence)
}}

// Without Vision, from a {width}x{height} CVPixelBuffer that is already resized and cropped:
func classify(_ pixelBuffer: CVPixelBuffer) throws -> (String, Double) {{
    let model = try {cls}(configuration: MLModelConfiguration())
    let output = try model.prediction({image['name']}: pixelBuffer)
    return (output.{label}, output.{probs}[output.{label}] ?? 0)
}}
"""


def _segmentation_snippet(art: dict, prep: dict) -> str:
    """Swift for a segmentation .mlpackage with an image input and a mask output: Vision runs
    it on the centre crop; the mask holds the class of every pixel of that crop."""
    (image,) = art["inputs"]
    (out,) = art["outputs"]
    if image["dtype"] != "image" or out["name"] != MASK_NAME:
        raise ArtifactError("the Swift segmentation snippet uses Vision and reads a mask: "
                            "export with --set coreml.image_input=true --mask "
                            "(export_configs/deeplabv3_mobilevit_xxs_ios.toml does)")
    cls = Path(art["file"]).stem
    height, width = prep["crop"]
    return f"""\
// {art['file']}: add it to the Xcode target,
// and Xcode generates the class `{cls}`.
// Input "{image['name']}": {image['color_layout']} image {width}x{height}, preprocessing built in.
// Output "{out['name']}": Int32 {out['shape']}, the class of every pixel of the crop.
import CoreML
import Vision

// mask[[0, y, x] as [NSNumber]].intValue is the class of pixel (x, y) of the {width}x{height} crop.
func segment(_ photo: CGImage) throws -> MLMultiArray? {{
    let model = try {cls}(configuration: MLModelConfiguration())
    let request = VNCoreMLRequest(model: try VNCoreMLModel(for: model.model))
{swift_region(prep)}\
    try VNImageRequestHandler(cgImage: photo).perform([request])
    let found = request.results as? [VNCoreMLFeatureValueObservation]
    return found?.first {{ $0.featureName == "{out['name']}" }}?.featureValue.multiArrayValue
}}

// The class names, from the mvdeploy record in the model's metadata.
func classNames(_ model: MLModel) -> [String] {{
    let defined = model.modelDescription.metadata[.creatorDefinedKey] as? [String: String]
    guard let record = defined?["mvdeploy"]?.data(using: .utf8),
          let json = try? JSONSerialization.jsonObject(with: record) as? [String: Any]
    else {{ return [] }}
    return json["labels"] as? [String] ?? []
}}
"""

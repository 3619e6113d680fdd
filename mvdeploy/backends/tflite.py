"""TFLite (LiteRT): litert-torch converts the captured program; ai-edge-litert runs it.

The signature is `serving_default` with input `pixel_values` and output `logits`, so Android
code can call the model by name. With channels_last the input is NHWC [B, H, W, 3].
"""

from __future__ import annotations

import contextlib
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
    float_recipes,
    require,
    tensor_info,
)
from mvdeploy.backends.snippet_text import (
    crop_text,
    is_segmentation,
    kotlin_channel_expr,
    kotlin_crop,
    python_crop,
)
from mvdeploy.backends.tflite_metadata import (
    LABEL_FILE,
    STANDARD_NAME,
    labels_of,
    pack_files,
    read_standard_metadata,
    standard_metadata,
)
from mvdeploy.errors import ArtifactError, ConfigError, MissingDependencyError
from mvdeploy.tensor_names import INPUT_NAME, MASK_NAME, OUTPUT_NAME, PROBS_NAME

SIGNATURE = "serving_default"
LITERT_GRADLE = "com.google.ai.edge.litert:litert:1.0.1"  # 1.x ships org.tensorflow.lite


@dataclass(frozen=True)
class TfliteOptions:
    # NHWC input, as Android code usually feeds it; per-pixel scores (segmentation) then come
    # out NHWC [B, h, w, classes] too, the layout MediaPipe's ImageSegmenter reads
    channels_last: bool = False
    softmax_output: bool = False  # output "probabilities" (softmax folded in) instead of logits


def _check(options: TfliteOptions, recipe: str | None, ctx: CheckContext) -> None:
    if recipe is not None and options.softmax_output and ctx.mask:
        raise ConfigError("tflite.softmax_output and export.mask both choose the output: a mask "
                          "(--mask) has no scores to soften; drop one of them")


def _types(s: dict) -> dict:
    return s.get("tensor_types", {})


SPEC = FormatSpec(
    name="tflite", title="TFLite (LiteRT)", suffix=".tflite", extra="tflite",
    export_needs=(Package("litert-torch", "litert_torch", "PyTorch -> TFLite converter"),
                  Package("mediapipe", "mediapipe.tasks.python.metadata.metadata_writers."
                          "metadata_info", "standard TFLite metadata (MediaPipe's tables)")),
    run_needs=(Package("ai-edge-litert", "ai_edge_litert.interpreter", "LiteRT (TFLite) runtime"),
               Package("tflite-runtime", "tflite_runtime.interpreter",
                       "legacy TFLite runtime (fallback only)")),
    recipes={
        **float_recipes("float16 weights (LiteRT fp16 recipe)"),
        "int8-dynamic": Recipe(
            "int8 weights, dynamic-range activations (LiteRT dynamic recipe)",
            evidence="int8 weights", shows=lambda s: _types(s).get("int8", 0) > 0),
        "int8-static": Recipe(
            "full integer, per-channel weights, calibrated activations (PT2E with "
            "litert-torch's quantizer); int8 model input and output unless the search keeps "
            "the stem float", calibrated=True, searched=True,
            evidence="int8 tensors and int8 activations (QUANTIZE ops or an int8 input)",
            shows=lambda s: _types(s).get("int8", 0) > 0
            and (s.get("ops", {}).get("QUANTIZE", 0) > 0
                 or any(i["dtype"] == "int8" for i in s.get("inputs", [])))),
    },
    options=TfliteOptions, check=_check,
    outputs=lambda o: Outputs((PROBS_NAME,), PROBS_NAME, "probabilities") if o.softmax_output
    else Outputs(),
    input_layout=lambda o: "NHWC" if o.channels_last else "NCHW",
    metadata=True,
    runtimes=(Runtime("litert", ("cpu", "android", "aihub")),),
    # separate q/k/v: no SLICE ops (27 in XXS) for XNNPACK to copy through
    graph_form={"qkv": "separate"},
    flags=(Flag(("--channels-last",), "channels_last", is_flag=True,
                help="TFLite: NHWC input [B, H, W, 3], as Android code usually feeds it."),),
    snippet_language="kotlin", peer=True,
    snippet_clients={"mediapipe": "kotlin", "mediapipe-python": "python"},
    # PT2E activation observers: litert-torch's histogram (clips outliers) measured best
    calibration_methods=("histogram", "minmax"),
)


def _channels_last(program):
    """Take NHWC input [B, H, W, 3] and permute it for the captured NCHW graph; give rank-4
    outputs (segmentation's [B, classes, h, w]) back NHWC.

    litert_torch.to_channel_last_io does the same but only for positional inputs, and the
    signature names its inputs after keyword arguments. (The attribute must not be called
    `graph`: that name collides with GraphModule.graph when litert-torch re-exports.)
    """
    import torch

    class ChannelsLast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.program = program

        def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
            out = self.program(**{INPUT_NAME: pixel_values.permute(0, 3, 1, 2)})
            return {k: v.permute(0, 2, 3, 1) if v.dim() == 4 else v for k, v in out.items()}

    return ChannelsLast()  # no .eval(): exported graphs refuse train(); they are inference-only


def convert(job: Job) -> dict:
    litert_torch = require("litert_torch", "litert-torch", "tflite", "TFLite export")
    from litert_torch.generative.quantize import quant_recipes
    from litert_torch.quantize.quant_config import QuantConfig

    from mvdeploy.backends.pt2e import pt2e_quantize
    from mvdeploy.models.heads import WithSoftmax

    recipe, options = job.recipe, job.options
    module, example = job.captured.module, job.captured.example
    quant_config = {
        "fp32": lambda: None,
        "fp16": quant_recipes.full_fp16_recipe,
        "int8-dynamic": quant_recipes.full_dynamic_recipe,
    }.get(recipe, lambda: None)()
    if recipe == "int8-static":
        module, quantizer = pt2e_quantize(module, job.calibration,
                                          per_channel=job.quantize.per_channel,
                                          input_name=INPUT_NAME, observer=observer(job.quantize),
                                          float_groups=job.float_groups)
        quant_config = QuantConfig(pt2e_quantizer=quantizer)
    if options.softmax_output:
        module = WithSoftmax(module)
    if options.channels_last:
        module, example = _channels_last(module), example.permute(0, 2, 3, 1).contiguous()
    edge_model = litert_torch.convert(module, sample_kwargs={INPUT_NAME: example},
                                      quant_config=quant_config)
    edge_model.export(str(job.path))
    return {"signature": SIGNATURE, "recipe": recipe,
            "input_layout": "NHWC" if options.channels_last else "NCHW"}


def observer(quantize) -> str:
    """The PT2E activation observer quantize.calibration_method asks for."""
    from mvdeploy.backends import calibration_method

    return calibration_method(SPEC.name, quantize.calibration_method)


class _Trials:
    """The PT2E int8 graph litert-torch converts, run in PyTorch: its quantize/dequantize pairs
    compute what LiteRT's int8 kernels do (measured 35 dB apart on XXS), without a 15-second
    conversion per try. Calibrated once (backends.pt2e.CalibratedPT2E); the chosen arrangement is
    then converted and validated on LiteRT."""

    # LiteRT's kernels round a little differently: aim this much higher (measured: the
    # simulation up to 1.0 dB above LiteRT on XXS, seeded and trained)
    margin_db = 1.5

    def __init__(self, job: Job, images: np.ndarray) -> None:
        from mvdeploy.backends.pt2e import CalibratedPT2E
        from mvdeploy.models.groups import node_group

        self.job, self.images = job, images
        self.groups = list(dict.fromkeys(
            g for g in map(node_group, job.captured.module.graph.nodes) if g))
        self.calibrated = CalibratedPT2E(job.captured.module, job.calibration,
                                         per_channel=job.quantize.per_channel,
                                         input_name=INPUT_NAME, observer=observer(job.quantize))

    def logits(self, float_groups: frozenset[str] = frozenset(),
               only: str | None = None) -> np.ndarray:
        import torch

        from mvdeploy.runner import run_batched

        module = self.calibrated.quantized(float_groups, only)

        def run(x: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return next(iter(module(**{INPUT_NAME: torch.from_numpy(x)}).values())).numpy()

        return run_batched(run, self.images, self.job.captured.example.shape[0])


def int8_trials(job: Job, images: np.ndarray, workdir: Path) -> _Trials:
    """What the search for what stays float calls (see mvdeploy.pipeline.quantize.Trials)."""
    return _Trials(job, images)


METADATA_NAME = "mvdeploy"  # Model.metadata entry holding JSON (labels, preprocessing, ...)


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise MissingDependencyError("ai-edge-litert", "tflite", "TFLite metadata") from None
    return schema


def embed_metadata(path: Path, metadata: dict) -> None:
    """Add (or replace) a metadata buffer named "mvdeploy" holding JSON, readable with the
    TFLite flatbuffer schema alone, and the standard TFLITE_METADATA with the labels packed
    (mvdeploy.backends.tflite_metadata); labels also go to labels.txt beside the file."""
    import json

    import flatbuffers

    schema = _schema()
    data = path.read_bytes()
    model = schema.ModelT.InitFromPackedBuf(data, 0)
    for buf in model.buffers or []:
        # Some converters (e.g. the fp16 recipe) append weights after the flatbuffer and point
        # at them by file offset; repacking moves everything, so pull them back inline.
        if (getattr(buf, "offset", 0) or 0) > 1:
            if len(data) > 2**31 - 2**26:
                raise RuntimeError("metadata embedding needs a .tflite under 2 GB")
            buf.data = np.frombuffer(data[buf.offset:buf.offset + buf.size], dtype=np.uint8)
            buf.offset, buf.size = 0, 0
    entries = {METADATA_NAME: json.dumps(metadata).encode(),
               STANDARD_NAME: standard_metadata(data, metadata)}
    names = set(entries) | {n.encode() for n in entries}
    model.metadata = [m for m in model.metadata or [] if m.name not in names]
    for name, payload in entries.items():
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(payload, dtype=np.uint8)
        model.buffers.append(buffer)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata.append(entry)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    labels = ("\n".join(labels_of(metadata)) + "\n").encode()
    path.write_bytes(pack_files(bytes(builder.Output()), {LABEL_FILE: labels}))
    if metadata.get("labels"):
        path.with_name("labels.txt").write_text("\n".join(metadata["labels"]) + "\n")


def read_metadata(path: Path) -> dict:
    """All Model.metadata entries; the "mvdeploy" one decoded from JSON."""
    import json

    schema = _schema()
    data = path.read_bytes()
    model = schema.Model.GetRootAsModel(data, 0)
    out = {}
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        name = entry.Name().decode()
        raw = model.Buffers(entry.Buffer()).DataAsNumpy()
        raw = bytes(raw) if not isinstance(raw, int) else b""
        if name == METADATA_NAME:
            out[name] = json.loads(raw)
        elif name == STANDARD_NAME:
            out[name] = read_standard_metadata(raw, data)
        else:  # the converter's own entries are short strings or flags
            try:
                out[name] = raw.rstrip(b"\0").decode()
            except UnicodeDecodeError:
                out[name] = raw.hex()
    return out


def check_installed() -> None:
    require("litert_torch", "litert-torch", "tflite", "TFLite export")
    _interpreter_class()


def _interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:  # legacy runtime, only as a fallback (2.14 does not import under NumPy 2)
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            raise MissingDependencyError("ai-edge-litert", "tflite", "Running TFLite models") \
                from None
    return Interpreter


def load(path: Path, *, threads: int | None = None, accelerator: str = "cpu") -> Session:
    interpreter = _interpreter_class()(model_path=str(path), num_threads=threads or None)
    # mvdeploy names its signature; a plain conversion (the peer baseline) has only one
    signatures = interpreter.get_signature_list()
    runner = interpreter.get_signature_runner(SIGNATURE if SIGNATURE in signatures else None)
    (input_name, details), = runner.get_input_details().items()
    nhwc = int(details["shape"][1]) != 3  # NCHW has its 3 channels at axis 1
    scale, zero_point = details.get("quantization", (0.0, 0))
    dtype = details["dtype"]
    (output_name, out_details), = runner.get_output_details().items()  # logits or probabilities
    out_scale, out_zero = out_details.get("quantization", (0.0, 0))

    def prepare(x: np.ndarray) -> dict:
        if nhwc:
            x = x.transpose(0, 2, 3, 1)
        if scale:  # integer input: quantise with the tensor's own parameters
            x = np.clip(np.round(x / scale + zero_point), np.iinfo(dtype).min,
                        np.iinfo(dtype).max)
        return {input_name: np.ascontiguousarray(x, dtype=dtype)}

    def scores(out: dict) -> np.ndarray:
        out = out[output_name]
        if np.issubdtype(out.dtype, np.integer) and not out_scale:  # a mask: class indices
            return np.ascontiguousarray(out)
        if out_scale:
            out = (out.astype(np.float32) - out_zero) * out_scale
        if nhwc and out.ndim == 4:  # per-pixel scores come out NHWC with an NHWC input
            out = out.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(out, dtype=np.float32)

    return Session(prepare=prepare, infer=lambda feed: runner(**feed), scores=scores)


def plain_export(module, example, path: Path) -> None:
    """What a user gets by hand: litert_torch.convert, nothing else."""
    import litert_torch

    litert_torch.convert(module, (example,)).export(str(path))


def describe(path: Path) -> dict:
    interpreter = _interpreter_class()(model_path=str(path))
    signatures = interpreter.get_signature_list()
    runner = interpreter.get_signature_runner(SIGNATURE) if SIGNATURE in signatures else None

    def info(name: str, d: dict) -> dict:
        out = tensor_info(name, d["shape"], np.dtype(d["dtype"]).name)
        scale, zero = d.get("quantization", (0.0, 0))
        if scale:
            out["quantization"] = {"scale": float(scale), "zero_point": int(zero)}
        return out

    ops: Counter[str] = Counter()
    # the op list is only exposed through this private call; absent in some runtimes
    with contextlib.suppress(AttributeError):
        ops.update(op["op_name"] for op in interpreter._get_ops_details())
    ranks = [len(t["shape"]) for t in interpreter.get_tensor_details()]
    return {
        "metadata": read_metadata(path),
        "signatures": signatures,
        "inputs": [info(k, v) for k, v in runner.get_input_details().items()] if runner else [],
        "outputs": [info(k, v) for k, v in runner.get_output_details().items()] if runner else [],
        "ops": dict(ops.most_common()),
        "max_rank": max(ranks, default=0),
        "tensor_types": dict(Counter(np.dtype(t["dtype"]).name
                                     for t in interpreter.get_tensor_details())),
    }


def snippet(manifest: dict, client: str | None = None) -> str:
    """Kotlin for Android: LiteRT's Interpreter with the artifact's real tensor names; or, with
    client "mediapipe" / "mediapipe-python", MediaPipe Tasks' ImageClassifier (ImageSegmenter
    for a segmentation model)."""
    if client:
        return _mediapipe_snippet(manifest, kotlin=client == "mediapipe")
    if is_segmentation(manifest):
        return _segmentation_snippet(manifest)
    art, prep = manifest["artifact"], manifest["preprocessing"]
    (inp,) = art["inputs"]
    (out,) = art["outputs"]
    signature = art.get("signature", "serving_default")
    classes = out["shape"][-1]
    labels = manifest.get("labels")
    result = "labels[best]" if labels else "\"class $best\""
    labels_line = ("    val labels = context.assets.open(\"labels.txt\")"
                   ".bufferedReader().readLines()\n" if labels else "")
    softmax = "" if out["name"] == PROBS_NAME else (
        "    // the model outputs logits: apply softmax for probabilities\n")
    return f"""\
// {art['file']} in src/main/assets{' with labels.txt' if labels else ''}.
{_interpreter_header(art, prep)}
fun classify(context: Context, photo: Bitmap): Pair<String, Float> {{
{_interpreter_input(art, prep, labels_line)}\
    val scores = Array(1) {{ FloatArray({classes}) }}
    interpreter.runSignature(mapOf("{inp['name']}" to input), mapOf("{out['name']}" to scores),
        "{signature}")
    interpreter.close()
{softmax}    val best = scores[0].indices.maxBy {{ scores[0][it] }}
    return {result} to scores[0][best]
}}
"""


def _interpreter_header(art: dict, prep: dict) -> str:
    """The Gradle line, the tensors in words and the imports of the Interpreter snippets."""
    (inp,) = art["inputs"]
    (out,) = art["outputs"]
    signature = art.get("signature", "serving_default")
    return f"""\
// Gradle: implementation("{LITERT_GRADLE}")
// Signature "{signature}": input "{inp['name']}" {inp['dtype']} {inp['shape']} \
({prep['input_layout']}, {prep['channel_order']}),
// output "{out['name']}" {out['dtype']} {out['shape']}.
import android.content.Context
import android.graphics.Bitmap
import org.tensorflow.lite.Interpreter
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel
"""


def _interpreter_input(art: dict, prep: dict, labels_line: str = "") -> str:
    """Kotlin lines that open the Interpreter and fill `input` from the Bitmap `photo`,
    preprocessed as in training, in the input's layout."""
    height, width = prep["crop"]
    nhwc = prep["input_layout"] == "NHWC"
    index = "(i * 3 + c)" if nhwc else f"(c * {height * width} + i)"
    channels = "\n".join(  # `when` as an expression needs an else branch
        f"                {'else' if c == 2 else c} -> {kotlin_channel_expr(name, prep)}"
        for c, name in enumerate(prep["channel_order"]))
    return f"""\
    val model = context.assets.openFd("{art['file']}").use {{ fd ->
        FileInputStream(fd.fileDescriptor).channel.map(
            FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
    }}
{labels_line}    val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(2))
{kotlin_crop(prep)}\
    val pixels = IntArray({width} * {height})
    crop.getPixels(pixels, 0, {width}, 0, 0, {width}, {height})
    val input = ByteBuffer.allocateDirect(4 * 3 * {width} * {height}).order(ByteOrder.nativeOrder())
    for ((i, p) in pixels.withIndex()) {{
        for (c in 0 until 3) {{
            input.putFloat(4 * {index}, when (c) {{
{channels}
            }})
        }}
    }}
"""


def _segmentation_snippet(manifest: dict) -> str:
    """Kotlin for a segmentation .tflite: the class of every pixel of the crop from a mask
    output (export --mask), or of every cell of the logits' grid (1/output-stride of the crop)."""
    art, prep = manifest["artifact"], manifest["preprocessing"]
    (inp,) = art["inputs"]
    (out,) = art["outputs"]
    signature = art.get("signature", "serving_default")
    mask = out["name"] == MASK_NAME
    run = (f'    interpreter.runSignature(mapOf("{inp["name"]}" to input), '
           f'mapOf("{out["name"]}" to {"mask" if mask else "scores"}),\n'
           f'        "{signature}")\n    interpreter.close()\n')
    if mask:
        _, rows, cols = out["shape"]
        read = (f"    val mask = Array(1) {{ Array({rows}) {{ IntArray({cols}) }} }}\n{run}"
                "    return mask[0]  // mask[0][y][x]: the class of pixel (x, y) of the crop\n")
    elif out["name"] != OUTPUT_NAME:
        raise ArtifactError(f"{art['file']} outputs {out['name']}: the Kotlin segmentation "
                            "snippet reads logits or a mask (export --mask); for probabilities "
                            "use --client mediapipe")
    elif prep["input_layout"] == "NHWC":  # channels_last: scores [1, h, w, classes]
        _, rows, cols, classes = out["shape"]
        read = (f"    val scores = Array(1) {{ Array({rows}) {{ Array({cols}) {{ "
                f"FloatArray({classes}) }} }} }}\n{run}"
                f"    return Array({rows}) {{ y -> IntArray({cols}) {{ x ->\n"
                "        scores[0][y][x].indices.maxBy { scores[0][y][x][it] } } }\n")
    else:  # scores [1, classes, h, w]
        _, classes, rows, cols = out["shape"]
        read = (f"    val scores = Array(1) {{ Array({classes}) {{ Array({rows}) {{ "
                f"FloatArray({cols}) }} }} }}\n{run}"
                f"    return Array({rows}) {{ y -> IntArray({cols}) {{ x ->\n"
                f"        (0 until {classes}).maxBy {{ scores[0][it][y][x] }} }} }}\n")
    height, width = prep["crop"]
    grid = "" if mask else (
        f"// The logits are a {rows}x{cols} grid over the {width}x{height} crop: this returns the "
        "class of each cell;\n// export with --mask for the class of every pixel.\n")
    labels = " (labels.txt names them, one per line)" if manifest.get("labels") else ""
    return f"""\
// {art['file']} in src/main/assets: segmentation, class indices{labels}.
{grid}{_interpreter_header(art, prep)}
fun segment(context: Context, photo: Bitmap): Array<IntArray> {{
{_interpreter_input(art, prep)}{read}}}
"""


MEDIAPIPE_GRADLE = "com.google.mediapipe:tasks-vision:latest.release"


def _mediapipe_snippet(manifest: dict, *, kotlin: bool) -> str:
    """MediaPipe reads labels and normalisation from the file's TFLITE_METADATA. The resize and
    centre crop are done before it, as in training: MediaPipe's own resize of a region of
    interest is bilinear without antialiasing, which disagrees with the checkpoint's on
    downscaled photos (docs/apps.md, "MediaPipe"); given the crop itself it matches PyTorch."""
    art, prep = manifest["artifact"], manifest["preprocessing"]
    if prep["input_layout"] != "NHWC" or prep["channel_order"] != "RGB":
        raise ArtifactError(f"{art['file']} takes {prep['input_layout']} {prep['channel_order']} "
                            "input; MediaPipe feeds NHWC RGB images: export with "
                            "tflite.channels_last = true and export.input_channels = RGB "
                            "(the shipped *_android.toml configs do)")
    if is_segmentation(manifest):
        if art["outputs"][0]["name"] == MASK_NAME:
            raise ArtifactError(f"{art['file']} outputs a mask (export --mask), and MediaPipe's "
                                "ImageSegmenter reads class scores: export without --mask (the "
                                "shipped deeplabv3_*_android.toml does)")
        return (_mediapipe_segmenter_kotlin if kotlin else _mediapipe_segmenter_python)(
            art, prep)
    if kotlin:
        crop = kotlin_crop(prep, _crop_here_comment(prep, "//"))
        return f"""\
// {art['file']} in src/main/assets: MediaPipe reads its labels and normalisation from the file.
// Gradle: implementation("{MEDIAPIPE_GRADLE}")
import android.content.Context
import android.graphics.Bitmap
import com.google.mediapipe.framework.image.BitmapImageBuilder
import com.google.mediapipe.tasks.core.BaseOptions
import com.google.mediapipe.tasks.vision.imageclassifier.ImageClassifier

fun classify(context: Context, photo: Bitmap): Pair<String, Float> {{
    val options = ImageClassifier.ImageClassifierOptions.builder()
        .setBaseOptions(BaseOptions.builder().setModelAssetPath("{art['file']}").build())
        .setMaxResults(5).build()
    val classifier = ImageClassifier.createFromOptions(context, options)
{crop}\
    val result = classifier.classify(BitmapImageBuilder(crop).build())
    classifier.close()
    val best = result.classificationResult().classifications()[0].categories()[0]
    return best.categoryName() to best.score()
}}
"""
    crop = python_crop(prep, _crop_here_comment(prep, "#"))
    return f"""\
# {art['file']} with MediaPipe Tasks (pip install mediapipe): labels and normalisation come
# from the file itself.
import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions
from PIL import Image, ImageOps

classifier = vision.ImageClassifier.create_from_options(vision.ImageClassifierOptions(
    base_options=BaseOptions(model_asset_path="{art['file']}"), max_results=5))


def classify(path):
{crop}\
    result = classifier.classify(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop))
    return [(c.category_name, c.score) for c in result.classifications[0].categories]
"""


def _crop_here_comment(prep: dict, marker: str) -> str:
    """The MediaPipe snippets' comment on why they crop the photo themselves; `marker` starts a
    comment line ("//" in Kotlin, "#" in Python)."""
    return (f"    {marker} As the model was trained: {crop_text(prep)}, here rather than\n"
            f"    {marker} through MediaPipe's region of interest, whose resize differs on "
            "downscaled photos.\n")


def _mediapipe_segmenter_kotlin(art: dict, prep: dict) -> str:
    height, width = prep["crop"]
    return f"""\
// {art['file']} in src/main/assets: MediaPipe's ImageSegmenter reads its labels,
// normalisation and activation from the file.
// Gradle: implementation("{MEDIAPIPE_GRADLE}")
import android.content.Context
import android.graphics.Bitmap
import com.google.mediapipe.framework.image.BitmapImageBuilder
import com.google.mediapipe.framework.image.ByteBufferExtractor
import com.google.mediapipe.tasks.core.BaseOptions
import com.google.mediapipe.tasks.vision.imagesegmenter.ImageSegmenter

// The class of every pixel of the {width}x{height} crop, row by row, and the class names.
fun segment(context: Context, photo: Bitmap): Pair<ByteArray, List<String>> {{
    val options = ImageSegmenter.ImageSegmenterOptions.builder()
        .setBaseOptions(BaseOptions.builder().setModelAssetPath("{art['file']}").build())
        .setOutputCategoryMask(true).setOutputConfidenceMasks(false).build()
    val segmenter = ImageSegmenter.createFromOptions(context, options)
{kotlin_crop(prep, _crop_here_comment(prep, "//"))}\
    val result = segmenter.segment(BitmapImageBuilder(crop).build())
    val mask = ByteBufferExtractor.extract(result.categoryMask().get())
    val labels = segmenter.labels
    segmenter.close()
    return ByteArray(mask.remaining()).also {{ mask.get(it) }} to labels
}}
"""


def _mediapipe_segmenter_python(art: dict, prep: dict) -> str:
    return f"""\
# {art['file']} with MediaPipe Tasks (pip install mediapipe): labels, normalisation and
# activation come from the file itself.
import mediapipe as mp
import numpy as np
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core.base_options import BaseOptions
from PIL import Image, ImageOps

segmenter = vision.ImageSegmenter.create_from_options(vision.ImageSegmenterOptions(
    base_options=BaseOptions(model_asset_path="{art['file']}"), output_category_mask=True,
    output_confidence_masks=False))


def segment(path):  # the class of every pixel of the crop (uint8 [H, W]), the class names
{python_crop(prep, _crop_here_comment(prep, "#"))}\
    result = segmenter.segment(mp.Image(image_format=mp.ImageFormat.SRGB, data=crop))
    return result.category_mask.numpy_view().squeeze(-1), segmenter.labels
"""

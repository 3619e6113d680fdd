"""App code for an exported artifact: Swift (Core ML + Vision) and Kotlin (LiteRT Interpreter).

Generated from the artifact's manifest (file name, tensor names, shapes, preprocessing), so
the names in the code are the names in the file; the tests compile nothing but check exactly
that against an exported artifact. README's snippets come from here too.
"""

from __future__ import annotations

from pathlib import Path

from mvdeploy.errors import ArtifactError
from mvdeploy.manifest import manifest_beside

LITERT_GRADLE = "com.google.ai.edge.litert:litert:1.0.1"  # 1.x ships org.tensorflow.lite


def load_manifest(artifact: str | Path) -> dict:
    path = Path(artifact).expanduser()
    manifest = manifest_beside(path)
    if manifest is None:
        raise ArtifactError(f"no readable manifest.json for {path.name} beside it (missing, "
                            "unreadable, or describing another file): snippets are generated "
                            "from the manifest mvdeploy export writes")
    return manifest


def snippet(manifest: dict) -> tuple[str, str]:
    """(language, code) for the manifest's artifact."""
    fmt = manifest["format"]
    if fmt == "coreml":
        return "swift", swift(manifest)
    if fmt == "tflite":
        return "kotlin", kotlin(manifest)
    raise ArtifactError(f"snippets exist for Core ML (Swift) and TFLite (Kotlin), not {fmt}; "
                        "README shows ONNX Runtime in Python")


def _crop_text(prep: dict) -> str:
    height, width = prep["crop"]
    return f"resize the shorter side to {prep['resize_shorter_side']}, centre-crop {height}x{width}"


def swift(manifest: dict) -> str:
    art, prep = manifest["artifact"], manifest["preprocessing"]
    (image,) = art["inputs"]
    names = [o["name"] for o in art["outputs"]]
    if image["dtype"] != "image" or len(names) != 2:
        raise ArtifactError("the Swift snippet uses Vision, which needs an image input and a "
                            "classifier: export with --set coreml.image_input=true --set "
                            "coreml.classifier=true (the *_ios.toml configs do)")
    label, probs = names
    cls = Path(art["file"]).stem  # Xcode names the generated class after the file
    height, width = prep["crop"]
    short = prep["resize_shorter_side"]
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
    // As the model was trained: {_crop_text(prep)}.
    let scale = {short}.0 / Double(min(photo.width, photo.height))
    let cropWidth = {width}.0 / scale / Double(photo.width)
    let cropHeight = {height}.0 / scale / Double(photo.height)
    request.regionOfInterest = CGRect(x: (1 - cropWidth) / 2, y: (1 - cropHeight) / 2,
                                      width: cropWidth, height: cropHeight)
    request.imageCropAndScaleOption = .scaleFill
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


def _channel_expr(channel: str, prep: dict) -> str:
    """Kotlin expression for one channel of an ARGB pixel `p`, normalised as in training."""
    shift = {"R": 16, "G": 8, "B": 0}[channel]
    index = "RGB".index(channel)  # mean / std are given in RGB order
    value = f"(p shr {shift} and 0xFF)" if shift else "(p and 0xFF)"
    expr = f"{value} * {prep['scale']:.8g}f"
    mean, std = prep["mean"][index], prep["std"][index]
    if mean:
        expr = f"({expr} - {mean:.8g}f)"
    if std != 1:
        expr = f"{expr} / {std:.8g}f"
    return expr


def kotlin(manifest: dict) -> str:
    art, prep = manifest["artifact"], manifest["preprocessing"]
    (inp,) = art["inputs"]
    (out,) = art["outputs"]
    signature = art.get("signature", "serving_default")
    height, width = prep["crop"]
    short = prep["resize_shorter_side"]
    classes = out["shape"][-1]
    nhwc = prep["input_layout"] == "NHWC"
    index = "(i * 3 + c)" if nhwc else f"(c * {height * width} + i)"
    channels = "\n".join(  # `when` as an expression needs an else branch
        f"                {'else' if c == 2 else c} -> {_channel_expr(name, prep)}"
        for c, name in enumerate(prep["channel_order"]))
    labels = manifest.get("labels")
    result = "labels[best]" if labels else "\"class $best\""
    labels_line = ("    val labels = context.assets.open(\"labels.txt\")"
                   ".bufferedReader().readLines()\n" if labels else "")
    softmax = "" if out["name"] == "probabilities" else (
        "    // the model outputs logits: apply softmax for probabilities\n")
    return f"""\
// {art['file']} in src/main/assets{' with labels.txt' if labels else ''}.
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

fun classify(context: Context, photo: Bitmap): Pair<String, Float> {{
    val model = context.assets.openFd("{art['file']}").use {{ fd ->
        FileInputStream(fd.fileDescriptor).channel.map(
            FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
    }}
{labels_line}    val interpreter = Interpreter(model, Interpreter.Options().setNumThreads(2))
    // As the model was trained: {_crop_text(prep)}.
    val shorter = minOf(photo.width, photo.height)
    val resized = Bitmap.createScaledBitmap(photo, maxOf({width}, {short} * photo.width / shorter),
        maxOf({height}, {short} * photo.height / shorter), true)
    val crop = Bitmap.createBitmap(resized, (resized.width - {width}) / 2,
        (resized.height - {height}) / 2, {width}, {height})
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
    val scores = Array(1) {{ FloatArray({classes}) }}
    interpreter.runSignature(mapOf("{inp['name']}" to input), mapOf("{out['name']}" to scores),
        "{signature}")
    interpreter.close()
{softmax}    val best = scores[0].indices.maxBy {{ scores[0][it] }}
    return {result} to scores[0][best]
}}
"""

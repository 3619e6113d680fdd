"""ExecuTorch: the captured program lowered to XNNPACK and written as a .pte.

`to_edge_transform_and_lower` with the XNNPACK partitioner hands every op XNNPACK supports to
the delegate; the rest (a few LayerNorm, split and mean ops) runs in ExecuTorch's portable
kernels. The program's one method, `forward`, takes `pixel_values` NCHW float32 and returns
the logits, like the other formats. A .pte has no field for free-form metadata: labels go to
labels.txt beside it and the manifest carries the rest.

The Python runtime is ExecuTorch's own pybindings. They link libtorch and take torch tensors,
so this is the one runtime that imports torch (the Android and iOS runtimes do not).
"""

from __future__ import annotations

import importlib.metadata
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvdeploy.backends import (
    APP_METADATA,
    FormatSpec,
    Job,
    Package,
    Recipe,
    Runtime,
    Session,
    require,
    tensor_info,
)
from mvdeploy.backends.snippet_text import is_segmentation, kotlin_channel_expr, kotlin_crop
from mvdeploy.tensor_names import INPUT_NAME, MASK_NAME, OUTPUT_NAME

METHOD = "forward"
ANDROID_GRADLE = "org.pytorch:executorch-android"
_SCALAR_TYPES = {6: "float32", 5: "float16", 1: "int8", 0: "uint8", 3: "int32", 4: "int64"}


@dataclass(frozen=True)
class ExecutorchOptions:
    xnnpack: bool = True  # lower to the XNNPACK delegate; false: portable kernels only


SPEC = FormatSpec(
    name="executorch", title="ExecuTorch", suffix=".pte", extra="executorch",
    export_needs=(Package("executorch", "executorch.exir", "ExecuTorch lowering (XNNPACK)"),),
    run_needs=(Package("executorch", "executorch.extension.pybindings.portable_lib",
                       "ExecuTorch runtime (Python bindings)"),),
    recipes={"fp32": Recipe("float32, XNNPACK delegate", tolerance="fp32")},
    options=ExecutorchOptions,
    metadata=True,
    runtimes=(Runtime("executorch", ("cpu",), imports_torch=True),),
    snippet_language="kotlin", peer=True,
    default=False,  # opt-in (--format executorch): its extra is large
)


def check_installed() -> None:
    require("executorch.exir", "executorch", SPEC.extra, "ExecuTorch export")


def _lower(program, xnnpack: bool) -> bytes:
    from executorch.exir import to_edge_transform_and_lower

    partitioners = []
    if xnnpack:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        partitioners.append(XnnpackPartitioner())
    return to_edge_transform_and_lower(program, partitioner=partitioners).to_executorch().buffer


def convert(job: Job) -> dict:
    check_installed()
    job.path.write_bytes(_lower(job.captured.program, job.options.xnnpack))
    return {"recipe": job.recipe, "delegate": "XnnpackBackend" if job.options.xnnpack else None,
            "method": METHOD, "executorch": importlib.metadata.version("executorch")}


def embed_metadata(path: Path, metadata: dict) -> None:
    """Labels beside the program, for the app (the manifest holds the whole record)."""
    if metadata.get("labels"):
        path.with_name("labels.txt").write_text("\n".join(metadata["labels"]) + "\n")


def plain_export(module, example, path: Path) -> None:
    """What a user gets by hand: torch.export, then XNNPACK lowering as ExecuTorch's docs do."""
    import torch

    program = torch.export.export(module.eval(), (example,))
    path.write_bytes(_lower(program, xnnpack=True))


def load(path: Path, *, threads: int | None = None, accelerator: str = "cpu") -> Session:
    torch = require("torch", "torch", "", "Running ExecuTorch programs from Python")
    runtime = require("executorch.extension.pybindings.portable_lib", "executorch",
                      SPEC.extra, "Running ExecuTorch programs")
    if threads:
        runtime._unsafe_reset_threadpool(threads)  # XNNPACK's thread pool
    module = runtime._load_for_executorch(str(path))
    return Session(prepare=lambda x: (torch.from_numpy(np.ascontiguousarray(x, np.float32)),),
                   infer=lambda feed: module.run_method(METHOD, feed),
                   scores=lambda out: out[0].numpy())


def describe(path: Path) -> dict:
    """The program's methods, inputs and outputs, and which ops XNNPACK took (delegate calls)
    and which run in ExecuTorch's own kernels."""
    require("executorch.exir", "executorch", SPEC.extra, "Reading ExecuTorch programs")
    from executorch.exir._serialize._program import deserialize_pte_binary

    pte = deserialize_pte_binary(path.read_bytes())
    program = getattr(pte, "program", pte)  # newer releases wrap the program
    plan = next(p for p in program.execution_plan if p.name == METHOD)
    ops: Counter[str] = Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            if type(args).__name__ == "KernelCall":
                ops[plan.operators[args.op_index].name] += 1
            elif type(args).__name__ == "DelegateCall":
                ops[f"delegate:{plan.delegates[args.delegate_index].id}"] += 1
    tensors = [v.val for v in plan.values if type(v.val).__name__ == "Tensor"]

    def info(name: str, index: int) -> dict:
        tensor = plan.values[index].val
        return tensor_info(name, tensor.sizes, _SCALAR_TYPES.get(int(tensor.scalar_type),
                                                                  str(tensor.scalar_type)))

    delegated = sum(n for op, n in ops.items() if op.startswith("delegate:"))
    # a .pte names no tensors: the output's name is the one app_metadata.json beside it gives
    # (logits, or mask for a segmentation mask export)
    try:
        named = json.loads(path.with_name(APP_METADATA).read_text()).get("outputs")
    except (OSError, ValueError, AttributeError):
        named = None
    output_names = named if named and len(named) == len(plan.outputs) else [OUTPUT_NAME] * len(
        plan.outputs)
    return {
        "methods": [p.name for p in program.execution_plan],
        "inputs": [info(INPUT_NAME, i) for i in plan.inputs],
        "outputs": [info(name, i) for name, i in zip(output_names, plan.outputs, strict=True)],
        "ops": dict(ops.most_common()),
        "delegated_calls": delegated,
        "portable_calls": sum(ops.values()) - delegated,
        "max_rank": max((len(t.sizes) for t in tensors), default=0),
        "tensor_types": dict(Counter(_SCALAR_TYPES.get(int(t.scalar_type), "other")
                                     for t in tensors)),
    }


def snippet(manifest: dict) -> str:
    """Kotlin for Android: ExecuTorch's Module with the artifact's shapes and preprocessing;
    for segmentation, the class per pixel (a mask export) or per cell of the logits' grid."""
    art, prep = manifest["artifact"], manifest["preprocessing"]
    (inp,) = art["inputs"]
    (out,) = art["outputs"]
    height, width = prep["crop"]
    plane = height * width
    order = prep["channel_order"]
    channels = "\n".join(f"        input[{c * plane} + i] = {kotlin_channel_expr(name, prep)}"
                         for c, name in enumerate(order))
    labels = manifest.get("labels")
    segmentation = is_segmentation(manifest)
    labels_line = ("    val labels = context.assets.open(\"labels.txt\")"
                   ".bufferedReader().readLines()\n" if labels and not segmentation else "")
    version = art.get("executorch", "")
    forward = "module.forward(EValue.from(tensor))[0].toTensor()"
    if not segmentation:
        result = "labels[best]" if labels else "\"class $best\""
        signature, kind = "fun classify(context: Context, photo: Bitmap): Pair<String, Float>", \
            "logits"
        read = f"""\
    val scores = {forward}.dataAsFloatArray
    // the model outputs logits: apply softmax for probabilities
    val best = scores.indices.maxBy {{ scores[it] }}
    return {result} to scores[best]
"""
    elif out["name"] == MASK_NAME:
        _, rows, cols = out["shape"]
        signature = "fun segment(context: Context, photo: Bitmap): IntArray"
        kind = f"the class of every pixel of the crop, row by row: mask[y * {cols} + x]"
        read = f"    return {forward}.dataAsIntArray\n"
    else:
        _, classes, rows, cols = out["shape"]
        signature = "fun segment(context: Context, photo: Bitmap): IntArray"
        kind = (f"logits on a {rows}x{cols} grid over the crop; this returns the class of each "
                "cell,\n// row by row (export with --mask for every pixel)")
        read = f"""\
    val scores = {forward}.dataAsFloatArray
    return IntArray({rows * cols}) {{ cell ->
        (0 until {classes}).maxBy {{ scores[it * {rows * cols} + cell] }} }}
"""
    return f"""\
// {art['file']}: copy it from the app's assets to filesDir (Module.load takes a file path).
// Gradle: implementation("{ANDROID_GRADLE}:<version>"), the release matching the
// executorch {version} that wrote this file.
// Method "{METHOD}": input {inp['dtype']} {inp['shape']} (NCHW, {order}),
// output {out['dtype']} {out['shape']} ({kind}).
import android.content.Context
import android.graphics.Bitmap
import org.pytorch.executorch.EValue
import org.pytorch.executorch.Module
import org.pytorch.executorch.Tensor
import java.io.File

{signature} {{
    val file = File(context.filesDir, "{art['file']}")
    if (!file.exists()) {{
        context.assets.open("{art['file']}").use {{ it.copyTo(file.outputStream()) }}
    }}
    val module = Module.load(file.absolutePath)
{labels_line}{kotlin_crop(prep)}\
    val pixels = IntArray({plane})
    crop.getPixels(pixels, 0, {width}, 0, 0, {width}, {height})
    val input = FloatArray(3 * {plane})
    for ((i, p) in pixels.withIndex()) {{
{channels}
    }}
    val tensor = Tensor.fromBlob(input, longArrayOf(1, 3, {height}, {width}))
{read}}}
"""

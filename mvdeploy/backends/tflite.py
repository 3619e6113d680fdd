"""TFLite (LiteRT): litert-torch converts the captured program; ai-edge-litert runs it.

The signature is `serving_default` with input `pixel_values` and output `logits`, so Android
code can call the model by name. With channels_last the input is NHWC [B, H, W, 3].
"""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from mvdeploy.backends import Runner, require, tensor_info
from mvdeploy.capture import INPUT_NAME, Captured, WithSoftmax
from mvdeploy.errors import MissingDependencyError
from mvdeploy.quantize import Calibration, pt2e_quantize

SUFFIX = ".tflite"
SIGNATURE = "serving_default"


def _channels_last(program: torch.nn.Module) -> torch.nn.Module:
    """Take NHWC input [B, H, W, 3] and permute it for the captured NCHW graph.

    litert_torch.to_channel_last_io does the same but only for positional inputs, and the
    signature names its inputs after keyword arguments. (The attribute must not be called
    `graph`: that name collides with GraphModule.graph when litert-torch re-exports.)
    """

    class ChannelsLast(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.program = program

        def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
            return self.program(**{INPUT_NAME: pixel_values.permute(0, 3, 1, 2)})

    return ChannelsLast()  # no .eval(): exported graphs refuse train(); they are inference-only


def export(captured: Captured, cfg, path: Path, *, calibration: Calibration | None = None) -> dict:
    litert_torch = require("litert_torch", "litert-torch", "tflite", "TFLite export")
    from litert_torch.generative.quantize import quant_recipes
    from litert_torch.quantize.quant_config import QuantConfig

    recipe = cfg.precision("tflite")
    module, example = captured.module, captured.example
    quant_config = {
        "fp32": lambda: None,
        "fp16": quant_recipes.full_fp16_recipe,
        "int8-dynamic": quant_recipes.full_dynamic_recipe,
    }.get(recipe, lambda: None)()
    if recipe == "int8-static":
        module, quantizer = pt2e_quantize(module, calibration, per_channel=cfg.quantize.per_channel,
                                          input_name=INPUT_NAME)
        quant_config = QuantConfig(pt2e_quantizer=quantizer)
    if cfg.tflite.softmax_output:
        module = WithSoftmax(module)
    if cfg.tflite.channels_last:
        module, example = _channels_last(module), example.permute(0, 2, 3, 1).contiguous()
    edge_model = litert_torch.convert(module, sample_kwargs={INPUT_NAME: example},
                                      quant_config=quant_config)
    edge_model.export(str(path))
    return {"signature": SIGNATURE, "recipe": recipe,
            "input_layout": "NHWC" if cfg.tflite.channels_last else "NCHW"}


METADATA_NAME = "mvdeploy"  # Model.metadata entry holding JSON (labels, preprocessing, ...)


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        raise MissingDependencyError("ai-edge-litert", "tflite", "TFLite metadata") from None
    return schema


def embed_metadata(path: Path, metadata: dict) -> None:
    """Add (or replace) a metadata buffer named "mvdeploy" holding JSON, readable with the
    TFLite flatbuffer schema alone; labels also go to labels.txt beside the file."""
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
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in model.metadata or []
                      if m.name not in (METADATA_NAME, METADATA_NAME.encode())] + [entry]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(builder.Output())
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


def load(path: Path, *, threads: int | None = None) -> Runner:
    interpreter = _interpreter_class()(model_path=str(path), num_threads=threads or None)
    runner = interpreter.get_signature_runner(SIGNATURE)
    details = runner.get_input_details()[INPUT_NAME]
    nhwc = int(details["shape"][1]) != 3  # NCHW has its 3 channels at axis 1
    scale, zero_point = details.get("quantization", (0.0, 0))
    dtype = details["dtype"]
    (output_name, out_details), = runner.get_output_details().items()  # logits or probabilities
    out_scale, out_zero = out_details.get("quantization", (0.0, 0))

    def run(x: np.ndarray) -> np.ndarray:
        if nhwc:
            x = x.transpose(0, 2, 3, 1)
        if scale:  # integer input: quantise with the tensor's own parameters
            x = np.clip(np.round(x / scale + zero_point), np.iinfo(dtype).min,
                        np.iinfo(dtype).max)
        out = runner(**{INPUT_NAME: np.ascontiguousarray(x, dtype=dtype)})[output_name]
        if out_scale:
            out = (out.astype(np.float32) - out_zero) * out_scale
        return out.astype(np.float32, copy=False)

    return run


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

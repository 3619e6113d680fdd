"""ONNX: torch.onnx's dynamo exporter from the captured program, run with onnxruntime."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from mvdeploy.backends import Runner, decode_record, require
from mvdeploy.capture import INPUT_NAME, OUTPUT_NAME, Captured
from mvdeploy.quantize import Calibration

SUFFIX = ".onnx"
_TWO_GB = 2**31


def check_installed() -> None:
    for module, package in (("onnx", "onnx"), ("onnxscript", "onnxscript"),
                            ("onnxruntime", "onnxruntime")):
        require(module, package, "onnx", "ONNX export")


def export(captured: Captured, cfg, path: Path, *, calibration: Calibration | None = None) -> dict:
    import torch

    onnx = require("onnx", "onnx", "onnx", "ONNX export")
    require("onnxscript", "onnxscript", "onnx", "ONNX export")
    program = torch.onnx.export(
        captured.program, (), kwargs={INPUT_NAME: captured.example}, dynamo=True,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        opset_version=cfg.onnx.opset, optimize=cfg.onnx.optimize, verbose=False,
    )
    size = sum(t.nbytes for t in captured.program.state_dict.values())
    # one self-contained file unless protobuf's 2 GB limit forces external data
    recipe = cfg.precision("onnx")
    float_path = path if recipe == "fp32" else path.with_name(f".fp32-{path.name}")
    program.save(str(float_path), external_data=size >= _TWO_GB)
    if captured.dynamic_batch:
        _name_batch_axis(onnx, float_path)
    info = {"opset": cfg.onnx.opset, "optimized": cfg.onnx.optimize,
            "dynamic_batch": captured.dynamic_batch, "onnx": onnx.__version__,
            "recipe": recipe}
    if recipe != "fp32":
        info.update(_quantize(float_path, path, recipe, cfg, captured, calibration))
        info["fp32_size_bytes"] = float_path.stat().st_size
        float_path.unlink()
    onnx.checker.check_model(str(path))
    return info


def _quantize(src: Path, dst: Path, recipe: str, cfg, captured: Captured,
              calibration: Calibration | None) -> dict:
    """ORT's own tools: float16 conversion, dynamic and static (QDQ) int8 quantisation."""
    import onnx

    if recipe == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        half = OnnxModel(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True))
        half.topological_sort()  # the converter appends its input casts after their users
        onnx.save(half.model, str(dst))
        return {"io_dtype": "float32"}
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = src.with_name(f".pre-{src.name}")
    quant_pre_process(str(src), str(prepared))  # shape inference + graph clean-up, as ORT advises
    try:
        if recipe == "int8-dynamic":
            quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8,
                             per_channel=cfg.quantize.per_channel)
            return {"weight_type": "int8"}
        model = onnx.load(str(prepared))
        excluded = _float_nodes(model, cfg.quantize.keep_float)
        batch = None if captured.dynamic_batch else captured.example.shape[0]

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                images = calibration.images
                step = batch or 1
                self.batches = iter([images[i:i + step] for i in range(0, len(images), step)
                                     if len(images[i:i + step]) == step])

            def get_next(self):
                chunk = next(self.batches, None)
                return None if chunk is None else {INPUT_NAME: chunk}

        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[cfg.quantize.calibration_method]
        quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=cfg.quantize.per_channel, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=method,
                        nodes_to_exclude=excluded)
        return {"format": "QDQ", "weight_type": "int8", "activation_type": "uint8",
                "calibration_method": cfg.quantize.calibration_method,
                "per_channel": cfg.quantize.per_channel,
                "kept_float": list(cfg.quantize.keep_float), "float_nodes": len(excluded)}
    finally:
        prepared.unlink(missing_ok=True)


def _float_nodes(model, keep_float: tuple[str, ...]) -> list[str]:
    """Nodes that int8-static leaves in float: softmax, LayerNorm, QK^T and AV matmuls."""
    weights = {i.name for i in model.graph.initializer}
    names = []
    for node in model.graph.node:
        is_attention = node.op_type == "MatMul" and not any(i in weights for i in node.input)
        if (("softmax" in keep_float and node.op_type == "Softmax")
                or ("layernorm" in keep_float and node.op_type == "LayerNormalization")
                or ("attention" in keep_float and is_attention)):
            names.append(node.name)
    return names


def embed_metadata(path: Path, metadata: dict) -> None:
    """metadata_props: the whole record as JSON under "mvdeploy", and the keys apps read most."""
    import json

    onnx = require("onnx", "onnx", "onnx", "ONNX metadata")
    model = onnx.load(str(path))
    props = {"mvdeploy": json.dumps(metadata), "labels": json.dumps(metadata["labels"]),
             "preprocessing": json.dumps(metadata["preprocessing"]),
             "patch_sizes": json.dumps(metadata["patch_sizes"]),
             **{k: metadata[k] for k in ("author", "license", "version") if metadata.get(k)}}
    if metadata.get("description"):
        model.doc_string = metadata["description"]
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in kept}, **props})
    onnx.save(model, str(path))


def _name_batch_axis(onnx, path: Path) -> None:
    """torch.export calls the symbolic batch 's0'-like names; users' code reads 'batch'."""
    model = onnx.load(str(path))
    for value in [*model.graph.input, *model.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        if dim.dim_param:
            dim.dim_param = "batch"
    onnx.save(model, str(path))


def load(path: Path, *, threads: int | None = None) -> Runner:
    ort = require("onnxruntime", "onnxruntime", "onnx", "Running ONNX models")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: x.astype(np.float32, copy=False)})[0]

    return run


def describe(path: Path) -> dict:
    onnx = require("onnx", "onnx", "onnx", "Reading ONNX models")
    model = onnx.load(str(path), load_external_data=False)

    def info(value) -> dict:
        t = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        return {"name": value.name, "shape": dims,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}

    initializer_names = {i.name for i in model.graph.initializer}
    tensor_types = Counter(onnx.helper.tensor_dtype_to_np_dtype(i.data_type).name
                           for i in model.graph.initializer)
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {
        "inputs": [info(v) for v in model.graph.input if v.name not in initializer_names],
        "outputs": [info(v) for v in model.graph.output],
        "ops": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "max_rank": max((len(v.type.tensor_type.shape.dim) for v in values), default=0),
        "tensor_types": dict(tensor_types.most_common()),
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                     default=None),
        "external_data": any(i.data_location == onnx.TensorProto.EXTERNAL
                             for i in model.graph.initializer),
        "metadata": decode_record({p.key: p.value for p in model.metadata_props}),
    }


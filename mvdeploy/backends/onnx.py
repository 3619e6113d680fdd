"""ONNX: torch.onnx's dynamo exporter from the captured program, run with onnxruntime."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from mvdeploy.backends import Runner, require
from mvdeploy.capture import INPUT_NAME, OUTPUT_NAME, Captured

SUFFIX = ".onnx"
_TWO_GB = 2**31


def check_installed() -> None:
    for module, package in (("onnx", "onnx"), ("onnxscript", "onnxscript"),
                            ("onnxruntime", "onnxruntime")):
        require(module, package, "onnx", "ONNX export")


def export(captured: Captured, cfg, path: Path) -> dict:
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
    program.save(str(path), external_data=size >= _TWO_GB)
    if captured.dynamic_batch:
        _name_batch_axis(onnx, path)
    onnx.checker.check_model(str(path))
    return {"opset": cfg.onnx.opset, "optimized": cfg.onnx.optimize,
            "dynamic_batch": captured.dynamic_batch, "onnx": onnx.__version__}


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
    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {
        "inputs": [info(v) for v in model.graph.input if v.name not in initializer_names],
        "outputs": [info(v) for v in model.graph.output],
        "ops": dict(Counter(n.op_type for n in model.graph.node).most_common()),
        "max_rank": max((len(v.type.tensor_type.shape.dim) for v in values), default=0),
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                     default=None),
        "external_data": any(i.data_location == onnx.TensorProto.EXTERNAL
                             for i in model.graph.initializer),
        "metadata": {p.key: p.value for p in model.metadata_props},
    }


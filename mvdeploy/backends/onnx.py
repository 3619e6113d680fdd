"""ONNX: torch.onnx's dynamo exporter from the captured program, run with onnxruntime."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mvdeploy.backends import (
    BackendUnavailable,
    CheckContext,
    FormatSpec,
    Job,
    Package,
    Recipe,
    Runtime,
    Session,
    decode_record,
    float_recipes,
    require,
)
from mvdeploy.errors import ConfigError
from mvdeploy.tensor_names import INPUT_NAME, OUTPUT_NAME

_TWO_GB = 2**31
OPSETS = range(18, 24)
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
             "tensorrt": "TensorrtExecutionProvider"}  # bench accelerator -> ORT provider


ATTENTION_FORMS = ("auto", "fused", "standard")


@dataclass(frozen=True)
class OnnxOptions:
    opset: int = 18
    optimize: bool = True  # onnxscript graph optimisation (constant folding, dead code)
    # fused: onnxruntime's com.microsoft.MultiHeadAttention (faster on ORT CPU, ORT only);
    # standard: plain ONNX ops any runtime reads; auto: fused for float recipes
    attention: str = "auto"


def _check(options: OnnxOptions, recipe: str | None, ctx: CheckContext) -> None:
    if options.opset not in OPSETS:
        raise ConfigError(f"onnx.opset must be between {OPSETS[0]} and {OPSETS[-1]}, "
                          f"got {options.opset}")
    if options.attention not in ATTENTION_FORMS:
        raise ConfigError(f"onnx.attention must be one of {', '.join(ATTENTION_FORMS)}, "
                          f"got {options.attention!r}")
    if options.attention == "fused" and recipe in QUANTIZED:
        raise ConfigError(f"onnx.attention = \"fused\" cannot be combined with {recipe}: ORT's "
                          "quantiser does not handle MultiHeadAttention; use auto or standard")


QUANTIZED = ("int8-dynamic", "int8-static")


def attention_form(options: OnnxOptions, recipe: str) -> str:
    """fused or standard, for this recipe (auto leaves quantised models to ORT's quantiser as
    plain ops: its QDQ placement knows MatMul and Softmax, not MultiHeadAttention)."""
    if options.attention == "auto":
        return "standard" if recipe in QUANTIZED else "fused"
    return options.attention


def _types(s: dict) -> dict:
    return s.get("tensor_types", {})


def unavailable(accelerator: str) -> str | None:
    """Why onnxruntime here cannot use this bench accelerator (None: it can)."""
    ort = require("onnxruntime", "onnxruntime", "onnx", "Running ONNX models")
    wanted, have = PROVIDERS[accelerator], ort.get_available_providers()
    if wanted not in have:
        return (f"onnxruntime here has no {wanted} (it has {', '.join(have)}): install "
                "onnxruntime-gpu on a CUDA machine")
    return None


SPEC = FormatSpec(
    name="onnx", title="ONNX", suffix=".onnx", extra="onnx",
    export_needs=(Package("torch", "torch", "model, torch.export capture, eager reference"),
                  Package("onnx", "onnx", "ONNX model format"),
                  Package("onnxscript", "onnxscript", "torch.onnx dynamo exporter")),
    run_needs=(Package("onnxruntime", "onnxruntime", "ONNX Runtime"),),
    recipes={
        **float_recipes("float16 weights and activations, float32 model I/O"),
        "int8-dynamic": Recipe(
            "int8 weights, activations quantised at run time (ORT quantize_dynamic)",
            evidence="int8 weights",
            shows=lambda s: _types(s).get("int8", 0) + _types(s).get("uint8", 0) > 0),
        "int8-static": Recipe(
            "int8 QDQ, per-channel weights, calibrated activations (ORT quantize_static) for "
            "Conv/Gemm/MatMul; SiLU, softmax, LayerNorm and attention matmuls kept float",
            calibrated=True, searched=True,
            evidence="QuantizeLinear/DequantizeLinear and int8 weights",
            shows=lambda s: s.get("ops", {}).get("QuantizeLinear", 0) > 0
            and _types(s).get("int8", 0) > 0),
    },
    options=OnnxOptions, check=_check, dynamic_batch=True, metadata=True,
    runtimes=(Runtime("onnxruntime", ("cpu", "cuda", "aihub"), aliases=("ort",)),
              # what a user on an Intel machine runs the same file with; opt-in (--backend)
              Runtime("openvino", ("cpu",), aliases=("ov",), loader="load_openvino",
                      needs=(Package("openvino", "openvino", "OpenVINO runtime"), "clients"),
                      default=False)),
    peer=True, accelerator_unavailable=unavailable,
    calibration_methods=("minmax", "entropy", "percentile"),
    # transformers.js' DEFAULT_DTYPE_SUFFIX_MAPPING (utils/dtypes.js): fp32 "", fp16 "_fp16",
    # q8 (8-bit) "_quantized", under onnx/; optimum looks for model.onnx, else any one .onnx
    hf_file_names={"fp32": "model", "fp16": "model_fp16", "int8-dynamic": "model_quantized",
                   "int8-static": "model_quantized"},
)


def check_installed() -> None:
    for package in (*SPEC.export_needs, *SPEC.run_needs):
        require(package.module, package.distribution, SPEC.extra, "ONNX export")


def _export_float(job: Job, path: Path, attention: str) -> str:
    """torch.onnx's dynamo export of the captured program to `path` (float32); with
    attention="fused", ORT's MultiHeadAttention. Returns what was done to attention."""
    import torch

    onnx = require("onnx", "onnx", "onnx", "ONNX export")
    require("onnxscript", "onnxscript", "onnx", "ONNX export")
    captured, options = job.captured, job.options
    program = torch.onnx.export(
        captured.program, (), kwargs={INPUT_NAME: captured.example}, dynamo=True,
        input_names=[INPUT_NAME], output_names=[captured.output],
        opset_version=options.opset, optimize=options.optimize, verbose=False,
    )
    external = sum(t.nbytes for t in captured.program.state_dict.values()) >= _TWO_GB
    # one self-contained file unless protobuf's 2 GB limit forces external data
    program.save(str(path), external_data=external)
    done = "standard"
    from mvdeploy.models import get_model_cfg

    heads = getattr(get_model_cfg(job.model), "num_heads", None)
    if attention == "fused" and heads is None:  # MobileViTv2's separable attention has none
        done = "standard (separable attention: no multi-head attention to fuse)"
    elif attention == "fused":
        from mvdeploy.backends.onnx_attention import fuse_attention

        model = onnx.load(str(path))
        fused = fuse_attention(model, heads)
        onnx.save(model, str(path), save_as_external_data=external)
        done = (f"com.microsoft.MultiHeadAttention ({fused} fused)" if fused
                else "standard (no attention matched the fusion pattern)")
    if captured.dynamic_batch:
        _name_batch_axis(onnx, path)
    return done


def convert(job: Job) -> dict:
    onnx = require("onnx", "onnx", "onnx", "ONNX export")
    path, recipe, options = job.path, job.recipe, job.options
    float_path = path if recipe == "fp32" else path.with_name(f".fp32-{path.name}")
    attention = _export_float(job, float_path, attention_form(options, recipe))
    info = {"opset": options.opset, "optimized": options.optimize,
            "dynamic_batch": job.captured.dynamic_batch, "onnx": onnx.__version__,
            "recipe": recipe, "attention": attention}
    if recipe != "fp32":
        info.update(_quantize(float_path, path, job))
        info["fp32_size_bytes"] = float_path.stat().st_size
        float_path.unlink()
    onnx.checker.check_model(str(path))
    custom = custom_ops(onnx.load(str(path), load_external_data=False))
    return {**info, "custom_ops": custom, "runs_on": runs_on(custom)}


def custom_ops(model) -> dict[str, list[str]]:
    """Ops outside the standard ONNX domains, by domain (e.g. com.microsoft: MultiHeadAttention)."""
    found: dict[str, set[str]] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            found.setdefault(node.domain, set()).add(node.op_type)
    return {domain: sorted(ops) for domain, ops in sorted(found.items())}


def runs_on(custom: dict[str, list[str]]) -> str:
    """Which runtimes read the graph, in words (docs/model.md, "Graph forms": measurements)."""
    if not custom:
        return "any ONNX runtime (standard ONNX ops only)"
    ops = "; ".join(f"{d}: {', '.join(o)}" for d, o in custom.items())
    return (f"onnxruntime, OpenVINO and tract (it uses {ops}); ncnn/pnnx and the ONNX "
            "reference evaluator reject it: export with onnx.attention=standard for them")


def _quantize(src: Path, dst: Path, job: Job) -> dict:
    """ORT's own tools: float16 conversion, dynamic and static (QDQ) int8 quantisation."""
    import onnx

    recipe, quantize = job.recipe, job.quantize
    if recipe == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16
        from onnxruntime.transformers.onnx_model import OnnxModel

        half = OnnxModel(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True))
        half.topological_sort()  # the converter appends its input casts after their users
        onnx.save(half.model, str(dst))
        return {"io_dtype": "float32"}
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = src.with_name(f".pre-{src.name}")
    quant_pre_process(str(src), str(prepared))  # shape inference + graph clean-up, as ORT advises
    try:
        if recipe == "int8-dynamic":
            quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8,
                             per_channel=quantize.per_channel)
            return {"weight_type": "int8"}
        return _quantize_static(prepared, dst, job, float_groups=job.float_groups)
    finally:
        prepared.unlink(missing_ok=True)


# int8 for ORT where it pays: QLinearConv and QGemm beat float Conv/Gemm, while quantised SiLU
# (QLinearSigmoid + QLinearMul) and QLinearSoftmax are slower than their float forms
QUANTIZED_OP_TYPES = ("Conv", "Gemm", "MatMul")


def _quantize_static(prepared: Path, dst: Path, job: Job, *, float_groups=frozenset(),
                     only: str | None = None, cache: Path | None = None) -> dict:
    """ORT quantize_static (QDQ, per-channel int8 weights, uint8 activations), leaving float
    what quantize.keep_float names and the ops of `float_groups` (or, with `only`, of every
    group but that one). `cache`: ORT's calibration cache, so repeated tries calibrate once."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    quantize, captured, calibration = job.quantize, job.captured, job.calibration
    model = onnx.load(str(prepared))
    excluded = _float_nodes(model, quantize.keep_float)
    groups = node_groups(model)
    excluded += [name for name, group in groups.items() if group in float_groups]
    included = [name for name, group in groups.items() if group == only] if only else None
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

    from mvdeploy.backends import calibration_method

    method = calibration_method(SPEC.name, quantize.calibration_method)
    op_types = list(QUANTIZED_OP_TYPES) if "activations" in quantize.keep_float else None
    quantize_static(str(prepared), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=quantize.per_channel, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method={"minmax": CalibrationMethod.MinMax,
                                      "entropy": CalibrationMethod.Entropy,
                                      "percentile": CalibrationMethod.Percentile}[method],
                    op_types_to_quantize=op_types, nodes_to_quantize=included,
                    nodes_to_exclude=excluded,
                    calibration_cache_path=str(cache) if cache else None)
    return {"format": "QDQ", "weight_type": "int8", "activation_type": "uint8",
            "calibration_method": method, "per_channel": quantize.per_channel,
            "op_types": op_types or "all", "kept_float": list(quantize.keep_float),
            "float_groups": sorted(float_groups), "float_nodes": len(excluded)}


def node_groups(model) -> dict[str, str]:
    """ONNX node name -> its layer group, from the module path the exporter records in each
    node's "namespace" metadata ("model.stem: ...ConvBNAct/model.stem.bn: ...BatchNorm2d/op")."""
    from mvdeploy.models.groups import layer_group

    out = {}
    for node in model.graph.node:
        namespace = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        stack = [tuple(e.split(": ", 1)) for e in namespace.split("/")[:-1] if ": " in e]
        group = layer_group(stack)
        if group:
            out[node.name] = group
    return out


class _Trials:
    """ORT's quantize_static on this export's float graph, calibrated once (ORT's calibration
    cache), each try run by onnxruntime on the held-out photos."""

    margin_db = 0.0  # what onnxruntime computes is what the artifact will compute

    def __init__(self, job: Job, images: np.ndarray, workdir: Path) -> None:
        import onnx
        from onnxruntime.quantization.shape_inference import quant_pre_process

        self.job, self.images, self.workdir = job, images, workdir
        float_path = workdir / "float.onnx"
        _export_float(job, float_path, "standard")
        self.prepared = workdir / "prepared.onnx"
        quant_pre_process(str(float_path), str(self.prepared))
        self.cache = workdir / "calibration.json"
        self.groups = list(dict.fromkeys(node_groups(onnx.load(str(self.prepared))).values()))
        self.batch = None if job.captured.dynamic_batch else job.captured.example.shape[0]

    def logits(self, float_groups: frozenset[str] = frozenset(),
               only: str | None = None) -> np.ndarray:
        from mvdeploy.runner import run_batched

        path = self.workdir / "try.onnx"
        _quantize_static(self.prepared, path, self.job, float_groups=float_groups, only=only,
                         cache=self.cache)
        session = load(path, threads=None)
        return run_batched(session, self.images, self.batch)


def int8_trials(job: Job, images: np.ndarray, workdir: Path) -> _Trials:
    """What the search for what stays float calls (see mvdeploy.pipeline.quantize.Trials)."""
    return _Trials(job, images, workdir)


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


def _providers(path: Path, accelerator: str) -> list:
    """ORT providers in order. TensorRT keeps its engines beside the file (building one takes
    tens of seconds, once) and hands what it cannot build (com.microsoft attention) to CUDA,
    not to the CPU that ORT would otherwise fall back to."""
    if accelerator != "tensorrt":
        return [PROVIDERS[accelerator]]
    cache = Path(path).parent / "tensorrt_engines"
    return [(PROVIDERS["tensorrt"], {"trt_engine_cache_enable": True,
                                     "trt_engine_cache_path": str(cache)}),
            PROVIDERS["cuda"]]


def load(path: Path, *, threads: int | None = None, accelerator: str = "cpu") -> Session:
    ort = require("onnxruntime", "onnxruntime", "onnx", "Running ONNX models")
    reason = unavailable(accelerator)
    if reason:
        raise BackendUnavailable(reason)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(str(path), options, providers=_providers(path, accelerator))
    name = session.get_inputs()[0].name
    return Session(prepare=lambda x: {name: np.ascontiguousarray(x, dtype=np.float32)},
                   infer=lambda feed: session.run(None, feed), scores=lambda out: out[0])


def load_openvino(path: Path, *, threads: int | None = None, accelerator: str = "cpu"
                  ) -> Session:
    """The ONNX file on OpenVINO's CPU plugin, in float32: the plugin would otherwise run
    bf16 where the CPU has bf16 units (AVX512-BF16, AMX), as an app that wants float32 asks."""
    ov = require("openvino", "openvino", "clients", "Running ONNX models on OpenVINO")
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()

    def infer(x: np.ndarray):
        request.infer({0: x})
        return request.get_output_tensor(0).data

    return Session(prepare=lambda x: np.ascontiguousarray(x, dtype=np.float32), infer=infer,
                   scores=lambda out: np.array(out), runtime="openvino")


def plain_export(module, example, path: Path) -> None:
    """What a user gets by hand: torch.onnx.export with dynamo, nothing else."""
    import torch

    torch.onnx.export(module, (example,), str(path), dynamo=True,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])


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
    custom = custom_ops(model)
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
        "custom_ops": custom,
        "runs_on": runs_on(custom),
    }


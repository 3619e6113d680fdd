"""A NumPy reference executor for the Core ML ML Programs mvdeploy writes.

Core ML's own predictions need macOS, so on Linux a Core ML artifact could only be checked
structurally. This module reads the `.mlpackage` the way coremltools reads it back
(`milproto.load`: the program and its weight blobs) and evaluates the program op by op with
NumPy, following the MIL op definitions in coremltools (`converters/mil/mil/ops/defs`).

What it proves: the conversion is right — layouts, permutations, padding, split sizes, weight
compression, fp16 casts, the image input's scale and bias, the classifier. What it does not:
what Core ML's CPU, GPU or Neural Engine kernels compute on a device (their accumulation
order and precision differ; an fp16 op here computes in float32 and rounds its output to
float16, which is how fp16 storage between ops behaves).

Constant-only ops (`constexpr_*`: compressed weights) are decompressed once, at load, by
coremltools' own `materialized_val_inference`. Ops on activations are written here, because
coremltools' NumPy semantics (`value_inference`) only run on constant inputs. An op this
executor does not know is refused with one line naming it, never guessed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from mvdeploy.backends import BackendUnavailable
from mvdeploy.errors import ArtifactError


class UnsupportedOp(BackendUnavailable):
    """The program holds an op the reference executor does not implement: its numbers cannot
    be checked here (validation falls back to the structural check and says why)."""


Value = Any  # an ndarray, or a scalar / string / list for non-tensor consts
OpFn = Callable[[Callable[[str, Any], Value]], Value]

_DTYPES = {"fp16": np.float16, "fp32": np.float32, "fp64": np.float64, "int32": np.int32,
           "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "uint16": np.uint16,
           "bool": np.bool_}


def _f32(x: np.ndarray) -> np.ndarray:
    """Compute in float32: NumPy's float16 arithmetic is emulated (slow) and not what a
    device does either; the result is rounded back to the op's output type."""
    x = np.asarray(x)
    return x.astype(np.float32) if x.dtype == np.float16 else x


# ---------------------------------------------------------------- ops on activations


def _conv(a) -> np.ndarray:
    x, w = _f32(a("x")), _f32(a("weight"))
    bias, groups = a("bias"), int(a("groups", 1))
    strides = [int(s) for s in a("strides", [1, 1])]
    dilations = [int(d) for d in a("dilations", [1, 1])]
    pad_type = str(a("pad_type", "valid"))
    kernel = w.shape[2:]
    if len(kernel) != 2:
        raise UnsupportedOp(f"conv with {len(kernel)} spatial dimensions")
    pads = []
    for axis, (k, s, d) in enumerate(zip(kernel, strides, dilations, strict=True)):
        size = x.shape[2 + axis]
        if pad_type == "custom":
            pad = [int(p) for p in a("pad")]
            pads.append((pad[2 * axis], pad[2 * axis + 1]))
        elif pad_type in ("same", "same_lower"):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            low = total // 2 if pad_type == "same" else total - total // 2
            pads.append((low, total - low))
        else:  # valid
            pads.append((0, 0))
    x = np.pad(x, [(0, 0), (0, 0), *pads])
    span = [(k - 1) * d + 1 for k, d in zip(kernel, dilations, strict=True)]
    windows = np.lib.stride_tricks.sliding_window_view(x, span, axis=(2, 3))
    windows = windows[:, :, ::strides[0], ::strides[1], ::dilations[0], ::dilations[1]]
    n, c, ho, wo = windows.shape[:4]
    out_channels = w.shape[0]
    windows = windows.reshape(n, groups, c // groups, ho, wo, *kernel)
    weight = w.reshape(groups, out_channels // groups, c // groups, *kernel)
    if c // groups == 1:  # depthwise: a multiply-add per channel
        y = np.einsum("nghwij,goij->ngohw", windows[:, :, 0], weight[:, :, 0], optimize=True)
    else:
        y = np.einsum("ngchwij,gocij->ngohw", windows, weight, optimize=True)
    y = y.reshape(n, out_channels, ho, wo)
    return y if bias is None else y + _f32(bias).reshape(1, -1, 1, 1)


def _linear(a) -> np.ndarray:
    y = _f32(a("x")) @ _f32(a("weight")).T
    bias = a("bias")
    return y if bias is None else y + _f32(bias)


def _matmul(a) -> np.ndarray:
    x, y = _f32(a("x")), _f32(a("y"))
    if a("transpose_x", False):
        x = np.swapaxes(x, -1, -2)
    if a("transpose_y", False):
        y = np.swapaxes(y, -1, -2)
    return np.matmul(x, y)


def _layer_norm(a) -> np.ndarray:
    x = _f32(a("x"))
    axes = tuple(int(i) % x.ndim for i in np.atleast_1d(a("axes", list(range(x.ndim)))))
    mean = x.mean(axis=axes, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.float32(a("epsilon", 1e-5)))
    shape = [x.shape[i] if i in axes else 1 for i in range(x.ndim)]
    gamma, beta = a("gamma"), a("beta")
    if gamma is not None:
        y = y * _f32(gamma).reshape(shape)
    if beta is not None:
        y = y + _f32(beta).reshape(shape)
    return y


def _softmax(a) -> np.ndarray:
    x = _f32(a("x"))
    axis = int(a("axis", -1))
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _reshape(a) -> np.ndarray:
    x = np.asarray(a("x"))
    shape = [int(s) for s in np.atleast_1d(a("shape"))]
    # iOS17+: 0 copies the input's dimension at that position
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _split(a) -> list[np.ndarray]:
    x = np.asarray(a("x"))
    axis = int(a("axis"))
    sizes = a("split_sizes")
    if sizes is None:
        parts = int(a("num_splits"))
        sizes = [x.shape[axis] // parts] * parts
    edges = np.cumsum([int(s) for s in np.atleast_1d(sizes)])[:-1]
    return np.split(x, edges, axis=axis)


def _concat(a) -> np.ndarray:
    values = [np.asarray(v) for v in a("values")]
    axis = int(a("axis"))
    if not a("interleave", False):
        return np.concatenate(values, axis=axis)
    axis %= values[0].ndim  # interleave: a[0], b[0], a[1], b[1], ... along axis
    stacked = np.stack(values, axis=axis + 1)
    shape = list(values[0].shape)
    shape[axis] *= len(values)
    return stacked.reshape(shape)


def _reduce(fn: Callable) -> OpFn:
    """reduce_mean / reduce_sum: over `axes` (None: all), keeping them if keep_dims."""
    def reduce(a) -> np.ndarray:
        axes = a("axes")
        axes = None if axes is None else tuple(int(i) for i in np.atleast_1d(axes))
        return fn(_f32(a("x")), axis=axes, keepdims=bool(a("keep_dims", False)))
    return reduce


def _rsqrt(a) -> np.ndarray:
    """1 / sqrt(x + epsilon), epsilon 1e-12 by default (MIL iOS15 elementwise_unary.rsqrt)."""
    epsilon = a("epsilon")
    return 1 / np.sqrt(_f32(a("x")) + np.float32(1e-12 if epsilon is None else epsilon))


def _grid(size_in: int, size_out: int, align_corners: bool, half_pixel: bool) -> np.ndarray:
    """Sample positions of upsample_bilinear (MIL docs, iOS15 image_resizing.py)."""
    i = np.arange(size_out, dtype=np.float64)
    if align_corners:
        spacing = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
        points = i * spacing
    elif half_pixel:
        spacing = size_in / size_out
        points = i * spacing + 0.5 * spacing - 0.5
    else:
        points = i * (size_in / size_out)
    return np.clip(points, 0, size_in - 1)


def _interpolate(x: np.ndarray, points: np.ndarray, axis: int) -> np.ndarray:
    low = np.floor(points).astype(int)
    high = np.minimum(low + 1, x.shape[axis] - 1)
    frac = (points - low).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    frac = frac.reshape(shape)
    return np.take(x, low, axis=axis) * (1 - frac) + np.take(x, high, axis=axis) * frac


def _upsample_bilinear(a) -> np.ndarray:
    x = _f32(a("x"))
    align = bool(a("align_corners", True))
    half_pixel = bool(a("half_pixel_centers", not align))
    for axis, factor in ((-2, a("scale_factor_height", 1)), (-1, a("scale_factor_width", 1))):
        size_in = x.shape[axis]
        size_out = int(np.floor(size_in * float(factor)))
        x = _interpolate(x, _grid(size_in, size_out, align, half_pixel), x.ndim + axis)
    return x


def _reduce_argmax(a) -> np.ndarray:
    found = np.argmax(_f32(a("x")), axis=int(a("axis", -1)))
    return np.expand_dims(found, int(a("axis", -1))) if a("keep_dims", False) else found


def _cast(a) -> np.ndarray:
    return np.asarray(a("x")).astype(_DTYPES[str(a("dtype"))])


def _axis_shape(param: np.ndarray, x: np.ndarray, axis) -> np.ndarray:
    """A per-axis scale or zero point, shaped to broadcast against x."""
    param = np.asarray(param)
    if param.ndim == 0 or axis is None:
        return param
    shape = [1] * x.ndim
    shape[int(axis)] = -1
    return param.reshape(shape)


def _quantize(a) -> np.ndarray:
    x = _f32(a("input"))
    dtype = _DTYPES[str(a("output_dtype"))]
    axis = a("axis")
    scale = _axis_shape(_f32(a("scale")), x, axis)
    zero = a("zero_point")
    zero = 0 if zero is None else _axis_shape(zero, x, axis).astype(np.float32)
    info = np.iinfo(dtype)
    return np.clip(np.rint(x / scale) + zero, info.min, info.max).astype(dtype)


def _dequantize(a) -> np.ndarray:
    x = np.asarray(a("input")).astype(np.float32)
    axis = a("axis")
    zero = a("zero_point")
    zero = 0 if zero is None else _axis_shape(zero, x, axis).astype(np.float32)
    return (x - zero) * _axis_shape(_f32(a("scale")), x, axis)


def _classify(a) -> tuple[str, dict]:
    probs = _f32(a("probabilities")).reshape(-1)
    classes = list(a("classes"))
    return classes[int(np.argmax(probs))], dict(zip(classes, probs.tolist(), strict=True))


def _binary(fn: Callable) -> OpFn:
    return lambda a: fn(_f32(a("x")), _f32(a("y")))


def _unary(fn: Callable) -> OpFn:
    return lambda a: fn(_f32(a("x")))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


OPS: dict[str, OpFn] = {
    "conv": _conv, "linear": _linear, "matmul": _matmul, "layer_norm": _layer_norm,
    "softmax": _softmax, "reshape": _reshape, "split": _split, "concat": _concat,
    "reduce_mean": _reduce(np.mean), "reduce_sum": _reduce(np.sum), "rsqrt": _rsqrt,
    "upsample_bilinear": _upsample_bilinear, "cast": _cast, "reduce_argmax": _reduce_argmax,
    "quantize": _quantize, "dequantize": _dequantize, "classify": _classify,
    "transpose": lambda a: np.transpose(np.asarray(a("x")), [int(p) for p in a("perm")]),
    "add": _binary(np.add), "sub": _binary(np.subtract), "mul": _binary(np.multiply),
    "real_div": _binary(np.divide), "maximum": _binary(np.maximum),
    "minimum": _binary(np.minimum), "pow": _binary(np.power),
    "silu": _unary(lambda x: x * _sigmoid(x)), "sigmoid": _unary(_sigmoid),
    "relu": _unary(lambda x: np.maximum(x, 0)), "tanh": _unary(np.tanh),
    "exp": _unary(np.exp), "sqrt": _unary(np.sqrt),
}


# ---------------------------------------------------------------- the program


def _numpy_dtype(var) -> type | None:
    from coremltools.converters.mil.mil import types

    dtype = var.dtype
    if types.is_tensor(dtype):
        dtype = dtype.get_primitive()
    for name, np_type in _DTYPES.items():
        if dtype == types.string_to_builtin(name):
            return np_type
    return None


class Program:
    """One ML Program's main function, ready to evaluate with NumPy."""

    def __init__(self, path: Path):
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load as load_program

        model = ct.models.MLModel(str(path), skip_model_load=True)
        self.spec = model.get_spec()
        if self.spec.WhichOneof("Type") != "mlProgram":
            raise ArtifactError(f"{path.name} is not an ML Program (a "
                                f"{self.spec.WhichOneof('Type')}): the reference executor "
                                "runs ML Programs only")
        program = load_program(self.spec, self.spec.specificationVersion, model.weights_dir)
        self.function = program.functions["main"]
        unknown = sorted({op.op_type for op in self.function.operations
                          if op.op_type != "const" and not op.op_type.startswith("constexpr_")
                          and op.op_type not in OPS})
        if unknown:
            raise UnsupportedOp(f"{path.name} uses MIL op(s) {', '.join(unknown)}, which "
                                "mvdeploy's Core ML reference executor does not implement: "
                                "it cannot check this program's numbers")
        self.constants = {}
        for op in self.function.operations:  # weights: decompressed once, reused every call
            if op.op_type == "const" or op.op_type.startswith("constexpr_"):
                # compressed weights: coremltools' own decompression (materialized_val_inference)
                value = (op.outputs[0].val if op.op_type == "const"
                         else op.materialized_val_inference())
                if len(op.outputs) > 1:  # e.g. iOS18 sparse ops (not produced by mvdeploy)
                    raise UnsupportedOp(f"{path.name}: {op.op_type} with several outputs is "
                                        "not implemented by the reference executor")
                self.constants[op.outputs[0].name] = value
        self.input_names = list(self.function.inputs)
        self.output_names = [v.name for v in self.function.outputs]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, Value]:
        values: dict[str, Value] = dict(self.constants)
        for name, var in self.function.inputs.items():
            if name not in feeds:
                raise ArtifactError(f"input '{name}' missing from the feed")
            values[name] = np.asarray(feeds[name]).astype(_numpy_dtype(var) or np.float32)
        for op in self.function.operations:
            if op.outputs[0].name in values:  # a constant
                continue

            def arg(name: str, default: Any = None, op=op) -> Value:
                var = op.inputs.get(name)
                if var is None:
                    return default
                if isinstance(var, (list, tuple)):
                    return [values.get(v.name, v.val) for v in var]
                return values.get(var.name, var.val)

            result = OPS[op.op_type](arg)
            results = result if isinstance(result, (list, tuple)) else [result]
            for var, value in zip(op.outputs, results, strict=True):
                dtype = _numpy_dtype(var)
                if dtype is not None and isinstance(value, np.ndarray):
                    value = value.astype(dtype, copy=False)
                values[var.name] = value
        return {name: values[name] for name in self.output_names}

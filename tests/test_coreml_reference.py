"""The Core ML reference executor against PyTorch: every MIL op it implements, in small programs
written with coremltools' MIL builder and saved as real .mlpackage files, on random inputs;
then whole converted MobileViTs, a tampered program, and an op it does not know."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvdeploy.backends.coreml_reference import Program, UnsupportedOp
from tests.helpers import skip_module_without

skip_module_without("coreml")
import coremltools as ct  # noqa: E402
from coremltools.converters.mil import Builder as mb  # noqa: E402

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def mil(tmp_path: Path, shapes: list[tuple[int, ...]], body, fp16: bool = False) -> Program:
    """A one-function ML Program from `body(*inputs) -> output var(s)`, saved and read back."""
    specs = [mb.TensorSpec(shape=s) for s in shapes]
    # the builder names inputs after the function's parameters: no *args
    if len(shapes) == 1:
        def function(x):
            return body(x)
    else:
        def function(x, y):
            return body(x, y)
    program = mb.program(input_specs=specs, opset_version=ct.target.iOS17)(function)

    model = ct.convert(program, convert_to="mlprogram", pass_pipeline=ct.PassPipeline.EMPTY,
                       minimum_deployment_target=ct.target.iOS17,
                       compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32)
    path = tmp_path / f"p{len(list(tmp_path.iterdir()))}.mlpackage"
    model.save(str(path))
    return Program(path)


def run_one(program: Program, *arrays: np.ndarray):
    outputs = program(dict(zip(program.input_names, arrays, strict=True)))
    values = [outputs[name] for name in program.output_names]
    return values[0] if len(values) == 1 else values


def close(got, expected, tol: float = 1e-5) -> None:
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected
    np.testing.assert_allclose(np.asarray(got, np.float32), expected, rtol=tol, atol=tol)


T = torch.from_numpy


# ---------------------------------------------------------------- one op at a time


def test_conv_custom_padding_strides_dilations_groups(tmp_path):
    x, w, b = rand(1, 4, 9, 7), rand(6, 2, 3, 3), rand(6)
    program = mil(tmp_path, [x.shape], lambda v: mb.conv(
        x=v, weight=w, bias=b, strides=[2, 1], pad_type="custom", pad=[1, 0, 2, 1],
        dilations=[1, 2], groups=2))
    expected = F.conv2d(F.pad(T(x), (2, 1, 1, 0)), T(w), T(b), stride=(2, 1), dilation=(1, 2),
                        groups=2)
    close(run_one(program, x), expected, 1e-4)


@pytest.mark.parametrize(("pad_type", "pads"), [("same", (0, 1, 1, 1)),
                                                ("same_lower", (1, 0, 1, 1)),
                                                ("valid", (0, 0, 0, 0))])
def test_conv_same_padding_puts_the_odd_pixel_where_mil_says(tmp_path, pad_type, pads):
    """8 rows, kernel 3, stride 2: 1 padding row (at the end for same, the start for
    same_lower); 7 columns: 2, one each side."""
    x, w = rand(1, 3, 8, 7), rand(5, 3, 3, 3)
    program = mil(tmp_path, [x.shape], lambda v: mb.conv(x=v, weight=w, strides=[2, 2],
                                                         pad_type=pad_type))
    top, bottom, left, right = pads
    close(run_one(program, x), F.conv2d(F.pad(T(x), (left, right, top, bottom)), T(w),
                                        stride=2), 1e-4)


def test_depthwise_and_pointwise_conv(tmp_path):
    x, dw, pw = rand(1, 8, 6, 6), rand(8, 1, 3, 3), rand(4, 8, 1, 1)
    program = mil(tmp_path, [x.shape], lambda v: mb.conv(
        x=mb.conv(x=v, weight=dw, pad_type="custom", pad=[1, 1, 1, 1], groups=8), weight=pw))
    close(run_one(program, x), F.conv2d(F.conv2d(T(x), T(dw), padding=1, groups=8), T(pw)),
          1e-4)


def test_linear_and_matmul_with_transposes_and_broadcast(tmp_path):
    x, w, b, y = rand(2, 5, 8), rand(3, 8), rand(3), rand(1, 4, 8)
    program = mil(tmp_path, [x.shape, y.shape], lambda u, v: (
        mb.linear(x=u, weight=w, bias=b), mb.matmul(x=u, y=v, transpose_y=True),
        mb.matmul(x=u, y=u, transpose_x=True)))
    lin, mm, mt = run_one(program, x, y)
    close(lin, F.linear(T(x), T(w), T(b)), 1e-5)
    close(mm, T(x) @ T(y).transpose(-1, -2), 1e-5)
    close(mt, T(x).transpose(-1, -2) @ T(x), 1e-5)


@pytest.mark.parametrize("axes", [[-1], [1, 2]])
def test_layer_norm_over_any_axes(tmp_path, axes):
    x = rand(2, 3, 4, 5) * 3 + 1
    shape = [x.shape[a] for a in axes]
    gamma, beta = rand(*shape), rand(*shape)
    program = mil(tmp_path, [x.shape], lambda v: mb.layer_norm(x=v, axes=axes, gamma=gamma,
                                                               beta=beta, epsilon=1e-5))
    t = T(x)
    mean = t.mean(dim=axes, keepdim=True)
    var = t.var(dim=axes, keepdim=True, unbiased=False)
    view = [x.shape[i] if i in [a % 4 for a in axes] else 1 for i in range(4)]
    expected = (t - mean) / torch.sqrt(var + 1e-5) * T(gamma).reshape(view) + T(beta).reshape(view)
    close(run_one(program, x), expected, 1e-4)


def test_softmax_reduce_mean_and_elementwise(tmp_path):
    x, y = rand(2, 3, 4, 5), rand(1, 3, 1, 5)
    program = mil(tmp_path, [x.shape, y.shape], lambda u, v: (
        mb.softmax(x=u, axis=1), mb.reduce_mean(x=u, axes=[2, 3], keep_dims=True),
        mb.silu(x=mb.add(x=u, y=v)), mb.real_div(x=mb.sub(x=u, y=v), y=mb.mul(x=v, y=2.0))))
    softmax, mean, silu, div = run_one(program, x, y)
    close(softmax, torch.softmax(T(x), dim=1))
    close(mean, T(x).mean(dim=(2, 3), keepdim=True))
    close(silu, F.silu(T(x) + T(y)))
    close(div, (T(x) - T(y)) / (T(y) * 2), 1e-4)


def test_transpose_with_negative_axes_and_reshape(tmp_path):
    x = rand(2, 3, 4, 6)
    program = mil(tmp_path, [x.shape], lambda v: (
        mb.transpose(x=v, perm=[0, -1, 1, -2]), mb.reshape(x=v, shape=[2, -1, 4, 2, 3])))
    moved, reshaped = run_one(program, x)
    assert np.array_equal(moved, T(x).permute(0, 3, 1, 2).numpy())
    assert np.array_equal(reshaped, T(x).reshape(2, -1, 4, 2, 3).numpy())


def test_split_and_concat(tmp_path):
    x, y = rand(2, 6, 5), rand(2, 6, 5)
    program = mil(tmp_path, [x.shape, y.shape], lambda u, v: (
        *mb.split(x=u, split_sizes=[1, 3, 2], axis=1), *mb.split(x=u, num_splits=5, axis=-1),
        mb.concat(values=[u, v], axis=-1), mb.concat(values=[u, v], axis=1, interleave=True)))
    *parts, joined, interleaved = run_one(program, x, y)
    expected = [*torch.split(T(x), [1, 3, 2], dim=1), *torch.split(T(x), 1, dim=-1)]
    assert len(parts) == len(expected)
    for got, want in zip(parts, expected, strict=True):
        assert np.array_equal(got, want.numpy())
    assert np.array_equal(joined, torch.cat([T(x), T(y)], dim=-1).numpy())
    assert np.array_equal(interleaved, torch.stack([T(x), T(y)], dim=2).reshape(2, 12, 5).numpy())


@pytest.mark.parametrize("align_corners", [True, False])
@pytest.mark.parametrize(("size", "scale"), [((6, 4), (1.5, 2.0)), ((5, 7), (2.0, 1.0))])
def test_upsample_bilinear_matches_torch(tmp_path, align_corners, size, scale):
    """What a patch that does not divide a feature map turns into (non-square, fractional)."""
    x = rand(1, 3, *size)
    program = mil(tmp_path, [x.shape], lambda v: mb.upsample_bilinear(
        x=v, scale_factor_height=scale[0], scale_factor_width=scale[1],
        align_corners=align_corners))
    expected = F.interpolate(T(x), scale_factor=scale, mode="bilinear",
                             align_corners=align_corners, recompute_scale_factor=True)
    close(run_one(program, x), expected, 1e-5)


def test_fp16_ops_round_their_outputs_to_float16(tmp_path):
    """A float16 program computes in float32 here and stores each op's output as float16."""
    x, w = rand(1, 16), rand(8, 16).astype(np.float16)
    program = mil(tmp_path, [x.shape], lambda v: mb.cast(
        x=mb.linear(x=mb.cast(x=v, dtype="fp16"), weight=w), dtype="fp32"))
    got = run_one(program, x)
    expected = F.linear(T(x).half().float(), torch.from_numpy(w).float()).half().float()
    close(got, expected, 0)
    assert np.abs(got - x @ w.astype(np.float32).T).max() > 0  # it did round


@pytest.mark.parametrize("per_channel", [False, True])
def test_quantize_and_dequantize_match_torch(tmp_path, per_channel):
    x = rand(1, 4, 3, 3) * 4
    scale = (np.array([0.02, 0.05, 0.1, 0.03], np.float32) if per_channel
             else np.float32(0.04))
    zero = np.array([0, 3, -2, 1], np.int8) if per_channel else np.int8(5)
    axis = 1 if per_channel else None
    program = mil(tmp_path, [x.shape], lambda v: (
        q := mb.quantize(input=v, scale=scale, zero_point=zero, axis=axis, output_dtype="int8"),
        mb.dequantize(input=q, scale=scale, zero_point=zero, axis=axis)))
    quantized, restored = run_one(program, x)
    if per_channel:
        q = torch.quantize_per_channel(T(x), T(scale).double(), T(zero.astype(np.int64)), 1,
                                       torch.qint8)
    else:
        q = torch.quantize_per_tensor(T(x), float(scale), int(zero), torch.qint8)
    assert np.array_equal(quantized, q.int_repr().numpy())
    close(restored, q.dequantize(), 1e-6)


def test_an_op_it_does_not_know_is_refused_by_name(tmp_path):
    from mvdeploy.backends import BackendUnavailable, get_backend

    with pytest.raises(UnsupportedOp, match=r"uses MIL op\(s\) erf, which") as caught:
        mil(tmp_path, [(1, 4)], lambda v: mb.erf(x=v))
    assert "\n" not in str(caught.value)
    # what validation and predict meet: "cannot run here", so never a wrong number
    with pytest.raises(BackendUnavailable, match="erf"):
        get_backend("coreml").load(next(tmp_path.glob("*.mlpackage")))


# ---------------------------------------------------------------- a whole converted MobileViT


@pytest.fixture(scope="module")
def xxs_fp32(tmp_path_factory):
    """XXS, patch A, 64x64, seeded input-sensitive weights, Core ML fp32, and PyTorch's logits
    on the bundled photos."""
    from mvdeploy.data import load_images, sample_image_paths
    from mvdeploy.models import create_model
    from mvdeploy.pipeline.config import load_config
    from mvdeploy.pipeline.exporter import run_export

    out = tmp_path_factory.mktemp("coreml_fp32")
    cfg = load_config(overrides={"model.resolution": "64", "export.formats": "coreml",
                                 "coreml.compute_precision": "fp32", "export.out": str(out),
                                 "export.save_program": False})
    (result,) = run_export(cfg).formats
    x, _, _ = load_images(sample_image_paths(), 64, 64)
    with torch.no_grad():
        logits = create_model("mobilevit_xxs")(T(x)).numpy()
    return result, x, logits


def _validate(artifact: Path, x: np.ndarray, logits: np.ndarray):
    from mvdeploy.pipeline.validate import Tolerance, validate

    return validate("coreml", artifact, inputs={"photos": x}, references={"photos": logits},
                    precision="fp32", input_shape=[1, 3, 64, 64], output_shape=[1, 1000],
                    batch=1, tolerance=Tolerance(max_rel=1e-4))


@pytest.mark.slow
def test_a_converted_mobilevit_matches_pytorch_to_float32_precision(xxs_fp32):
    result, x, logits = xxs_fp32
    assert result.ok and result.report.runtime in ("reference", "coreml")
    report = _validate(result.artifact, x, logits)
    assert report.passed and report.metrics["photos"].max_rel <= 1e-4
    assert len(set(logits.argmax(1))) > 1  # the reference can fail: it tells photos apart


def _tamper_transpose(artifact: Path, out: Path) -> str:
    """Swap two entries of one transpose's permutation whose axes have the same size: every
    shape stays valid, but pixels land in the wrong places."""
    spec = ct.utils.load_spec(str(artifact))
    (block,) = spec.mlProgram.functions["main"].block_specializations.values()
    producers = {o.name: op for op in block.operations for o in op.outputs}
    for op in block.operations:
        if op.type != "transpose":
            continue
        perm = producers[op.inputs["perm"].arguments[0].name]
        values = perm.attributes["val"].immediateValue.tensor.ints.values
        source = producers[op.inputs["x"].arguments[0].name].outputs[0]
        shape = [d.constant.size for d in source.type.tensorType.dimensions]
        for i in range(len(values)):
            for j in range(i + 1, len(values)):
                if shape[values[i]] == shape[values[j]] and shape[values[i]] > 1:
                    values[i], values[j] = values[j], values[i]
                    weights = artifact / "Data" / "com.apple.CoreML" / "weights"
                    ct.models.MLModel(spec, weights_dir=str(weights),
                                      skip_model_load=True).save(str(out))
                    return op.outputs[0].name
    raise AssertionError("no transpose with two axes of one size")


@pytest.mark.slow
def test_a_tampered_program_with_valid_shapes_fails_validation(xxs_fp32, tmp_path):
    result, x, logits = xxs_fp32
    tampered = tmp_path / "tampered.mlpackage"
    name = _tamper_transpose(result.artifact, tampered)
    report = _validate(tampered, x, logits)
    assert not report.passed, f"swapping axes of {name} went unnoticed"
    assert any("max abs diff" in f for f in report.failures)
    assert report.structure["inputs"] == _validate(result.artifact, x, logits).structure["inputs"]

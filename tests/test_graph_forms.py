"""Graph forms: the ONNX attention rewrite (com.microsoft.MultiHeadAttention) on real exports
run by onnxruntime, in every token layout, with a static and a dynamic batch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mvdeploy.backends.onnx_attention import fuse_attention
from mvdeploy.cli import run
from mvdeploy.models import GraphForm, create_model
from tests.helpers import skip_module_without

skip_module_without("onnx")
import onnx  # noqa: E402
import onnxruntime as ort  # noqa: E402


def _export(model: torch.nn.Module, x: torch.Tensor, dynamic: bool):
    shapes = ({"pixel_values": {0: torch.export.Dim("batch", min=1, max=8)}} if dynamic
              else None)
    program = torch.export.export(model, (x,), dynamic_shapes=shapes)
    return torch.onnx.export(program, (), kwargs={"pixel_values": x}, dynamo=True,
                             input_names=["pixel_values"], verbose=False).model_proto


def _run(proto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.mark.slow  # fast-suite time (3 minutes on 2 cores): CI's full run keeps it
@pytest.mark.parametrize("tokens", ["2d", "3d"])
@pytest.mark.parametrize("dynamic", [False, True])
def test_fused_attention_matches_the_plain_graph(tokens, dynamic):
    model = create_model("mobilevit_xxs", num_classes=10, patch_sizes="B",
                         form=GraphForm(tokens=tokens))
    x = torch.rand(2, 3, 64, 64)
    plain = _export(model, x, dynamic)
    fused = onnx.ModelProto()
    fused.CopyFrom(plain)
    assert fuse_attention(fused, heads=4) == 9  # 2 + 4 + 3 transformer layers
    onnx.checker.check_model(fused)
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("MultiHeadAttention") == 9 and "Softmax" not in ops
    batch = np.random.default_rng(0).random((3 if dynamic else 2, 3, 64, 64), np.float32)
    expected = _run(plain, batch)
    assert expected.std() > 0.05  # seeded weights: outputs that depend on the input
    assert np.abs(_run(fused, batch) - expected).max() <= 1e-5 * np.abs(expected).max()


def test_a_graph_without_the_pattern_is_left_alone():
    class NoAttention(torch.nn.Module):
        def forward(self, x):
            return torch.softmax(x @ x.transpose(-1, -2), dim=-1)

    proto = _export(NoAttention(), torch.rand(1, 4, 8), False)
    before = proto.SerializeToString()
    assert fuse_attention(proto, heads=4) == 0
    assert proto.SerializeToString() == before


@pytest.mark.slow
def test_standard_attention_and_conflicts_from_the_command_line(tmp_path, capfd):
    out = tmp_path / "std"
    assert run(["export", "--model", "mobilevit_xxs", "--resolution", "64", "-f", "onnx",
                "--set", "onnx.attention=standard", "--out", str(out)]) == 0
    manifest = json.loads((out / "onnx" / "manifest.json").read_text())
    assert manifest["artifact"]["attention"] == "standard" and manifest["validated"]
    assert "MultiHeadAttention" not in manifest["validation"]["structure"]["ops"]
    capfd.readouterr()
    code = run(["export", "--model", "mobilevit_xxs", "--resolution", "64", "-f", "onnx",
                "--precision", "int8-dynamic", "--set", "onnx.attention=fused",
                "--out", str(tmp_path / "q")])
    err = capfd.readouterr().err
    assert code == 2 and "cannot be combined with int8-dynamic" in err
    assert len(err.strip().splitlines()) == 1

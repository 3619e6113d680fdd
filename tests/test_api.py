"""The one-call Python API: the same path as the CLI, from a notebook or CI script."""

from __future__ import annotations

import json

import pytest

import mvdeploy
from mvdeploy.errors import ConfigError


def test_bad_arguments_raise_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match="unknown format caffe"):
        mvdeploy.export(formats=["caffe"], out=tmp_path / "out")
    with pytest.raises(ConfigError, match=r"unknown key 'onnx\.opsett'"):
        mvdeploy.export(settings={"onnx.opsett": 20}, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_export_and_benchmark_from_python(tmp_path):
    result = mvdeploy.export("mobilevit_xxs", patch="B", resolution=64, formats=["onnx"],
                             out=tmp_path / "out", settings={"onnx.opset": 20})
    (onnx,) = result.formats
    assert result.ok and onnx.artifact.exists() and onnx.size_bytes > 1e6
    assert onnx.report.metrics["photos"].max_rel <= 1e-4 and not onnx.report.degenerate
    report = mvdeploy.benchmark(models=["mobilevit_xxs"], patches=["B"], resolutions=["64"],
                                runtimes=["ort"], threads=[1], quick=True,
                                out=tmp_path / "bench", cache=tmp_path / "cache")
    (row,) = report["results"]
    assert row["runtime"] == "onnxruntime" and row["status"] == "ok"
    assert row["preset"] == "B" and row["resolution"] == [64, 64] and row["threads"] == 1
    assert row["rounds"] == 1 and row["latency_ms"]["runs"] == 5  # quick=True
    assert row["fidelity"]["status"] == "passed" and not row["fidelity"]["degenerate"]
    # what the call returns is what it wrote
    written = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert [r["key"] for r in written["results"]] == [row["key"]]
    assert written["results"][0]["latency_ms"] == row["latency_ms"]

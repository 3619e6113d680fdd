"""The one-call Python API: the same path as the CLI, from a notebook or CI script."""

from __future__ import annotations

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
    assert row["latency_ms"]["p50"] > 0 and (tmp_path / "bench" / "results.json").exists()

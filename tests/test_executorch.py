"""ExecuTorch, the fifth format: a real XNNPACK-lowered .pte, run by ExecuTorch's runtime on the
bundled photos with input-sensitive weights, inspected, predicted, timed and given an Android
snippet."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mvdeploy.cli import run
from mvdeploy.data import load_images, sample_image_paths
from mvdeploy.models import create_model
from tests.helpers import skip_module_without

pytestmark = pytest.mark.slow

skip_module_without("executorch")


@pytest.fixture(scope="session")
def pte(hf_xxs_export, hf_checkpoint):
    """XXS, patch B, 64x64, from an input-sensitive Hugging Face checkpoint with labels (the
    session's shared export), and the checkpoint it came from."""
    (result,) = [r for r in hf_xxs_export.formats if r.format == "executorch"]
    assert result.ok, result.error or result.report.failures
    return result.artifact, hf_checkpoint("mobilevit_xxs")[1]


def test_export_validates_against_pytorch_on_photos(pte):
    path, _ = pte
    manifest = json.loads((path.parent / "manifest.json").read_text())
    validation = manifest["validation"]
    assert manifest["validated"] and not manifest["degenerate"]
    assert validation["reference"]["top1_classes"] >= 2  # outputs depend on the input
    for metrics in validation["metrics"].values():
        assert metrics["max_rel"] <= 1e-4
    assert manifest["artifact"]["delegate"] == "XnnpackBackend"
    labels = (path.parent / "labels.txt").read_text().split()
    assert labels == [f"class_{i}" for i in range(1000)] == manifest["labels"]


def test_inspect_shows_what_xnnpack_took(pte, capfd):
    path, _ = pte
    assert run(["inspect", str(path), "--json"]) == 0
    info = json.loads(capfd.readouterr().out)
    assert info["format"] == "executorch" and info["methods"] == ["forward"]
    assert info["inputs"] == [{"name": "pixel_values", "shape": [1, 3, 64, 64],
                               "dtype": "float32"}]
    assert info["ops"]["delegate:XnnpackBackend"] == info["delegated_calls"] > 0
    # the heavy ops (convolutions, linears, matmuls) all went to XNNPACK
    portable = [op for op in info["ops"] if not op.startswith("delegate:")]
    assert not [op for op in portable if any(k in op for k in ("conv", "linear", "mm"))]


def test_predict_matches_pytorch(pte, capfd):
    path, weights = pte
    photos = sample_image_paths()[:3]
    assert run(["predict", str(path), *map(str, photos), "--json"]) == 0
    got = [r["top"][0]["label"] for r in json.loads(capfd.readouterr().out)]
    model = create_model("mobilevit_xxs", patch_sizes="B", weights=str(weights)).eval()
    images, _, _ = load_images(photos, 64, 64)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).argmax(1).tolist()
    assert got == [f"class_{i}" for i in expected]


def test_android_snippet_names_the_file_and_shape(pte, capfd):
    path, _ = pte
    assert run(["snippet", str(path)]) == 0
    code = capfd.readouterr().out
    assert f'"{path.name}"' in code and "Module.load(" in code
    assert "longArrayOf(1, 3, 64, 64)" in code and "org.pytorch.executorch.EValue" in code


def test_bench_times_the_executorch_runtime(tmp_path, capfd):
    argv = ["bench", "-m", "mobilevit_xxs", "-r", "64", "-p", "A", "--quick", "-t", "1",
            "-b", "executorch", "--out", str(tmp_path / "o"), "--cache", str(tmp_path / "cache"),
            "--json"]
    assert run(argv) == 0
    (row,) = json.loads(capfd.readouterr().out)["results"]
    assert row["status"] == "ok" and row["fidelity"]["status"] == "passed"
    assert row["fidelity"]["snr_db"] > 60 and not row["fidelity"]["degenerate"]
    # --quick: one round of 5 timed runs, of the .pte the bench exported into its cache
    assert row["rounds"] == 1 and row["latency_ms"]["runs"] == 5
    artifact = Path(row["artifact"])
    assert artifact.suffix == ".pte" and artifact.stat().st_size / 1e6 == pytest.approx(
        row["size_mb"], rel=1e-3)
    assert np.isfinite(row["latency_ms"]["p50"]) and row["load_ms"] > 0
    # ExecuTorch's Python bindings take torch tensors (the other runtimes: test_bench.py)
    assert row["torch_imported"]

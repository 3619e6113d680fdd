"""A manifest is trusted only for the very file it describes, and a damaged artifact is one line
(issue 27, item 3): an edited or stale manifest.json made `inspect` call an fp32 ONNX
"int8-static" and made `predict` on a .pte use the wrong preprocessing, exit 0; a .mlpackage
without its weights or an ONNX whose external data is gone was an internal error."""

from __future__ import annotations

import json
import shutil

import pytest

from mvdeploy.cli import run
from mvdeploy.data import sample_image_paths
from mvdeploy.fixtures import checkpoint_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The trained fixture to ONNX and (with its extra) ExecuTorch, whose .pte holds no
    preprocessing of its own: the manifest is its only record."""
    import importlib.util

    out = tmp_path_factory.mktemp("trusted") / "out"
    formats = "onnx,coreml" + (",executorch" if importlib.util.find_spec("executorch") else "")
    assert run(["export", "--weights", str(checkpoint_dir()), "-r", "64", "-f", formats,
                "-o", str(out), "--set", "export.save_program=false"]) == 0
    return out


def _copy(exported, tmp_path, fmt: str):
    folder = tmp_path / fmt
    shutil.copytree(exported / fmt, folder)
    (artifact,) = [p for p in folder.iterdir() if p.suffix in (".onnx", ".pte")]
    return artifact, folder / "manifest.json"


@pytest.mark.slow
def test_an_edited_manifest_is_ignored_with_one_warning(exported, tmp_path, capsys):
    artifact, manifest_path = _copy(exported, tmp_path, "onnx")
    manifest = json.loads(manifest_path.read_text())
    manifest["artifact"]["sha256"] = "0" * 64  # as if describing another file
    manifest["artifact"]["precision"] = "int8-static"
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert run(["inspect", str(artifact), "--json"]) == 0
    captured = capsys.readouterr()
    info = json.loads(captured.out)
    assert info["precision"] == "fp32" and info["manifest"] is None
    assert "its SHA-256 differs" in captured.err and captured.err.count("\n") == 1


@pytest.mark.slow
def test_a_stale_manifest_that_is_the_only_record_is_refused(exported, tmp_path, capsys):
    if not (exported / "executorch").is_dir():
        pytest.skip("the executorch extra is not installed")
    artifact, _ = _copy(exported, tmp_path, "executorch")
    artifact.write_bytes(artifact.read_bytes() + b"\0")  # the file changed after the export
    capsys.readouterr()
    assert run(["predict", str(artifact), str(sample_image_paths()[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert "SHA-256 differs" in err and "only record of the preprocessing" in err
    assert "\n" not in err


@pytest.mark.slow
@pytest.mark.parametrize(("change", "says"), [
    ({"labels": ["0", "1", "2"]}, "lists 3 labels but the model has 10 outputs"),
    ({"model": {"resolution": [128, 128]}}, "says 128x128 but the model takes 64x64"),
])
def test_a_record_that_does_not_fit_its_file_is_refused(exported, tmp_path, capsys, change,
                                                       says):
    if not (exported / "executorch").is_dir():
        pytest.skip("the executorch extra is not installed")
    artifact, manifest_path = _copy(exported, tmp_path, "executorch")
    manifest = json.loads(manifest_path.read_text())
    for key, value in change.items():
        manifest[key] = {**manifest[key], **value} if isinstance(value, dict) else value
    manifest_path.write_text(json.dumps(manifest))
    capsys.readouterr()
    assert run(["predict", str(artifact), str(sample_image_paths()[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and "internal error" not in err


def _predict_fails_in_one_line(capsys, artifact, says: str) -> None:
    capsys.readouterr()
    assert run(["predict", str(artifact), str(sample_image_paths()[0])]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and "\n" not in err and "internal error" not in err, err


@pytest.mark.slow
def test_a_mlpackage_without_its_weights_is_one_line(exported, tmp_path, capsys):
    folder = tmp_path / "coreml"
    shutil.copytree(exported / "coreml", folder)
    (package,) = folder.glob("*.mlpackage")
    (weights,) = package.rglob("weight.bin")
    weights.unlink()
    _predict_fails_in_one_line(capsys, package, "Core ML cannot load or run")


@pytest.mark.slow
@pytest.mark.parametrize("where", ["missing", "outside the folder"])
def test_onnx_external_data_missing_or_outside_its_folder_is_one_line(exported, tmp_path,
                                                                      capsys, where):
    import onnx

    (source,) = (exported / "onnx").glob("*.onnx")
    folder = tmp_path / "model"
    folder.mkdir()
    artifact = folder / source.name
    onnx.save_model(onnx.load(str(source)), str(artifact), save_as_external_data=True,
                    location="weights.bin", size_threshold=0)
    if where == "missing":
        (folder / "weights.bin").unlink()
    else:  # the data exists, but outside the model's folder: onnxruntime refuses such paths
        (folder / "weights.bin").rename(tmp_path / "elsewhere.bin")
        model = onnx.load(str(artifact), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = "../elsewhere.bin"
        onnx.save(model, str(artifact))
    _predict_fails_in_one_line(capsys, artifact, "ONNX")

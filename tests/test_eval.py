"""`mvdeploy eval`: accuracy of real artifacts on labelled folders (the trained fixture's held-out
digits; folders named by label, class index and ImageNet synset), streamed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mvdeploy.cli import run
from mvdeploy.data import load_images, sample_image_paths
from mvdeploy.fixtures import checkpoint_dir, digits_split, write_digits
from mvdeploy.models import create_model
from mvdeploy.models.weights import save_checkpoint
from mvdeploy.tasks.classification import class_index, imagenet_synsets, labelled_images
from tests.helpers import needs

TRAINING = json.loads((checkpoint_dir() / "training.json").read_text())


@pytest.fixture(scope="module")
def fixture_artifacts(tmp_path_factory) -> dict[str, Path]:
    """The trained fixture exported to every format at its own 64x64."""
    out = tmp_path_factory.mktemp("fixture_export")
    assert run(["export", "-w", str(checkpoint_dir()), "-r", "64", "-o", str(out)]) == 0
    return {fmt: next((out / fmt).glob("mobilevit_xxs_A_64x64.*"))
            for fmt in ("onnx", "tflite", "coreml")}


def _eval_json(capsys, *args: str) -> list[dict]:
    code = run(["eval", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out[: out.rindex("]") + 1])


# ---------------------------------------------------------------- fast: folder mapping


def test_synsets_are_imagenet_order():
    synsets = imagenet_synsets()
    assert len(synsets) == 1000 == len(set(synsets)) and synsets == sorted(synsets)
    assert synsets[0] == "n01440764" and synsets[-1] == "n15075141"  # tench ... toilet tissue


@pytest.mark.parametrize(("name", "labels", "classes", "index"), [
    ("cat", ["dog", "cat"], 2, 1), ("1", ["dog", "cat"], 2, 1), ("7", None, 10, 7),
    ("10", None, 10, None), ("n01443537", None, 1000, 1), ("n01443537", None, 10, None),
    ("n99999999", None, 1000, None), ("zebra", ["dog"], 1, None),
])
def test_class_index(name, labels, classes, index):
    assert class_index(name, labels, classes) == index


@needs("data")
def test_limit_spreads_over_classes(held_out_digits):
    images = labelled_images(held_out_digits, [str(i) for i in range(10)], 10, limit=20)
    assert len(images) == 20 and len({t for _, t in images.items}) >= 9
    assert len(labelled_images(held_out_digits, None, 10)) == len(digits_split("held-out")[1])


def test_unknown_class_folder_is_one_line(tmp_path, capsys):
    weights = save_checkpoint(create_model("mobilevit_xxs", num_classes=10), tmp_path / "w.pt")
    (tmp_path / "data" / "zebra").mkdir(parents=True)
    shutil.copy(sample_image_paths()[0], tmp_path / "data" / "zebra")
    assert run(["eval", str(weights), "--data", str(tmp_path / "data")]) == 2
    assert "not a model artifact" in capsys.readouterr().err


# ---------------------------------------------------------------- slow: real artifacts


@pytest.mark.slow
def test_eval_reproduces_the_fixture_accuracy(fixture_artifacts, held_out_digits, capsys):
    code, results = _eval_json(capsys, str(fixture_artifacts["onnx"]),
                               str(fixture_artifacts["tflite"]), "--data", str(held_out_digits),
                               "--weights", str(checkpoint_dir()))
    assert code == 0
    one_image = 1 / TRAINING["held_out_images"]
    for r in results:
        assert r["images"] == TRAINING["held_out_images"] and r["unreadable"] == 0
        assert r["reference"]["top1"] == pytest.approx(TRAINING["held_out_top1"], abs=one_image)
        assert r["top1"] >= 0.9 and abs(r["top1"] - r["reference"]["top1"]) <= one_image
        assert abs(r["top5"] - r["reference"]["top5"]) <= one_image
        assert r["agreement"]["top1"] >= 1 - one_image


@pytest.mark.slow
def test_eval_counts_unreadable_and_runs_core_ml_everywhere(fixture_artifacts, held_out_digits,
                                                            tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(held_out_digits, data)
    (data / "3" / "broken.png").write_bytes(b"not an image")
    code, results = _eval_json(capsys, str(fixture_artifacts["onnx"]),
                               str(fixture_artifacts["coreml"]), "--data", str(data),
                               "--limit", "50")
    assert code == 0  # Core ML off macOS: through the reference executor
    onnx, coreml = results
    assert onnx["images"] + onnx["unreadable"] == 50
    assert coreml["images"] == onnx["images"] and coreml["unreadable"] == onnx["unreadable"]
    assert abs(coreml["top1"] - onnx["top1"]) <= 1 / onnx["images"]  # fp16 may flip one
    assert run(["eval", str(fixture_artifacts["onnx"]), "--data", str(data)]) == 0
    assert "1 images could not be read and are not counted" in capsys.readouterr().out


@pytest.mark.slow
def test_folders_by_synset_and_by_index(tmp_path, capsys):
    """A 1000-class model: folders named by ImageNet synset ids, scored right."""
    weights = save_checkpoint(create_model("mobilevit_xxs"), tmp_path / "w.safetensors")
    assert run(["export", "-w", str(weights), "-r", "64", "-f", "onnx", "-o",
                str(tmp_path / "out")]) == 0
    capsys.readouterr()
    artifact = next((tmp_path / "out" / "onnx").glob("*.onnx"))
    photos = sample_image_paths()
    x, _, _ = load_images(photos, 64, 64)
    with torch.no_grad():
        predicted = create_model("mobilevit_xxs", weights=str(weights))(
            torch.from_numpy(x)).argmax(1).numpy()
    synsets = imagenet_synsets()
    for naming in ("synset", "index"):
        data = tmp_path / naming
        for i, (photo, cls) in enumerate(zip(photos, predicted, strict=True)):
            cls = int(cls) if i < 4 else (int(cls) + 1) % 1000  # 4 right, 2 wrong
            folder = data / (synsets[cls] if naming == "synset" else str(cls))
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(photo, folder / photo.name)
        code, (result,) = _eval_json(capsys, str(artifact), "--data", str(data),
                                     "--weights", str(weights))
        assert code == 0 and result["images"] == 6
        assert result["top1"] == pytest.approx(4 / 6) == result["reference"]["top1"]
        assert result["agreement"]["top1"] == 1.0


@pytest.mark.slow
def test_export_labelled_streams_the_same_accuracy(tmp_path, held_out_digits, capsys):
    assert run(["export", "-w", str(checkpoint_dir()), "-r", "64", "-f", "onnx",
                "--labelled", str(held_out_digits), "-o", str(tmp_path / "out")]) == 0
    assert f"top-1 accuracy on {TRAINING['held_out_images']} labelled images" in \
        capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "onnx" / "manifest.json").read_text())
    accuracy = manifest["validation"]["accuracy"]["labelled"]
    assert accuracy["images"] == TRAINING["held_out_images"]
    assert accuracy["reference_top1"] == pytest.approx(TRAINING["held_out_top1"],
                                                       abs=1 / accuracy["images"])
    assert np.isclose(accuracy["artifact_top1"], accuracy["reference_top1"],
                      atol=1 / accuracy["images"])


@pytest.mark.slow
def test_fixture_int8_static_keeps_its_accuracy_within_a_point(tmp_path, held_out_digits, capsys):
    """The trained fixture in int8 (ONNX and TFLite, calibrated on its training split): its
    held-out accuracy stays within 1 point of PyTorch's, and the 30 dB target holds."""

    train = write_digits(tmp_path / "train", "train")
    sample = write_digits(tmp_path / "sample", per_class=2)  # fidelity on digits, not photos
    assert run(["export", "-w", str(checkpoint_dir()), "-r", "64", "-f", "onnx,tflite",
                "--precision", "int8-static", "--calibration", str(train),
                "--images", str(sample), "--set", "validate.max_images=20",
                "--labelled", str(held_out_digits), "--set", "quantize.compare_speed=false",
                "-o", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    for fmt in ("onnx", "tflite"):
        manifest = json.loads((tmp_path / "out" / fmt / "manifest.json").read_text())
        accuracy = manifest["validation"]["accuracy"]["labelled"]
        assert accuracy["images"] == TRAINING["held_out_images"]
        assert accuracy["reference_top1"] - accuracy["artifact_top1"] <= 0.01
        assert manifest["validation"]["metrics"]["photos"]["snr_db"] >= 30
        assert manifest["artifact"]["float_search"]["reached"]


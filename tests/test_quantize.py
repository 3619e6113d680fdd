"""Quantisation recipes end to end: real calibration photos, real converters and runtimes.

Calibration uses scikit-image's own photos (dev extra) other than the ones mvdeploy bundles,
so the fidelity report is measured on held-out images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from mvdeploy.backends import needs_calibration, spec
from mvdeploy.cli import run
from mvdeploy.data import quantization_pool_paths, sample_image_paths
from mvdeploy.errors import ConfigError
from mvdeploy.pipeline.config import load_config
from mvdeploy.pipeline.exporter import run_export
from mvdeploy.tasks.classification import compare
from tests.helpers import extended, needs

BUNDLED = {p.stem for p in sample_image_paths()}


@pytest.fixture(scope="session")
def calibration_dir(tmp_path_factory) -> Path:
    """scikit-image's sample photos that mvdeploy does not bundle (colour and grey)."""
    skimage_data = pytest.importorskip("skimage.data")
    folder = tmp_path_factory.mktemp("calibration")
    source = Path(skimage_data.__file__).parent
    for path in sorted(source.glob("*.png")) + sorted(source.glob("*.jpg")):
        if path.stem not in BUNDLED:
            shutil.copy(path, folder / path.name)
    (folder / "broken.jpg").write_bytes(b"not an image")  # counted, skipped
    return folder


# ---------------------------------------------------------------- fast: rules and metrics


@pytest.mark.parametrize(("fmt", "recipe"), [("onnx", "palettize-4"), ("tflite", "w8a8"),
                                              ("coreml", "int8-static"), ("onnx", "int4")])
def test_unsupported_recipe_lists_what_the_format_can_do(fmt, recipe):
    with pytest.raises(ConfigError, match=f"{fmt} cannot do precision '{recipe}': choose one of "
                                          + ", ".join(spec(fmt).recipes)):
        load_config(overrides={"export.formats": fmt, "quantize.precision": recipe})


def test_w8a8_needs_ios17():
    with pytest.raises(ConfigError, match="iOS17"):
        load_config(overrides={"export.formats": "coreml", "quantize.precision": "w8a8"})


def test_compare_metrics():
    ref = np.array([[1.0, 2.0, 3.0, 0.0, 0.0, 0.0], [3.0, 2.0, 1.0, 0.0, 0.0, 0.0]])
    noisy = ref + 0.01 * np.array([[1, -1, 1, -1, 1, -1], [1, 1, 1, 1, 1, 1]])
    m = compare(ref, noisy)
    assert m.samples == 2 and m.max_abs == pytest.approx(0.01)
    assert m.snr_db == pytest.approx(10 * np.log10(28 / (12 * 1e-4)), abs=0.005)  # 0.01 dB
    assert m.top1_agreement == 1.0 and m.top5_agreement == 1.0 and m.cosine > 0.9999
    swapped = ref[:, [2, 1, 0, 3, 4, 5]]
    assert compare(ref, swapped).top1_agreement == 0.0
    assert compare(ref, swapped).top5_agreement == 1.0
    assert compare(ref, ref).snr_db == 300.0  # identical: capped, JSON has no infinity


# ---------------------------------------------------------------- slow: every recipe, A and B

RUNS = [  # one export run per recipe and patch preset, with the formats that offer the recipe
    ("fp16", "onnx,tflite,coreml"),
    ("int8-dynamic", "onnx,tflite"),
    ("int8-static", "onnx,tflite"),
    ("int8-weights", "coreml"),
    ("palettize-4", "coreml"),
    ("palettize-6", "coreml"),
    ("palettize-8", "coreml"),
    ("w8a8", "coreml"),
]


@pytest.fixture(scope="session")
def quantized(tmp_path_factory, calibration_dir):
    cache = {}

    def get(recipe: str, formats: str, patch: str):
        key = (recipe, patch)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"q_{recipe}_{patch}")
            cfg = load_config(overrides={
                "model.patch": patch, "model.resolution": "64", "export.formats": formats,
                "export.out": str(out), "export.save_program": False,
                "quantize.precision": recipe, "quantize.calibration_images": str(calibration_dir),
                "coreml.minimum_deployment_target": "iOS17",
                # the float32 twin and its timing: once, for int8-static A (CI time)
                "quantize.compare_speed": key == ("int8-static", "A"),
            })
            cache[key] = run_export(cfg)
        return cache[key]

    return get


# On input-sensitive weights these recipes do not reach their 20 dB tolerance (see
# docs/quantisation.md): the artifact is written, quantised and honestly marked failed. Core ML's
# numbers come from the reference executor off macOS. int8-static is not here: its search keeps
# layer groups float until the 30 dB target is met.
BELOW_TOLERANCE_TODAY = {("coreml", "palettize-4", "A"), ("coreml", "palettize-4", "B"),
                         ("coreml", "w8a8", "A"), ("coreml", "w8a8", "B"),
                         ("onnx", "int8-dynamic", "B")}
# At the tolerance's edge, so the CPU decides: onnxruntime's int8 kernels differ with and
# without VNNI (20.3 dB here, 20.0 dB on a CI machine). Either outcome is honest; only an SNR
# failure is allowed.
AT_THE_EDGE = {("onnx", "int8-dynamic", "A"),
               # the search tunes on a third of skimage's photos and the gate grades the
               # bundled pool, which nothing tuned on: 29.8 dB against the 30 dB target here
               ("onnx", "int8-static", "A"), ("tflite", "int8-static", "A")}


WEIGHT_ONLY = ("int8-weights", "palettize-4", "palettize-6", "palettize-8")  # no activations


# the same path as a neighbour (CI time): B for fp16 / int8-dynamic / w8a8 (A proves the
# recipe, the patch-B exports of test_export prove the layout), palettize-6 and -8 as
# palettize-4, int8-static as test_heldout_int8 and test_eval (the same recipe and search on
# ONNX and TFLite, graded on unseen photos and on labelled digits)
EXTENDED_RUNS = {("fp16", "B"), ("int8-dynamic", "B"), ("w8a8", "B"), ("palettize-6", "A"),
                 ("palettize-8", "A"), ("int8-static", "A")}


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "formats", "patch"), [
    extended(recipe, formats, patch) if (recipe, patch) in EXTENDED_RUNS
    else (recipe, formats, patch)
    for recipe, formats in RUNS
    # weight-only compression does not see the patch layout: patch A proves it (CI time); so
    # does int8-static, whose search runs ~35 quantisations a format (B: the committed
    # benchmarks/results/quantization.md)
    for patch in (("A",) if recipe in (*WEIGHT_ONLY, "int8-static") else ("A", "B"))])
def test_recipe_produces_a_quantised_validated_artifact(quantized, recipe, formats, patch):
    result = quantized(recipe, formats, patch)
    for r in result.formats:
        assert r.error is None, r.error
        assert not r.report.degenerate  # the fidelity figures below can fail
        below = (r.format, recipe, patch) in BELOW_TOLERANCE_TODAY
        if below or ((r.format, recipe, patch) in AT_THE_EDGE and not r.ok):
            assert r.report.failures and all(" SNR " in f for f in r.report.failures)
        else:
            assert r.ok, r.report.failures
        manifest = json.loads(r.manifest.read_text())
        artifact = manifest["artifact"]
        assert artifact["precision"] == recipe and artifact["recipe"] == recipe
        # int8-static keeps the groups its search names in float32
        assert artifact["size_ratio_to_fp32"] < {"fp16": 0.8, "int8-static": 1.0}.get(recipe, 0.6)
        structure = manifest["validation"]["structure"]
        types, ops = structure.get("tensor_types", {}), structure["ops"]
        if r.format == "onnx":
            assert types.get("float16" if recipe == "fp16" else "int8", 0) > 0
            assert [i["dtype"] for i in structure["inputs"]] == ["float32"]  # float I/O kept
        elif r.format == "tflite":
            assert types.get("float16" if recipe == "fp16" else "int8", 0) > 0
        else:
            evidence = {"int8-weights": "constexpr_affine_dequantize", "w8a8": "quantize",
                        "fp16": "cast"}.get(recipe, "constexpr_lut_to_dense")
            assert ops.get(evidence, 0) > 0
        photos = manifest["validation"]["metrics"]["photos"]
        graded = quantization_pool_paths() if needs_calibration(r.format, recipe) else (
            sample_image_paths())  # all of them: calibration and selection used skimage's
        assert manifest["validation"]["inputs"]["photos"] == [p.name for p in graded]
        tolerance = {"fp16": 40, "int8-static": 30}.get(recipe, 20)
        if below:
            assert photos["snr_db"] < 20 and manifest["validated"] is False
        elif not r.ok:  # at the edge: honestly failed, and close to the recipe's tolerance
            assert photos["snr_db"] >= tolerance - 5 and manifest["validated"] is False
        else:
            assert photos["snr_db"] >= tolerance
            # near ties (the seeded logits have some) may swap; decisive photos may not
            assert photos["top1_agreement_decisive"] >= 0.95 and photos["cosine"] > 0.99
        if recipe == "int8-static":
            calibration = artifact["calibration"]
            assert calibration["unreadable"] == 1 and calibration["images"] >= 10
            assert calibration["views"] == calibration["images"]  # no augmented views by default
            assert not set(calibration["names"]) & {p.name for p in sample_image_paths()}
            search = artifact["float_search"]
            assert search["reached"] and search["snr_db"] >= 30
            # random noise is reported, not held to the tolerance (outside the calibration)
            assert manifest["validation"]["gated"] == ["photos"]
            assert "random" in manifest["validation"]["metrics"]


@pytest.mark.slow
def test_int8_static_search_names_what_stayed_float(quantized):
    """Sensitivity measured with each format's own quantiser (ORT; PT2E as LiteRT computes
    it), the most harmful groups kept float, and the artifact timed against float32."""
    result = quantized("int8-static", "onnx,tflite", "A")
    for r in result.formats:
        artifact = json.loads(r.manifest.read_text())["artifact"]
        search = artifact["float_search"]
        ranking = [row["group"] for row in search["sensitivity"]]
        snrs = [row["snr_db"] for row in search["sensitivity"]]
        assert snrs == sorted(snrs) and len(ranking) == search["groups"] == 34
        kept = search["float_groups"]
        assert set(kept) == set(ranking[:len(kept)]) and len(kept) <= 20
        assert search["attempts"][0]["float_groups"] == []  # all int8 was tried first
        assert not search["attempts"][0]["met"] and search["reached"]
        # the kept set met the target; every try with fewer groups float missed it
        assert all(not a["met"] for a in search["attempts"] if len(a["float_groups"]) < len(kept))
        assert (r.artifact.parent / "sensitivity.json").is_file()
        speed = artifact["speed"]
        assert speed["measured"] and speed["fp32_ms"] > 0 and speed["ms"] > 0
        assert speed["speedup_range"][0] <= speed["speedup"] <= speed["speedup_range"][1]
    onnx_artifact = json.loads(result.formats[0].manifest.read_text())["artifact"]
    assert onnx_artifact["float_groups"] == sorted(onnx_artifact["float_search"]["float_groups"])
    tflite = next(r for r in result.formats if r.format == "tflite")
    manifest = json.loads(tflite.manifest.read_text())
    (inp,) = manifest["validation"]["structure"]["inputs"]
    # an int8 stem takes int8 pixels (the runner quantises them), a float stem float32
    stem_float = "stem" in manifest["artifact"]["float_search"]["float_groups"]
    assert inp["dtype"] == ("float32" if stem_float else "int8")
    assert ("quantization" in inp) != stem_float


@pytest.mark.slow
def test_onnx_int8_static_keeps_attention_in_float(quantized):
    result = quantized("int8-static", "onnx,tflite", "A")
    onnx_result = next(r for r in result.formats if r.format == "onnx")
    artifact = json.loads(onnx_result.manifest.read_text())["artifact"]
    assert artifact["kept_float"] == ["softmax", "layernorm", "attention", "activations"]
    assert artifact["op_types"] == ["Conv", "Gemm", "MatMul"]
    # 9 transformer layers x (softmax, 2 LayerNorms, QK^T, AV) + each block's final LayerNorm,
    # and the nodes of the groups the search kept float
    assert artifact["float_nodes"] > 9 * 5 + 3 and artifact["float_groups"]


# ---------------------------------------------------------------- command-line errors


def test_cli_rejects_unsupported_recipe(tmp_path, capsys):
    assert run(["export", "-f", "onnx,coreml", "--precision", "int8-static",
                "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "coreml cannot do precision 'int8-static'" in err and "\n" not in err


@needs("onnx")
def test_cli_empty_calibration_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run(["export", "-f", "onnx", "--precision", "int8-static", "--calibration",
                str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 2
    assert "no images" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@needs("onnx")
def test_cli_unreadable_calibration_folder(tmp_path, capsys):
    (tmp_path / "bad").mkdir()
    for i, name in enumerate(("a.jpg", "b.png", "c.jpg")):  # distinct: copies count once
        (tmp_path / "bad" / name).write_bytes(bytes([i]) * 64)
    assert run(["export", "-f", "onnx", "--precision", "int8-static", "--calibration",
                str(tmp_path / "bad"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "could be read" in err and "--calibration" in err and len(err.splitlines()) == 1


@pytest.mark.slow  # fast-suite time (3 minutes on 2 cores): CI's full run keeps it
@needs("onnx")
def test_cli_warns_about_a_calibration_set_that_cannot_represent_the_data(tmp_path, capfd):
    """One 1x1 image: accepted (it is a choice), but said twice before the conversion."""
    from PIL import Image

    (tmp_path / "tiny").mkdir()
    Image.new("RGB", (1, 1), (200, 30, 90)).save(tmp_path / "tiny" / "dot.png")
    code = run(["export", "-f", "onnx", "-r", "64", "--precision", "int8-static",
                "--calibration", str(tmp_path / "tiny"), "-o", str(tmp_path / "out"),
                "--set", "quantize.max_float_groups=0", "--set", "quantize.compare_speed=false",
                "--set", "quantize.calibration_views=64"])
    err = capfd.readouterr().err
    manifest = json.loads((tmp_path / "out" / "onnx" / "manifest.json").read_text())
    calibration = manifest["artifact"]["calibration"]
    assert calibration["images"] == 1 and calibration["views"] == 64
    assert code == (0 if manifest["validated"] else 1)  # written either way, exit says which
    assert "calibrating on 1 image(s)" in err and "fewer than 32" in err
    assert "topped up to 64 with crops and mirror images" in err
    assert "1 calibration image(s) are one flat colour" in err


def _labelled_folder(root: Path, weights: Path, height: int, width: int) -> Path:
    """Six sample photos filed under class-index folders: right for three, wrong for three."""
    import torch

    from mvdeploy.data import load_images
    from mvdeploy.models import create_model

    model = create_model("mobilevit_xxs", weights=str(weights))
    photos = sample_image_paths()
    x, _, _ = load_images(photos, height, width)
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(1).tolist()
    for i, (photo, cls) in enumerate(zip(photos, predicted, strict=True)):
        label = cls if i % 2 == 0 else (cls + 1) % model.num_classes
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, root / str(label) / photo.name)
    return root


@pytest.mark.slow
def test_accuracy_on_a_labelled_folder(tmp_path, capsys):
    from mvdeploy.models import create_model
    from mvdeploy.models.weights import save_checkpoint

    weights = save_checkpoint(create_model("mobilevit_xxs", num_classes=10),
                              tmp_path / "w.safetensors")
    labelled = _labelled_folder(tmp_path / "labelled", weights, 64, 64)
    assert run(["export", "-r", "64", "-f", "onnx", "--precision", "fp16", "-w",
                str(weights), "--labelled", str(labelled), "-o", str(tmp_path / "out")]) == 0
    assert "top-1 accuracy on 6 labelled images" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "out" / "onnx" / "manifest.json").read_text())
    accuracy = manifest["validation"]["accuracy"]["labelled"]
    assert accuracy["images"] == 6 and accuracy["reference_top1"] == 0.5
    assert accuracy["agreement_top1"] == 1.0 and accuracy["artifact_top1"] == 0.5


@needs("onnx")
def test_labelled_folder_names_must_match_classes(tmp_path, capsys):
    (tmp_path / "labelled" / "zebra").mkdir(parents=True)
    shutil.copy(sample_image_paths()[0], tmp_path / "labelled" / "zebra")
    assert run(["export", "-r", "64", "-f", "onnx", "--labelled", str(tmp_path / "labelled"),
                "-o", str(tmp_path / "out")]) == 2
    assert "class folder(s) under" in (err := capsys.readouterr().err) and "zebra" in err

"""App-ready artifacts: the shipped iOS/Android configs, Core ML image input and classifier,
TFLite NHWC + softmax, embedded metadata, the reference preprocessing, Swift/Kotlin snippets.

The XXS app configs are exported once per session through the CLI with
`--set model.weights=<a Hugging Face checkpoint>` (random weights, 1000 labelled classes), as a
user would; the other shipped configs with random weights.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mvdeploy.cli import run
from mvdeploy.data import Preprocessing, normalise, sample_image_paths
from mvdeploy.errors import ConfigError
from mvdeploy.models import create_model
from mvdeploy.pipeline.config import load_config
from mvdeploy.pipeline.manifest import Manifest
from mvdeploy.readback.inspect import inspect_artifact
from mvdeploy.readback.snippets import load_manifest, snippet
from tests.helpers import extended, needs

ROOT = Path(__file__).parents[1]
CONFIGS = sorted(ROOT.joinpath("export_configs").glob("*.toml"))
# the page that shows the app snippets (README.md links it)
APPS_PAGE = ROOT.joinpath("docs", "apps.md").read_text()


@pytest.fixture(scope="session")
def shipped(tmp_path_factory, hf_checkpoint):
    """config stem -> output folder of `mvdeploy export CONFIG --set ...`, each run once."""
    cache: dict[str, Path] = {}

    def get(stem: str) -> Path:
        if stem not in cache:
            out = tmp_path_factory.mktemp(stem) / "out"
            sets = [f"export.out={out}", "validate.max_images=2", "validate.random_inputs=1"]
            if stem.startswith("mobilevit_xxs_"):
                sets.append(f"model.weights={hf_checkpoint('mobilevit_xxs')[1]}")
            argv = ["export", str(ROOT / "export_configs" / f"{stem}.toml")]
            for item in sets:
                argv += ["--set", item]
            assert run(argv) == 0, f"export of {stem} failed"
            cache[stem] = out
        return cache[stem]

    return get


def _artifact(out: Path, fmt: str) -> Path:
    (path,) = (out / fmt).glob("mobilevit_*")
    return path


# ---------------------------------------------------------------- shipped configs


# paths that another config proves in CI (CI time): XS and S iOS as XXS B iOS, XS and S Android
# as XXS B Android (the same layout at another width), patch A's Android and iOS as patch B's
# (test_quantize exports patch A to every format)
PATCH_A = extended("A")  # the A configs: extended, see above
EXTENDED_CONFIGS = {"mobilevit_xs_B_android", "mobilevit_xs_B_ios", "mobilevit_s_B_ios",
                    "mobilevit_s_B_android",
                    "mobilevit_xxs_A_android", "mobilevit_xxs_A_ios",
                    # at 512²; tests/test_segmentation_export.py exports it at 128 for MediaPipe
                    "deeplabv3_mobilevit_xxs_android", "deeplabv3_mobilevit_xxs_ios"}


@pytest.mark.slow
@pytest.mark.parametrize("config", [
    extended(c) if c.stem in EXTENDED_CONFIGS else c
    for c in CONFIGS], ids=[c.stem for c in CONFIGS])
def test_shipped_config_exports(config, shipped):
    cfg = load_config(config)
    out = shipped(config.stem)
    for fmt in cfg.export.formats:
        manifest = json.loads((out / fmt / "manifest.json").read_text())
        assert manifest["config"]["model"]["name"] == cfg.model.name
        assert manifest["validation"]["status"] == "passed"  # Core ML too: by numbers
        assert not manifest["validation"]["failures"]
        shape = manifest["artifact"]["inputs"][0]["shape"]
        if fmt == "tflite" and "android" in config.stem:
            assert shape == [1, *cfg.height_width, 3]
            assert manifest["preprocessing"]["input_layout"] == "NHWC"
        if "dynamic" in config.stem:
            assert shape[0] == "batch"


def _scale_on_input(path: Path) -> float:
    """The constant the image input is multiplied by, read from the ML Program itself."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(path))
    (block,) = spec.mlProgram.functions["main"].block_specializations.values()
    consts = {op.outputs[0].name: op.attributes["val"].immediateValue.tensor
              for op in block.operations if op.type == "const"}
    for op in block.operations:
        if op.type == "mul" and [a.name for a in op.inputs["x"].arguments] == ["pixel_values"]:
            (y,) = op.inputs["y"].arguments
            return consts[y.name].floats.values[0]
    raise AssertionError("no scale applied to the image input")


@pytest.mark.slow
@pytest.mark.parametrize("patch", [PATCH_A, "B"])
def test_ios_config_gives_image_input_and_classifier(shipped, patch):
    info = inspect_artifact(_artifact(shipped(f"mobilevit_xxs_{patch}_ios"), "coreml"))
    (image,) = info["inputs"]
    assert image["name"] == "pixel_values" and image["dtype"] == "image"
    # trained on BGR; the config's export.input_channels = RGB folds the flip into the stem
    assert image["color_layout"] == "RGB" and image["shape"] == [1, 3, 256, 256]
    assert "resize the shorter side to 288, centre-crop 256x256" in image["description"]
    assert [(o["name"], o["dtype"]) for o in info["outputs"]] == [
        ("classLabel", "string"), ("classLabel_probs", "dict[string, double]")]
    assert info["classifier"] == {"label": "classLabel", "probabilities": "classLabel_probs"}
    assert _scale_on_input(Path(info["file"])) == pytest.approx(1 / 255)
    meta = info["metadata"]
    assert meta["author"].startswith("mvdeploy") and "mobilevit_xxs" in meta["short_description"]
    record = meta["mvdeploy"]
    expected_patches = [[2, 2]] * 3 if patch == "A" else [[8, 8], [4, 4], [2, 2]]
    assert record["patch_sizes"] == expected_patches and record["resolution"] == [256, 256]
    assert record["output"] == "classLabel_probs" and record["output_kind"] == "probabilities"
    assert record["labels"][:2] == ["class_0", "class_1"] and len(record["labels"]) == 1000
    assert record["preprocessing"]["channel_order"] == "RGB"
    assert record["preprocessing"]["resize_shorter_side"] == 288
    assert meta["mvdeploy.patch"] == patch and meta["mvdeploy.channel_order"] == "RGB"


@pytest.mark.slow
@pytest.mark.parametrize("patch", [PATCH_A, "B"])
def test_android_config_gives_nhwc_probabilities_and_metadata(shipped, patch):
    import onnx
    from ai_edge_litert import schema_py_generated as schema

    out = shipped(f"mobilevit_xxs_{patch}_android")
    tflite = _artifact(out, "tflite")
    info = inspect_artifact(tflite)
    assert info["signatures"]["serving_default"] == {"inputs": ["pixel_values"],
                                                     "outputs": ["probabilities"]}
    assert info["inputs"][0]["shape"] == [1, 256, 256, 3]
    assert info["outputs"][0] == {"name": "probabilities", "shape": [1, 1000], "dtype": "float32"}
    # the metadata buffer, read with the plain flatbuffer schema (no mvdeploy code)
    model = schema.Model.GetRootAsModel(tflite.read_bytes(), 0)
    entries = {model.Metadata(i).Name().decode(): model.Metadata(i).Buffer()
               for i in range(model.MetadataLength())}
    record = json.loads(bytes(model.Buffers(entries["mvdeploy"]).DataAsNumpy()))
    assert record["output"] == "probabilities" and record["labels"][999] == "class_999"
    assert record["preprocessing"]["input_layout"] == "NHWC"
    assert record["preprocessing"]["crop"] == [256, 256]
    assert (tflite.parent / "labels.txt").read_text().splitlines()[:2] == ["class_0", "class_1"]
    props = {p.key: p.value for p in onnx.load(str(_artifact(out, "onnx"))).metadata_props}
    assert json.loads(props["labels"])[5] == "class_5"
    assert json.loads(props["patch_sizes"])[0] == ([2, 2] if patch == "A" else [8, 8])
    assert json.loads(props["preprocessing"])["scale"] == pytest.approx(1 / 255)


def _reference_processor():
    """transformers' processor with the published apple/mobilevit-* preprocessor_config.json."""
    from transformers import MobileViTImageProcessor

    return MobileViTImageProcessor(
        do_resize=True, size={"shortest_edge": 288}, resample=2, do_center_crop=True,
        crop_size={"height": 256, "width": 256}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=False, do_flip_channel_order=True)


@pytest.mark.slow
@pytest.mark.parametrize("patch", [PATCH_A, "B"])
@pytest.mark.parametrize("fmt", ["onnx", "tflite"])
def test_declared_preprocessing_matches_the_reference(shipped, hf_checkpoint, patch, fmt,
                                                      capsys):
    """Photo -> transformers' reference preprocessing -> PyTorch, versus photo -> the
    preprocessing the artifact declares -> the artifact (mvdeploy predict): same top-1."""
    from PIL import Image

    hf_model, hf_dir = hf_checkpoint("mobilevit_xxs")
    photos = sample_image_paths()
    pixels = _reference_processor()(images=[Image.open(p).convert("RGB") for p in photos],
                                    return_tensors="pt")["pixel_values"]
    model = create_model("mobilevit_xxs", patch_sizes=patch, weights=str(hf_dir))
    with torch.no_grad():
        reference = torch.softmax(model(pixels), -1).numpy()
        if patch == "A":  # the published configuration: transformers' own model agrees
            assert (hf_model(pixel_values=pixels).logits.argmax(1).numpy()
                    == reference.argmax(1)).all()
    artifact = _artifact(shipped(f"mobilevit_xxs_{patch}_android"), fmt)
    assert run(["predict", str(artifact), *map(str, photos), "--top", "1", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [g["top"][0]["class"] for g in got] == reference.argmax(1).tolist()
    assert [g["top"][0]["label"] for g in got] == [f"class_{i}" for i in reference.argmax(1)]
    np.testing.assert_allclose([g["top"][0]["probability"] for g in got],
                               reference.max(1), atol=1e-4)


@pytest.mark.slow
def test_coreml_image_classifier_runs_and_agrees_with_pytorch(shipped, capsys):
    """Image input (RGB, scale built in) and classifier output, by numbers: off macOS through
    the reference executor, fed the 8-bit photo a phone would hand Vision."""
    folder = shipped("mobilevit_xxs_B_ios")
    manifest = json.loads((folder / "coreml" / "manifest.json").read_text())
    validation = manifest["validation"]
    assert validation["status"] == "passed" and manifest["validated"] is True
    assert validation["metrics"]["photos"]["top1_agreement"] >= 5 / 6
    if sys.platform != "darwin":
        assert validation["runtime"] == "reference"
    artifact = _artifact(folder, "coreml")
    photos = sample_image_paths()
    capsys.readouterr()  # the export's table, when this test made it
    assert run(["predict", str(artifact), *map(str, photos), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == len(photos)
    # the classifier output reacts to the photo: not one class for all (a broken image input)
    assert len({r["top"][0]["label"] for r in results}) >= 2
    for r in results:
        probabilities = [t["probability"] for t in r["top"]]
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.001


# ---------------------------------------------------------------- snippets


def _snippet_block(code: str, language: str) -> str:
    return f"```{language}\n{code}```"


@pytest.mark.slow
@pytest.mark.parametrize(("stem", "fmt"), [("mobilevit_xxs_B_ios", "coreml"),
                                           ("mobilevit_xxs_B_android", "tflite")])
def test_snippets_name_the_real_tensors(shipped, stem, fmt, capsys):
    artifact = _artifact(shipped(stem), fmt)
    info = inspect_artifact(artifact)
    language, code = snippet(load_manifest(artifact))
    (inp,) = info["inputs"]
    outputs = [o["name"] for o in info["outputs"]]
    if fmt == "coreml":
        assert language == "swift"
        assert f"try {artifact.stem}(configuration:" in code  # the class Xcode generates
        assert f".prediction({inp['name']}: pixelBuffer)" in code
        label, probs = outputs
        assert f"output.{label}" in code and f"output.{probs}[" in code
    else:
        assert language == "kotlin"
        (signature,) = info["signatures"]
        (output,) = info["outputs"]
        assert f'mapOf("{inp["name"]}" to input)' in code
        assert f'mapOf("{output["name"]}" to scores)' in code
        assert f'"{signature}")' in code and f'openFd("{artifact.name}")' in code
        assert f"FloatArray({output['shape'][1]})" in code
        assert f"allocateDirect(4 * 3 * {inp['shape'][1]} * {inp['shape'][2]})" in code
        height, width = inp["shape"][1:3]
        assert "i * 3 + c" in code  # NHWC indexing for the NHWC input
        assert f"IntArray({width} * {height})" in code
    # docs/apps.md shows exactly this code, so the docs cannot drift from the exporter
    assert _snippet_block(code, language) in APPS_PAGE, \
        f"docs/apps.md's {language} snippet is stale"
    capsys.readouterr()  # whatever the fixture printed
    assert run(["snippet", str(artifact)]) == 0
    assert capsys.readouterr().out == code
    if fmt == "tflite":  # the MediaPipe snippets docs/apps.md shows (test_clients.py runs one)
        for client, language in (("mediapipe", "kotlin"), ("mediapipe-python", "python")):
            got_language, client_code = snippet(load_manifest(artifact), client)
            assert got_language == language and f'"{artifact.name}"' in client_code
            assert _snippet_block(client_code, language) in APPS_PAGE, \
                f"docs/apps.md's MediaPipe {language} snippet is stale"


def test_snippet_needs_a_manifest_and_a_supported_format(tmp_path, capsys):
    assert run(["snippet", str(tmp_path / "model.tflite")]) == 2
    assert "no readable manifest.json" in capsys.readouterr().err
    manifest = {"mvdeploy_manifest": 1, "created": "", "format": "onnx",
                "artifact": {"file": "model.onnx"}, "model": {}, "preprocessing": {},
                "labels": None, "validated": True, "degenerate": False, "validation": {},
                "tool": {}, "config": {}}
    (tmp_path / "model.onnx").write_bytes(b"onnx")  # the manifest describes these very bytes
    manifest["artifact"]["sha256"] = hashlib.sha256(b"onnx").hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format": "onnx"}))
    assert run(["snippet", str(tmp_path / "model.onnx")]) == 2
    assert "not onnx" in capsys.readouterr().err


# ---------------------------------------------------------------- fast checks


@pytest.mark.parametrize(("overrides", "match"), [
    ({"coreml.image_input": True, "export.batch": 2}, "takes one image"),
    ({"coreml.image_input": True, "preprocessing.std": [0.2, 0.3, 0.4]}, "same for all channels"),
])
def test_image_input_rejects_what_it_cannot_fold(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides={"export.formats": "coreml", **overrides})


@pytest.mark.parametrize("order", ["RGB", "BGR"])
@needs("coreml")
def test_image_input_folds_preprocessing_into_scale_and_bias(order):
    """Core ML computes pixel * scale + bias per channel of its colour layout; that must equal
    mvdeploy's preprocessing, here with a non-trivial mean and std."""
    import coremltools as ct

    from mvdeploy.backends.coreml import _image_input, _to_image

    prep = Preprocessing(channel_order=order, mean=(0.485, 0.456, 0.406), std=(0.25,) * 3)
    cfg = load_config(overrides={"preprocessing.channel_order": order,
                                 "preprocessing.mean": list(prep.mean),
                                 "preprocessing.std": list(prep.std)})
    image_type = _image_input(ct, cfg.preprocessing, (1, 3, 8, 8))
    assert image_type.color_layout == getattr(ct.colorlayout, order)
    pixels = np.random.default_rng(0).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    in_layout = pixels if order == "RGB" else pixels[..., ::-1]
    core_ml = (in_layout * image_type.scale + np.asarray(image_type.bias)).transpose(2, 0, 1)
    expected = normalise(pixels, prep)
    np.testing.assert_allclose(core_ml, expected, atol=1e-5)
    # and the macOS runner turns the tensor back into the very same photo
    assert (np.asarray(_to_image(expected, {"channel_order": order, "scale": prep.scale,
                                            "mean": prep.mean, "std": prep.std}))
            == pixels).all()


def test_preprocessing_matches_transformers_on_real_photos():
    """Including non-square photos, where the longer side's rounding used to differ by 1 px."""
    import skimage
    from PIL import Image

    from mvdeploy.data import preprocess

    photos = sample_image_paths() + sorted(Path(skimage.data_dir).glob("c*.png"))
    processor = _reference_processor()
    for path in photos:
        with Image.open(path) as image:
            ours = preprocess(image, 256, 256)
            theirs = processor(images=image.convert("RGB"), return_tensors="np")
        np.testing.assert_allclose(ours, theirs["pixel_values"][0], atol=1e-6,
                                   err_msg=path.name)


def test_apps_page_snippets_are_valid_shapes():
    """Each snippet block of docs/apps.md names the artifact it belongs to in its first line."""
    blocks = re.findall(r"```(swift|kotlin)\n(.*?)```", APPS_PAGE, flags=re.S)
    assert {lang for lang, _ in blocks} == {"swift", "kotlin"}
    for _, code in blocks:
        assert re.match(r"// (mobilevit_xxs_B_256x256|deeplabv3_mobilevit_xxs_A_512x512)\."
                        r"(mlpackage|tflite|pte)", code)
    assert "```python\n# mobilevit_xxs_B_256x256.tflite with MediaPipe Tasks" in APPS_PAGE


def test_apps_page_executorch_snippet_is_what_mvdeploy_writes():
    """docs/apps.md's ExecuTorch block comes from the generator, for the XXS B 256 artifact of the
    benchmark (seeded weights: no labels; the published preprocessing)."""
    from importlib.metadata import PackageNotFoundError, version

    from mvdeploy.backends import get_backend
    from mvdeploy.pipeline.exporter import _preprocessing

    try:
        executorch = version("executorch")
    except PackageNotFoundError:
        pytest.skip("the executorch extra is not installed")
    cfg = load_config(overrides={"model.patch": "B"})
    manifest = {"artifact": {"file": "mobilevit_xxs_B_256x256.pte", "executorch": executorch,
                             "inputs": [{"name": "pixel_values", "shape": [1, 3, 256, 256],
                                         "dtype": "float32"}],
                             "outputs": [{"name": "logits", "shape": [1, 1000],
                                          "dtype": "float32"}]},
                "preprocessing": _preprocessing(cfg, nhwc=False), "labels": None}
    code = get_backend("executorch").snippet(manifest)
    assert _snippet_block(code, "kotlin") in APPS_PAGE, \
        "docs/apps.md's ExecuTorch snippet is stale"
    assert "Module.load(file.absolutePath)" in code and "longArrayOf(1, 3, 256, 256)" in code


def _segmentation_doc_snippets() -> dict[str, tuple[str, str]]:
    """The segmentation snippets docs/apps.md shows, generated from the shipped iOS and Android
    configs' manifests with apple/deeplabv3-mobilevit-xx-small's preprocessing (the names and
    shapes their files have: the slow tests check those on real exports at 128x128)."""
    from mvdeploy.pipeline.exporter import _preprocessing

    # the published checkpoints' crop: 512 of a shorter side resized to 544
    published = {"preprocessing.crop_pct": 512 / 544}
    ios = load_config(ROOT / "export_configs" / "deeplabv3_mobilevit_xxs_ios.toml", published)
    android = load_config(ROOT / "export_configs" / "deeplabv3_mobilevit_xxs_android.toml",
                          published)
    def prep(cfg, nhwc: bool) -> dict:  # the configs fold RGB into the stem
        return {**_preprocessing(cfg, nhwc=nhwc), "channel_order": cfg.export.input_channels}

    model = {"task": "segmentation"}
    record = {"mvdeploy_manifest": 1, "created": "", "validated": True, "degenerate": False,
              "validation": {}, "tool": {}, "config": {}}
    swift = Manifest.from_dict({**record,
        "format": "coreml", "model": model, "labels": None,
        "preprocessing": prep(ios, nhwc=False),
        "artifact": {"file": "deeplabv3_mobilevit_xxs_A_512x512.mlpackage",
                     "inputs": [{"name": "pixel_values", "shape": [1, 3, 512, 512],
                                 "dtype": "image", "color_layout": "RGB"}],
                     "outputs": [{"name": "mask", "shape": [1, 512, 512], "dtype": "int32"}]}})
    tflite = Manifest.from_dict({**record,
        "format": "tflite", "model": model, "labels": None,
        "preprocessing": prep(android, nhwc=True),
        "artifact": {"file": "deeplabv3_mobilevit_xxs_A_512x512.tflite",
                     "inputs": [{"name": "pixel_values", "shape": [1, 512, 512, 3],
                                 "dtype": "float32"}],
                     "outputs": [{"name": "logits", "shape": [1, 32, 32, 21],
                                  "dtype": "float32"}]}})
    return {"swift": snippet(swift), "kotlin": snippet(tflite, "mediapipe"),
            "python": snippet(tflite, "mediapipe-python")}


def test_apps_page_segmentation_snippets_are_what_mvdeploy_writes():
    for name, (language, code) in _segmentation_doc_snippets().items():
        assert _snippet_block(code, language) in APPS_PAGE, \
            f"docs/apps.md's segmentation {name} snippet is stale"

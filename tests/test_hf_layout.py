"""export.layout = "hf": the folder optimum and transformers.js load, run with those clients.

The shipped `mobilevit_xxs_A_hf.toml` is exported with the trained fixture (a Hugging Face
folder, 64x64). transformers (mvdeploy's dev extra) checks the files; optimum and transformers.js
cannot share mvdeploy's venv (optimum-onnx pins transformers<4.58; transformers.js is a Node
package), so `.ci/install_clients` puts them in .venv/clients/ and they run in a subprocess,
as a user's own program would. A client that is not installed is skipped, never mocked.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mvdeploy.cli import run
from mvdeploy.data import sample_image_paths
from mvdeploy.errors import ConfigError
from mvdeploy.fixtures import checkpoint_dir
from mvdeploy.pipeline.config import load_config
from tests.helpers import eval_top1, export_with_fixture, needs

REPO = Path(__file__).resolve().parents[1]
CLIENTS = REPO / ".venv" / "clients"
SCRIPTS = Path(__file__).parent / "clients"
FILES = ["config.json", "preprocessor_config.json"]


# ---------------------------------------------------------------- fast: what the config allows


def test_layout_must_be_known():
    with pytest.raises(ConfigError, match=r"export\.layout must be one of mvdeploy, hf"):
        load_config(overrides={"export.layout": "huggingface"})


def test_hf_layout_needs_a_format_hugging_face_clients_read():
    with pytest.raises(ConfigError, match=r"which read onnx: add it to export\.formats"):
        load_config(overrides={"export.layout": "hf", "export.formats": "tflite"})


@needs("onnx")
def test_normalising_preprocessing_is_refused_not_dropped(tmp_path, capsys):
    """MobileViTImageProcessor has no mean/std: the file could not say it, so no folder."""
    code = run(["export", "-r", "64", "-f", "onnx", "--layout", "hf", "-o", str(tmp_path / "o"),
                "--set", "preprocessing.mean=[0.5,0.5,0.5]"])
    err = capsys.readouterr().err
    assert code == 2 and "export.layout = hf: preprocessing mean [0.5, 0.5, 0.5]" in err
    assert "Traceback" not in err and not (tmp_path / "o" / "config.json").exists()


# ---------------------------------------------------------------- slow: the folder and clients


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return export_with_fixture("mobilevit_xxs_A_hf", tmp_path_factory.mktemp("hf") /
                               "mobilevit-digits")


@pytest.fixture(scope="module")
def transformers_logits() -> dict[str, np.ndarray]:
    """The checkpoint in transformers itself, with its own processor: what clients must match."""
    from PIL import Image
    from transformers import MobileViTForImageClassification, MobileViTImageProcessor

    model = MobileViTForImageClassification.from_pretrained(checkpoint_dir()).eval()
    processor = MobileViTImageProcessor.from_pretrained(checkpoint_dir())
    out = {}
    for path in sample_image_paths():
        with Image.open(path) as image, torch.no_grad():
            x = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
            out[str(path)] = model(pixel_values=x).logits[0].numpy()
    assert len({v.argmax() for v in out.values()}) > 1  # the reference tells photos apart
    return out


def _accuracy(logits: dict[str, list[float]]) -> float:
    return float(np.mean([np.argmax(v) == int(Path(k).parent.name) for k, v in logits.items()]))


@pytest.mark.slow
def test_the_folder_holds_what_hugging_face_clients_read(folder):
    from transformers import AutoConfig, AutoImageProcessor

    assert sorted(p.name for p in folder.iterdir() if p.suffix == ".json") == FILES
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == [
        "app_metadata.json", "manifest.json", "model.onnx"]
    config = AutoConfig.from_pretrained(folder)
    assert config.model_type == "mobilevit" and config.id2label[3] == "3"
    processor = AutoImageProcessor.from_pretrained(folder)
    assert processor.do_flip_channel_order is False  # the config folds the flip: RGB in
    manifest = json.loads((folder / "onnx" / "manifest.json").read_text())
    check = manifest["validation"]["hf_layout"]["processor_check"]
    assert check["ran"] and check["max_levels"] <= 1.0
    app = json.loads((folder / "onnx" / "app_metadata.json").read_text())
    assert app["labels"] == [str(i) for i in range(10)] and app["input"] == "pixel_values"
    assert app["preprocessing"]["channel_order"] == "RGB"


def _in_subprocess(argv: list[str], env: dict | None = None) -> dict:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _optimum_site() -> Path:
    """optimum's folder beside the venv (its own transformers first on PYTHONPATH)."""
    site = CLIENTS / "optimum"
    if not (site / "optimum" / "onnxruntime").is_dir():
        pytest.skip(f"optimum is not in {site}: run .ci/install_clients")
    return site


def _node_package(module: str) -> Path:
    """The Node folder .ci/install_clients wrote, with `module` in its node_modules."""
    package = CLIENTS / "transformers-js"
    if shutil.which("node") is None or not (package / "node_modules" / module).is_dir():
        pytest.skip(f"{module} is not in {package}: run .ci/install_clients")
    return package


def _optimum(folder: Path, photos: list[Path]) -> dict:
    site = _optimum_site()
    return _in_subprocess([sys.executable, str(SCRIPTS / "optimum_classify.py"), str(folder),
                           *map(str, photos)], env={"PYTHONPATH": str(site)})


@pytest.mark.slow
@pytest.mark.clients
def test_optimum_loads_the_folder_and_matches_transformers(folder, transformers_logits):
    got = _optimum(folder, sample_image_paths())
    assert got["labels"]["3"] == "3"
    for path, reference in transformers_logits.items():
        logits = np.asarray(got["logits"][path])
        assert logits.argmax() == reference.argmax(), path
        assert np.abs(logits - reference).max() <= 1e-4 * np.abs(reference).max(), path


@pytest.mark.slow
@pytest.mark.clients
def test_optimum_held_out_accuracy_is_within_half_a_point_of_eval(folder, held_out_digits, capsys):
    got = _optimum(folder, sorted(held_out_digits.rglob("*.png")))
    ours = eval_top1(folder / "onnx" / "model.onnx", held_out_digits, capsys)
    assert ours >= 0.9 and abs(_accuracy(got["logits"]) - ours) <= 0.005


# transformers.js resizes with sharp's affine bilinear (no antialiasing, its own pixel grid),
# not PIL's filter: on the fixture's 8x8 -> 64 digits it gives 99.10 % against PIL's 99.78 %.
# The gap is the client's resize, proven below by running its own pixels through onnxruntime.
TRANSFORMERS_JS_RESIZE_GAP = 0.01


@pytest.mark.slow
@pytest.mark.clients
def test_transformers_js_runs_the_folder_as_its_onnx_says(folder, held_out_digits, capsys):
    package = _node_package("@huggingface")
    photos = [*sample_image_paths(), *sorted(held_out_digits.rglob("*.png"))]
    got = _in_subprocess(["node", str(SCRIPTS / "transformers_js_classify.mjs"), str(package),
                          str(folder), "fp32", *map(str, photos)])
    assert got["labels"]["3"] == "3"  # labels from config.json
    import onnxruntime as ort

    session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"))
    for path in map(str, sample_image_paths()):  # the same graph: its pixels, our runtime
        pixels = np.asarray(got["pixels"][path], np.float32).reshape(1, 3, 64, 64)
        (expected,) = session.run(None, {"pixel_values": pixels})
        logits = np.asarray(got["logits"][path])
        assert np.abs(logits - expected[0]).max() <= 1e-4 * np.abs(expected).max(), path
    digits = {k: v for k, v in got["logits"].items() if k.endswith(".png")
              and Path(k).is_relative_to(held_out_digits)}
    ours = eval_top1(folder / "onnx" / "model.onnx", held_out_digits, capsys)
    assert abs(_accuracy(digits) - ours) <= TRANSFORMERS_JS_RESIZE_GAP


@pytest.mark.slow
def test_pixels_prepared_by_the_folders_processor_are_what_the_onnx_takes(folder,
                                                                          transformers_logits):
    """transformers reading the written preprocessor_config.json, then onnxruntime: the same
    logits as transformers on the checkpoint (the RGB fold and the file agree)."""
    import onnxruntime as ort
    from PIL import Image
    from transformers import AutoImageProcessor

    ours, theirs = (AutoImageProcessor.from_pretrained(f) for f in (folder, checkpoint_dir()))
    session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"))
    for path, reference in transformers_logits.items():
        with Image.open(path) as image:
            x, trained_on = (p(images=image.convert("RGB"), return_tensors="np")["pixel_values"]
                             for p in (ours, theirs))
        np.testing.assert_array_equal(x, trained_on[:, ::-1])  # RGB here, BGR in training
        (logits,) = session.run(None, {"pixel_values": x.astype(np.float32)})
        assert np.abs(logits[0] - reference).max() <= 1e-4 * np.abs(reference).max(), path


# ---------------------------------------------------------------- the apps page's client lines

APPS_PAGE = REPO / "docs" / "apps.md"  # where the client lines are shown (README.md links it)
RUN_MARK = "<!-- run by tests/test_hf_layout.py -->"


def _page_block(language: str, name: str = "") -> str:
    """The block of docs/apps.md in `language` right after RUN_MARK (with ": name" when given)."""
    text = APPS_PAGE.read_text()
    mark = RUN_MARK if not name else RUN_MARK.replace(" -->", f": {name} -->")
    blocks = re.findall(re.escape(mark) + r"\n```(\w+)\n(.*?)^```", text, re.S | re.M)
    (code,) = [body for lang, body in blocks if lang == language]
    return code


def _top(reference: np.ndarray) -> tuple[str, float]:
    probs = np.exp(reference - reference.max())
    probs /= probs.sum()
    return str(int(probs.argmax())), float(probs.max())


@pytest.mark.slow
@pytest.mark.clients
def test_the_apps_page_optimum_lines_classify_as_transformers_does(folder, transformers_logits,
                                                                   tmp_path):
    site = _optimum_site()
    photo, reference = next(iter(transformers_logits.items()))
    code = _page_block("python").replace('"mvdeploy_out/mobilevit_xxs_A_hf"', repr(str(folder)))
    script = tmp_path / "readme_optimum.py"
    script.write_text(code.replace('"photo.jpg"', repr(photo)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr[-3000:]
    best = ast.literal_eval(done.stdout.strip().splitlines()[-1])[0]
    label, score = _top(reference)
    assert best["label"] == label and abs(best["score"] - score) <= 1e-4


@pytest.mark.slow
@pytest.mark.clients
def test_the_apps_page_transformers_js_lines_classify_the_photo(folder, tmp_path):
    package = _node_package("@huggingface")
    photo = str(sample_image_paths()[0])
    code = (_page_block("js").replace('"mvdeploy_out/"', json.dumps(f"{folder.parent}/"))
            .replace('"mobilevit_xxs_A_hf"', json.dumps(folder.name))
            .replace('"photo.jpg"', json.dumps(photo)))
    (tmp_path / "node_modules").symlink_to(package / "node_modules")  # as an app's own
    (tmp_path / "readme_transformers.mjs").write_text(code)
    done = subprocess.run(["node", "readme_transformers.mjs"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # console.log prints [ { label: '5', score: 0.41 }, ... ]: five results, best first
    found = re.findall(r"label: '(\d)',\s+score: ([\d.e-]+)", done.stdout)
    assert len(found) == 5 and float(found[0][1]) >= float(found[-1][1])
    # the same photo through transformers.js' own classifier (its resize, see above)
    got = _in_subprocess(["node", str(SCRIPTS / "transformers_js_classify.mjs"), str(package),
                          str(folder), "fp32", photo])
    assert found[0][0] == str(int(np.argmax(got["logits"][photo])))


@pytest.mark.slow
@pytest.mark.clients
def test_the_apps_page_onnxruntime_js_lines_classify_as_transformers(folder, transformers_logits,
                                                                     tmp_path):
    """onnxruntime-node (transformers.js' own copy), fed RGBA pixels cropped as a canvas would
    hold them, with input name, labels and normalisation from app_metadata.json."""
    import onnxruntime as ort
    from PIL import Image

    from mvdeploy.data import Preprocessing, preprocess

    package = _node_package("onnxruntime-node")
    code = _page_block("js", "onnxruntime").replace(
        '"mvdeploy_out/mobilevit_xxs_A_hf/onnx/"', json.dumps(f"{folder}/onnx/"))
    (tmp_path / "node_modules").symlink_to(package / "node_modules")
    (tmp_path / "classify.mjs").write_text(code)
    app = json.loads((folder / "onnx" / "app_metadata.json").read_text())["preprocessing"]
    crop = Preprocessing(channel_order="RGB", resample=app["resample"],
                         resize_shorter_side=app["resize_shorter_side"])  # the app's own
    session = ort.InferenceSession(str(folder / "onnx" / "model.onnx"))
    photos = list(transformers_logits)
    scores = []
    for i, path in enumerate(photos):
        with Image.open(path) as image:
            x = preprocess(image, 64, 64, crop)  # RGB, 0..1
        rgba = np.concatenate([np.rint(x * 255), np.full((1, 64, 64), 255)]).astype(np.uint8)
        (tmp_path / f"{i}.rgba").write_bytes(rgba.transpose(1, 2, 0).tobytes())
        (logits,) = session.run(None, {"pixel_values": x[None]})
        scores.append(float(logits.max()))
    (tmp_path / "run.mjs").write_text(
        'import { readFile } from "node:fs/promises";\n'
        'import { classify } from "./classify.mjs";\n'
        "const out = [];\n"
        f"for (let i = 0; i < {len(photos)}; i++) "
        "out.push(await classify(await readFile(`${i}.rgba`)));\n"
        "console.log(JSON.stringify(out));\n")
    done = subprocess.run(["node", "run.mjs"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    for (label, score), path, expected in zip(got, photos, scores, strict=True):
        assert label == str(int(transformers_logits[path].argmax())), path
        assert abs(score - expected) <= 1e-4 * max(1.0, abs(expected)), path

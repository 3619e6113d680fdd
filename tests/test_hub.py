"""Checkpoints by hub id (offline, from a hub cache the tests lay out themselves), timm's layout,
preprocessing taken from the checkpoint, and the weights warnings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mvdeploy.cli import run
from mvdeploy.data import Preprocessing, load_images, sample_image_paths
from mvdeploy.errors import CheckpointError
from mvdeploy.models import create_model
from mvdeploy.models.hub import parse_hub_id
from mvdeploy.models.weights import TELLTALE_KEYS, detect_source, load_pretrained, save_checkpoint
from tests.helpers import APPLE_PREPROCESSOR, lay_out_hub_cache, needs, recorded_timm_state

# Apple's preprocessor_config.json for apple/mobilevit-xx-small, in its (older) integer form
# timm's hub config.json for timm/mobilevit_xxs.cvnets_in1k (10 classes here)
TIMM_CONFIG = {"architecture": "mobilevit_xxs", "num_classes": 10, "num_features": 320,
               "pretrained_cfg": {"tag": "cvnets_in1k", "custom_load": False,
                                  "input_size": [3, 256, 256], "fixed_input_size": False,
                                  "interpolation": "bicubic", "crop_pct": 0.9,
                                  "crop_mode": "center", "mean": [0.0, 0.0, 0.0],
                                  "std": [1.0, 1.0, 1.0], "num_classes": 10,
                                  "pool_size": [8, 8], "first_conv": "stem.conv",
                                  "classifier": "head.fc"}}
TIMM_REFERENCE = Path(__file__).with_name("data") / "timm_mobilevit_xxs.npz"


def timm_state() -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """The state dict recorded by tests/data/record_timm_reference.py and timm's logits."""
    return recorded_timm_state(TIMM_REFERENCE, seed=3)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty hub cache, offline, for in-process calls."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


# ---------------------------------------------------------------- fast


@pytest.mark.parametrize(("spec", "parsed"), [
    ("apple/mobilevit-xx-small", ("apple/mobilevit-xx-small", None)),
    ("timm/mobilevit_xxs.cvnets_in1k", ("timm/mobilevit_xxs.cvnets_in1k", None)),
    ("apple/mobilevit-small@refs/pr/3", ("apple/mobilevit-small", "refs/pr/3")),
    ("org/name@0123abc", ("org/name", "0123abc")),
    ("weights/model.safetensors", None), ("ckpt.pt", None), ("/abs/dir", None), ("a/b/c", None),
])
def test_hub_id_parsing(spec, parsed):
    assert parse_hub_id(spec) == parsed


def test_hub_id_offline_and_not_cached_is_one_line(offline_hub, capsys):
    assert run(["models", "--weights", "apple/mobilevit-xx-small"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "apple/mobilevit-xx-small is not in the Hugging Face cache" in err
    assert "hf download apple/mobilevit-xx-small" in err and "HF_HUB_OFFLINE" in err


def test_hub_revision_comes_from_refs(offline_hub, hf_checkpoint):
    _, directory = hf_checkpoint("mobilevit_xxs")
    files = {n: directory / n for n in ("config.json", "model.safetensors")}
    lay_out_hub_cache(offline_hub, "org/mv", files, revision="v1", commit="a" * 40)
    model = load_pretrained("org/mv@v1")
    assert model.checkpoint == {"weights": "org/mv@v1", "hub_id": "org/mv@v1",
                                "commit": "a" * 40, "source": "huggingface"}
    with pytest.raises(CheckpointError, match="org/mv@v2 is not in the Hugging Face cache"):
        load_pretrained("org/mv@v2")


def test_snapshot_without_weights_says_so(offline_hub, hf_checkpoint):
    lay_out_hub_cache(offline_hub, "org/empty",
                      {"config.json": hf_checkpoint("mobilevit_xxs")[1] / "config.json"})
    with pytest.raises(CheckpointError, match=r"no model\.safetensors or pytorch_model\.bin"):
        load_pretrained("org/empty")


def test_local_path_wins_over_hub_id(tmp_path, monkeypatch, hf_checkpoint):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(hf_checkpoint("mobilevit_xxs")[1], tmp_path / "apple" / "mobilevit-xx-small")
    model = load_pretrained("apple/mobilevit-xx-small")  # no hub access attempted
    assert "hub_id" not in model.checkpoint and model.checkpoint["source"] == "huggingface"


def test_preprocessing_comes_from_the_checkpoint(tmp_path, hf_checkpoint):
    directory = tmp_path / "ckpt"
    shutil.copytree(hf_checkpoint("mobilevit_xxs")[1], directory)
    assert load_pretrained(directory).preprocessing is None  # says nothing: defaults apply
    (directory / "preprocessor_config.json").write_text(json.dumps(APPLE_PREPROCESSOR))
    assert load_pretrained(directory).preprocessing == Preprocessing()  # the published one
    (directory / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 64}, "crop_size": {"height": 56, "width": 56},
        "do_flip_channel_order": False, "resample": 3, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    prep = load_pretrained(directory).preprocessing
    assert prep == Preprocessing(channel_order="RGB", crop_pct=56 / 64, resample="bicubic",
                                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert prep.shorter_side(56, 56) == 64


def test_timm_state_dict_is_not_mistaken_for_mvdeploy(tmp_path):
    state, _ = timm_state()
    assert "stem.conv.weight" in state  # the key both layouts share
    assert detect_source(state, "x") == "timm"
    ours = create_model("mobilevit_xxs", num_classes=10).state_dict()
    assert detect_source(ours, "x") == "mvdeploy"
    assert set(TELLTALE_KEYS.values()).isdisjoint({"stem.conv.weight"})


def test_timm_state_dict_file_loads_with_parity(tmp_path):
    """A timm state dict (its own key names) loads strictly and gives timm's logits."""
    from safetensors.torch import save_file

    state, timm_logits = timm_state()
    save_file(state, str(tmp_path / "timm.safetensors"))
    model = load_pretrained(tmp_path / "timm.safetensors")
    assert model.checkpoint["source"] == "timm" and model.num_classes == 10
    x, _, _ = load_images(sample_image_paths(), 256, 256,
                          Preprocessing(channel_order="RGB", crop_pct=0.9, resample="bicubic"))
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    assert np.abs(ours - timm_logits).max() <= 1e-4 * np.abs(timm_logits).max()
    assert len(set(timm_logits.argmax(1).tolist())) > 1  # the reference tells photos apart


def test_hub_id_without_the_extra_names_it(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    assert run(["models", "--weights", "apple/mobilevit-xx-small"]) == 2
    assert 'pip install "mvdeploy[hub]"' in capsys.readouterr().err


@needs("onnx")
def test_empty_weights_is_a_mistake(tmp_path, capsys):
    assert run(["export", "-r", "64", "-f", "onnx", "-w", "", "-o", str(tmp_path)]) == 2
    assert "weights path is empty" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    assert run(["models", "-w", " "]) == 2


# ---------------------------------------------------------------- slow: real exports


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """mvdeploy in a fresh process, so HF_HUB_OFFLINE / HF_HUB_CACHE are read as a user sets
    them."""
    return subprocess.run([sys.executable, "-m", "mvdeploy.cli", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=600)


@pytest.mark.slow
def test_export_by_hub_id_offline_reproduces_transformers(tmp_path, hf_checkpoint):
    """apple/mobilevit-xx-small from a populated cache with HF_HUB_OFFLINE=1: the artifact gives
    transformers' logits (its own processor on the same photos) and carries the checkpoint's
    preprocessing; transformers reads the very same cache."""
    from transformers import MobileViTForImageClassification, MobileViTImageProcessor

    _, directory = hf_checkpoint("mobilevit_xxs")
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, "apple/mobilevit-xx-small", {
        "config.json": directory / "config.json", "model.safetensors":
        directory / "model.safetensors", "preprocessor_config.json": APPLE_PREPROCESSOR})
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    done = _cli(["export", "-w", "apple/mobilevit-xx-small", "-f", "onnx", "-o",
                 str(tmp_path / "out"), "--json"], env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["formats"][0]["status"] == "passed" and not report["formats"][0]["degenerate"]
    assert "random weights" not in done.stderr
    manifest = json.loads((tmp_path / "out" / "onnx" / "manifest.json").read_text())
    assert manifest["model"]["checkpoint"]["hub_id"] == "apple/mobilevit-xx-small"
    assert manifest["preprocessing"]["resize_shorter_side"] == 288

    hf = MobileViTForImageClassification.from_pretrained(
        "apple/mobilevit-xx-small", cache_dir=cache, local_files_only=True).eval()
    processor = MobileViTImageProcessor.from_pretrained(
        "apple/mobilevit-xx-small", cache_dir=cache, local_files_only=True)
    from PIL import Image

    photos = [Image.open(p).convert("RGB") for p in sample_image_paths()]
    pixels = processor(photos, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = hf(pixel_values=pixels).logits.numpy()
    import onnxruntime as ort

    session = ort.InferenceSession(report["formats"][0]["artifact"])
    logits = np.concatenate([session.run(["logits"], {"pixel_values": x[None]})[0]
                             for x in pixels.numpy()])
    assert np.abs(logits - expected).max() <= 1e-4  # transformers' logits, its own inputs
    done = _cli(["predict", report["formats"][0]["artifact"],
                 *map(str, sample_image_paths()), "--json", "--top", "1000"], env)
    assert done.returncode == 0, done.stderr
    # predict reports probabilities: compare those, and the logits through the runtime
    got = np.array([[e["probability"] for e in sorted(r["top"], key=lambda e: e["class"])]
                    for r in json.loads(done.stdout)])
    probs = torch.softmax(torch.from_numpy(expected), 1).numpy()
    assert np.abs(got - probs).max() <= 1e-4
    assert len(set(expected.argmax(1).tolist())) > 1


@pytest.mark.slow
def test_export_timm_hub_id_offline(tmp_path):
    """timm/mobilevit_xxs.cvnets_in1k from the cache: timm's layout, config and preprocessing."""
    from safetensors.torch import save_file

    state, timm_logits = timm_state()
    save_file(state, str(tmp_path / "model.safetensors"))
    cache = tmp_path / "hub"
    lay_out_hub_cache(cache, "timm/mobilevit_xxs.cvnets_in1k", {
        "config.json": TIMM_CONFIG, "model.safetensors": tmp_path / "model.safetensors"})
    done = _cli(["export", "-w", "timm/mobilevit_xxs.cvnets_in1k", "-f", "onnx", "-o",
                 str(tmp_path / "out"), "--json"],
                {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)})
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "out" / "onnx" / "manifest.json").read_text())
    prep = manifest["preprocessing"]
    assert (prep["channel_order"], prep["resample"], prep["resize_shorter_side"]) == \
        ("RGB", "bicubic", 284)  # timm: floor(256 / 0.9)
    assert manifest["validated"] and not manifest["degenerate"]
    import onnxruntime as ort

    x, _, _ = load_images(sample_image_paths(), 256, 256,
                          Preprocessing(channel_order="RGB", crop_pct=0.9, resample="bicubic"))
    session = ort.InferenceSession(str(tmp_path / "out" / "onnx" / manifest["artifact"]["file"]))
    got = np.concatenate([session.run(None, {"pixel_values": x[i:i + 1]})[0]
                          for i in range(len(x))])
    assert np.abs(got - timm_logits).max() <= 1e-4 * np.abs(timm_logits).max()


@pytest.mark.slow
def test_no_weights_warns_once(tmp_path, capfd):
    assert run(["export", "-r", "64", "-f", "onnx", "-o", str(tmp_path)]) == 0
    err = capfd.readouterr().err
    assert err.count("exporting seeded random weights") == 1
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["model"]["weights"] is None and manifest["degenerate"] is False


def test_saved_checkpoint_keeps_mvdeploy_source(tmp_path):
    path = save_checkpoint(create_model("mobilevit_xxs", num_classes=3), tmp_path / "w.pt")
    assert load_pretrained(path).checkpoint["source"] == "mvdeploy"

"""export.input_channels: a BGR-trained checkpoint exported to take RGB, as cameras deliver it.

The flip is folded into the stem convolution; validation compares the artifact fed RGB with the
model as trained fed BGR, so a fold that is not the same function fails it (checked below by
skipping the fold).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mvdeploy.cli import run
from mvdeploy.data import load_images, sample_image_paths
from mvdeploy.fixtures import checkpoint_dir
from mvdeploy.models import MobileViT, create_model
from mvdeploy.models.weights import load_pretrained
from mvdeploy.pipeline.config import load_config

REPO = Path(__file__).resolve().parents[1]


def test_flipping_the_stem_is_the_same_function_on_flipped_input():
    model = load_pretrained(checkpoint_dir())  # trained on BGR
    x, _, _ = load_images(sample_image_paths(), 64, 64, model.preprocessing)
    with torch.no_grad():
        trained = model(torch.from_numpy(x)).numpy()
        model.flip_input_channels_()
        folded = model(torch.from_numpy(np.ascontiguousarray(x[:, ::-1]))).numpy()
        unfolded_input = model(torch.from_numpy(x)).numpy()
    assert len(set(trained.argmax(1).tolist())) > 1  # the reference tells photos apart
    assert np.abs(folded - trained).max() <= 1e-5 * np.abs(trained).max()
    assert np.abs(unfolded_input - trained).max() > 0.1 * np.abs(trained).max()  # order matters


def test_input_channels_is_checked():
    assert run(["export", "-r", "64", "--set", "export.input_channels=rgb"]) == 2


@pytest.mark.slow
def test_an_rgb_export_of_a_bgr_checkpoint_validates_and_says_rgb(tmp_path):
    out = tmp_path / "out"
    assert run(["export", "-w", str(checkpoint_dir()), "-r", "64", "-f", "onnx", "-o", str(out),
                "--set", "export.input_channels=RGB"]) == 0
    manifest = json.loads((out / "onnx" / "manifest.json").read_text())
    assert manifest["validated"] and not manifest["degenerate"]
    assert manifest["preprocessing"]["channel_order"] == "RGB"
    assert "trained on BGR, the artifact takes RGB" in manifest["preprocessing"]["origin"]
    # what an app does: RGB pixels, scaled, straight into the file
    import onnxruntime as ort

    model = load_pretrained(checkpoint_dir())
    bgr, _, _ = load_images(sample_image_paths(), 64, 64, model.preprocessing)
    rgb, _, _ = load_images(sample_image_paths(), 64, 64,
                            dataclasses.replace(model.preprocessing, channel_order="RGB"))
    session = ort.InferenceSession(str(out / "onnx" / manifest["artifact"]["file"]))
    got = np.concatenate([session.run(None, {"pixel_values": rgb[i:i + 1]})[0]
                          for i in range(len(rgb))])
    with torch.no_grad():
        trained = model(torch.from_numpy(bgr)).numpy()
    assert np.abs(got - trained).max() <= 1e-4 * np.abs(trained).max()


@pytest.mark.slow
def test_a_fold_that_is_skipped_fails_validation(tmp_path, monkeypatch):
    monkeypatch.setattr(MobileViT, "flip_input_channels_", lambda self: None)
    assert run(["export", "-w", str(checkpoint_dir()), "-r", "64", "-f", "onnx", "-o",
                str(tmp_path), "--set", "export.input_channels=RGB"]) == 1
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    assert manifest["validated"] is False


@pytest.mark.parametrize("config", sorted((REPO / "export_configs").glob("*_android.toml"))
                         + sorted((REPO / "export_configs").glob("*_ios.toml")),
                         ids=lambda p: p.name)
def test_shipped_app_configs_take_rgb(config):
    assert load_config(config).export.input_channels == "RGB"


def test_seeded_weights_are_unaffected_by_the_default():
    model = create_model("mobilevit_xxs", num_classes=3)
    assert model.preprocessing is None  # the published default (BGR) with "checkpoint"

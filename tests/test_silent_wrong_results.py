"""Inputs that used to give a confident wrong answer with exit 0 (issue 27, item 5): a sideways
phone photo (EXIF Orientation), a zero pixel scale, a checkpoint holding NaN or Inf."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from mvdeploy.cli import run
from mvdeploy.data import read_image, sample_image_paths
from mvdeploy.errors import CheckpointError, ConfigError
from mvdeploy.fixtures import checkpoint_dir
from mvdeploy.models.weights import load_pretrained
from mvdeploy.pipeline.config import load_config

ORIENTATION = 0x0112  # the EXIF tag
ROTATE_90_CLOCKWISE_TO_DISPLAY = 6  # how phones store a portrait shot taken in landscape


def _sideways_and_upright(tmp_path):
    """The same photo twice, losslessly: upright, and stored sideways with Orientation = 6."""
    with Image.open(sample_image_paths()[0]) as photo:
        photo = photo.convert("RGB").crop((0, 0, 320, 240))  # not square: a turn shows
    upright = tmp_path / "upright.png"
    photo.save(upright)
    exif = Image.Exif()
    exif[ORIENTATION] = ROTATE_90_CLOCKWISE_TO_DISPLAY
    sideways = tmp_path / "sideways.png"
    photo.transpose(Image.Transpose.ROTATE_90).save(sideways, exif=exif)  # pixels turned left
    return sideways, upright


def test_a_sideways_phone_photo_is_read_upright(tmp_path):
    sideways, upright = _sideways_and_upright(tmp_path)
    np.testing.assert_array_equal(read_image(sideways, 64, 64), read_image(upright, 64, 64))
    with Image.open(sideways) as stored:  # the file really is stored sideways
        assert stored.size == (240, 320)


@pytest.mark.slow
def test_predict_on_a_sideways_photo_equals_the_upright_one_and_the_manifest_says_so(tmp_path,
                                                                                     capsys):
    sideways, upright = _sideways_and_upright(tmp_path)
    out = tmp_path / "out"
    assert run(["export", "--weights", str(checkpoint_dir()), "-r", "64", "-f", "onnx",
                "-o", str(out), "--set", "export.save_program=false"]) == 0
    (onnx,) = (out / "onnx").glob("*.onnx")
    manifest = json.loads((out / "onnx" / "manifest.json").read_text())
    assert manifest["preprocessing"]["exif_orientation"].startswith("applied")
    capsys.readouterr()
    assert run(["predict", str(onnx), str(sideways), str(upright), "--json"]) == 0
    first, second = json.loads(capsys.readouterr().out)
    assert first["top"] == second["top"]


def test_a_zero_pixel_scale_is_refused():
    """scale 0: the model would see only zeros, and every artifact would match PyTorch."""
    with pytest.raises(ConfigError, match=r"preprocessing\.scale must be a positive number"):
        load_config(overrides={"preprocessing.scale": 0})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_checkpoint_holding_nan_or_inf_is_refused_with_the_tensor_name(tmp_path, bad):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dir(), folder)
    state = load_file(folder / "model.safetensors")
    name = sorted(k for k in state if k.endswith("weight"))[3]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = bad
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(CheckpointError, match=f"tensor {name} holds 1 NaN or Inf value"):
        load_pretrained(folder)
    assert torch.isfinite(load_file(checkpoint_dir() / "model.safetensors")[name]).all()

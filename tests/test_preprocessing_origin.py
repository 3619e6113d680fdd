"""Preprocessing is the checkpoint's own: a bare timm state dict gets timm's default (not the
published Apple one), a checkpoint that does not say gets one `preprocessing assumed` line, and
a preprocessing that differs from the checkpoint's own library (transformers) stops the export
with one line naming the difference."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mvdeploy.cli import run
from mvdeploy.data import load_images, sample_image_paths
from mvdeploy.fixtures import checkpoint_dir
from mvdeploy.models.weights import TIMM_MOBILEVIT_PREPROCESSING, load_pretrained
from mvdeploy.pipeline.exporter import preprocessing_warning
from tests.helpers import needs
from tests.test_hub import timm_state


@pytest.fixture(scope="module")
def bare_timm(tmp_path_factory):
    """timm's seeded, input-sensitive XXS saved the way a user would: torch.save(state_dict)."""
    state, logits = timm_state()
    path = tmp_path_factory.mktemp("timm") / "mobilevit_xxs_timm.pt"
    torch.save(state, path)
    return path, logits


def test_a_bare_timm_state_dict_gets_timms_preprocessing_and_timms_logits(bare_timm):
    path, timm_logits = bare_timm
    model = load_pretrained(path)
    assert model.preprocessing == TIMM_MOBILEVIT_PREPROCESSING
    assert (model.preprocessing.channel_order, model.preprocessing.resample,
            model.preprocessing.crop_pct) == ("RGB", "bicubic", 0.9)
    assert model.preprocessing_origin.startswith("timm's default for mobilevit_xxs")
    x, _, _ = load_images(sample_image_paths(), 256, 256, model.preprocessing)
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    assert len(set(timm_logits.argmax(1).tolist())) > 1  # the reference tells photos apart
    assert np.abs(ours - timm_logits).max() <= 1e-4 * np.abs(timm_logits).max()


def test_a_checkpoint_without_preprocessing_says_it_is_assumed(hf_checkpoint):
    _, directory = hf_checkpoint("mobilevit_xxs")  # save_pretrained: no preprocessor_config
    model = load_pretrained(directory)
    assert model.preprocessing is None
    assert model.preprocessing_origin.startswith("assumed: ")
    from mvdeploy.data import Preprocessing

    line = preprocessing_warning(Preprocessing(), model.preprocessing_origin)
    assert line.startswith("preprocessing assumed: BGR, bilinear, crop_pct 0.8889")
    assert "\n" not in line and "no preprocessor_config.json" in line


@pytest.mark.slow
def test_export_of_a_bare_timm_state_dict_says_so_and_records_it(bare_timm, tmp_path, capfd):
    path, _ = bare_timm
    assert run(["export", "-w", str(path), "-r", "64", "-f", "onnx", "-o", str(tmp_path)]) == 0
    err = " ".join(capfd.readouterr().err.split())  # the terminal may wrap the line
    assert err.count("mvdeploy: warning: preprocessing: RGB, bicubic, crop_pct 0.9,") == 1, err
    manifest = json.loads((tmp_path / "onnx" / "manifest.json").read_text())
    prep = manifest["preprocessing"]
    assert (prep["channel_order"], prep["resample"]) == ("RGB", "bicubic")
    assert prep["origin"].startswith("timm's default for mobilevit_xxs")
    check = manifest["validation"]["preprocessing_check"]
    assert check["ran"] or "timm does not import here" in check["note"]


@pytest.mark.parametrize(("override", "named"), [
    ("preprocessing.resample=nearest", "resample is 'bilinear' there, 'nearest' here"),
    ("preprocessing.channel_order=RGB", "channel_order is 'BGR' there, 'RGB' here"),
])
@needs("onnx")
def test_a_preprocessing_unlike_the_checkpoints_library_stops_the_export(
        tmp_path, capsys, override, named):
    """The trained fixture's preprocessor_config.json read by transformers is the witness."""
    pytest.importorskip("transformers")
    code = run(["export", "-w", str(checkpoint_dir()), "-r", "64", "-f", "onnx", "-o",
                str(tmp_path / "out"), "--set", override])
    printed = capsys.readouterr()
    assert code == 2
    errors = [line for line in printed.err.splitlines() if line.startswith("mvdeploy: error")]
    assert len(errors) == 1 and named in errors[0] and "MobileViTImageProcessor" in errors[0]
    assert not (tmp_path / "out" / "onnx").exists()


def test_the_fixtures_own_preprocessing_agrees_with_transformers():
    pytest.importorskip("transformers")
    from mvdeploy.models.library_preprocessing import check_against_library

    model = load_pretrained(checkpoint_dir())
    check = check_against_library("huggingface", checkpoint_dir(), "mobilevit_xxs",
                                  model.preprocessing, sample_image_paths(), 64, 64)
    assert check.ran and check.max_levels <= 1.0

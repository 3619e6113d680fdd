"""The three image sets of a quantised export (calibration, selection, report) never share an
image, by content, whatever folders they come from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mvdeploy.data import quantization_pool_paths, sample_image_paths
from mvdeploy.errors import ConfigError
from mvdeploy.pipeline.config import load_config
from mvdeploy.pipeline.exporter import _split_images
from mvdeploy.pipeline.image_sets import BUNDLED


def _contents(image_set) -> set[bytes]:
    return {p.read_bytes() for p in image_set.paths}


def _assert_disjoint(sets) -> None:
    present = [s for s in (sets.report, sets.selection, sets.calibration) if s is not None]
    for i, a in enumerate(present):
        for b in present[i + 1:]:
            assert _contents(a).isdisjoint(_contents(b))


def _sets(**overrides):
    return _split_images(load_config(overrides={"export.formats": "onnx", **overrides}))


def test_the_default_deals_the_bundled_photos_into_three_disjoint_sets():
    sets = _sets(**{"quantize.precision": "int8-static"})
    _assert_disjoint(sets)
    sizes = [len(s.paths) for s in (sets.report, sets.selection, sets.calibration)]
    assert sizes == [3, 3, 6] and sum(sizes) == len(quantization_pool_paths()) == 12
    assert sets.calibration.source == BUNDLED
    assert set(sets.report.shared_with) == {"calibration", "selection"}
    # graded on colour photos and on ones unlike them, as the calibration is
    samples = set(sample_image_paths())
    for image_set in (sets.report, sets.selection, sets.calibration):
        assert samples & set(image_set.paths) and set(image_set.paths) - samples
    recorded = sets.to_dict()
    assert recorded["report"]["images"] == 3 and recorded["selection"]["source"] == BUNDLED


def test_copies_in_another_folder_count_as_the_same_photo(tmp_path):
    for path in sample_image_paths():
        shutil.copy(path, tmp_path / f"copy_of_{path.name}")
    sets = _sets(**{"quantize.precision": "int8-static",
                    "quantize.calibration_images": str(tmp_path)})
    _assert_disjoint(sets)
    assert sum(len(s.paths) for s in (sets.report, sets.selection, sets.calibration)) == 12


def test_a_calibration_folder_of_its_own_gives_the_selection_a_share_of_it(tmp_path):
    source = Path(pytest.importorskip("skimage.data").__file__).parent
    bundled = {p.stem for p in sample_image_paths()}
    for path in sorted(source.glob("*.png")):
        if path.stem not in bundled:
            shutil.copy(path, tmp_path / path.name)
    sets = _sets(**{"quantize.precision": "int8-static",
                    "quantize.calibration_images": str(tmp_path)})
    _assert_disjoint(sets)
    assert sets.report.paths == quantization_pool_paths()  # the folder is not theirs to share
    assert sets.selection.source == str(tmp_path) == sets.calibration.source
    # calibration takes two images for each one the selection takes, until it is full
    assert len(sets.calibration.paths) >= 2 * len(sets.selection.paths) - 2 > 0


def test_an_explicit_selection_folder_is_used_as_given(tmp_path):
    for path in sample_image_paths()[:2]:
        shutil.copy(path, tmp_path / path.name)
    sets = _sets(**{"quantize.precision": "int8-static",
                    "quantize.selection_images": str(tmp_path)})
    _assert_disjoint(sets)
    # the two folder photos are also bundled: dealt between the selection and the others
    assert sets.selection.source == str(tmp_path) and sets.selection.paths


def test_float_recipes_need_no_calibration_or_selection():
    sets = _sets(**{"quantize.precision": "fp16"})
    assert sets.calibration is None and sets.selection is None
    assert len(sets.report.paths) == len(sample_image_paths())  # all of them, untouched


def test_a_calibrated_recipe_without_a_search_has_no_selection_set():
    sets = _split_images(load_config(overrides={"export.formats": "coreml",
                                                "quantize.precision": "w8a8",
                                                "coreml.minimum_deployment_target": "iOS17"}))
    assert sets.selection is None and sets.calibration.paths
    _assert_disjoint(sets)


def test_one_photo_for_two_sets_is_refused_in_one_line(tmp_path):
    shutil.copy(sample_image_paths()[0], tmp_path / "only.jpg")
    with pytest.raises(ConfigError) as caught:
        _sets(**{"quantize.precision": "int8-static", "validate.images": str(tmp_path),
                 "quantize.calibration_images": str(tmp_path)})
    message = str(caught.value)
    assert "\n" not in message and "no image is left for the calibration set" in message
    assert "--calibration" in message


def test_labelled_accuracy_images_never_calibrate_or_tune(tmp_path):
    labelled = tmp_path / "labelled" / "0"
    labelled.mkdir(parents=True)
    for path in sample_image_paths()[:3]:
        shutil.copy(path, labelled / path.name)
    sets = _sets(**{"quantize.precision": "int8-static",
                    "validate.labelled_images": str(tmp_path / "labelled")})
    held = {p.read_bytes() for p in labelled.iterdir()}
    assert held.isdisjoint(_contents(sets.calibration) | _contents(sets.selection))

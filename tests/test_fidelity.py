"""Fidelity that can fail: input-sensitive default weights, the degenerate-reference guard,
tolerances that scale with the reference, and exports that pass when right and fail when a
weight is wrong (input-sensitive XXS/XS/S and the trained fixture)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mvdeploy.cli import run
from mvdeploy.data import load_images, preprocess, read_image, sample_image_paths
from mvdeploy.fixtures import checkpoint_dir
from mvdeploy.models import create_model, list_models
from mvdeploy.models.weights import save_checkpoint
from mvdeploy.pipeline.validate import MIN_REFERENCE_SPREAD, Tolerance, reference_spread, validate
from mvdeploy.tasks.classification import compare
from tests.helpers import extended


def _skimage_photos() -> list[Path]:
    skimage = pytest.importorskip("skimage")
    bundled = {p.stem for p in sample_image_paths()}
    return [p for p in sorted(Path(skimage.data_dir).glob("*.png")) if p.stem not in bundled]


# ---------------------------------------------------------------- default weights


# XS and S are slow (15-25 s each): the fast suite keeps XXS, CI's full run all three
@pytest.mark.parametrize("name", [n if n == "mobilevit_xxs" else pytest.param(
    n, marks=pytest.mark.slow) for n in list_models("v1")])
def test_default_weights_tell_photos_apart(name):
    photos = sample_image_paths() + _skimage_photos()
    x, used, _ = load_images(photos, 256, 256)
    with torch.no_grad():
        logits = create_model(name).eval()(torch.from_numpy(x)).numpy()
    spread = reference_spread({"photos": logits})
    assert spread.top1_classes >= len(used) / 3, spread
    assert spread.spread > 0.3 and not spread.degenerate
    assert 0.3 < logits.std() < 10  # logits of order 1


def test_plain_random_init_is_degenerate_and_flagged():
    """Why the default is not PyTorch's init: its outputs hardly depend on the photo."""
    x, _, _ = load_images(sample_image_paths(), 128, 128)
    with torch.no_grad():
        logits = create_model("mobilevit_xxs", init="random")(torch.from_numpy(x)).numpy()
    spread = reference_spread({"photos": logits})
    assert spread.degenerate and spread.spread < MIN_REFERENCE_SPREAD
    assert spread.top1_classes == 1


def test_default_weights_are_seeded():
    a, b = create_model("mobilevit_xxs"), create_model("mobilevit_xxs")
    c = create_model("mobilevit_xxs", seed=1)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    assert not torch.equal(a.stem.conv.weight, c.stem.conv.weight)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    create_model("mobilevit_xxs")
    assert torch.equal(torch.rand(1), before)  # the caller's random stream is left alone


# ---------------------------------------------------------------- metrics and tolerances


def test_tolerance_scales_with_the_reference():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(4, 10)).astype(np.float32)
    err = rng.normal(size=(4, 10)).astype(np.float32) * 1e-5
    tolerance = Tolerance(max_rel=1e-4)
    for scale in (1e-3, 1.0, 1e3):  # same relative error at any logit size: same verdict
        metrics = compare(ref * scale, (ref + err) * scale)
        assert metrics.max_rel == pytest.approx(np.abs(err).max() / np.abs(ref).max(), rel=1e-3)
        assert tolerance.failures("photos", metrics) == []
    bad = compare(ref, ref + err * 100)
    assert "of the largest reference value, above 0.0001" in tolerance.failures("photos", bad)[0]


def test_reference_spread():
    rng = np.random.default_rng(0)
    constant = np.tile(rng.normal(size=(1, 10)), (5, 1)) + rng.normal(size=(5, 10)) * 1e-4
    assert reference_spread({"photos": constant}).degenerate
    varied = rng.normal(size=(5, 10))
    spread = reference_spread({"photos": varied[:3], "random": varied[3:]})
    assert spread.inputs == 5 and not spread.degenerate
    one_class = varied.copy()
    one_class[:, 3] = 100  # varies a lot, but every input gets class 3: agreement is free
    assert reference_spread({"photos": one_class}).degenerate


def _png16(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit PNG (grey or RGB) written by hand: PIL cannot write 16-bit RGB."""
    import struct

    height, width = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 16, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 3])
def test_16_bit_png_reads_like_its_8_bit_version(tmp_path, channels):
    with Image.open(sample_image_paths()[1]) as photo:
        rgb = np.asarray(photo.convert("RGB"))
    eight = rgb[..., 0] if channels == 1 else rgb
    _png16(tmp_path / "deep.png", eight.astype(np.uint16) * 257)
    Image.fromarray(eight).save(tmp_path / "flat.png")
    deep = read_image(tmp_path / "deep.png", 64, 64)
    flat = read_image(tmp_path / "flat.png", 64, 64)
    assert deep is not None and np.abs(deep - flat).max() <= 1 / 255 + 1e-6
    assert 0.1 < deep.mean() < 0.9  # not the all-white image PIL's own convert gives


def test_float_image_mode_is_scaled():
    grey = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    x = preprocess(Image.fromarray(grey, mode="F"), 32, 32)
    assert 0.3 < x.mean() < 0.7


# ---------------------------------------------------------------- right passes, wrong fails


def _tamper_onnx(path: Path, out: Path, factor: float = 1.01) -> str:
    """Scale the largest convolution weight by `factor`: a wrong artifact with valid shapes."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    conv_weights = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    init = max((i for i in model.graph.initializer if i.name in conv_weights),
               key=lambda i: int(np.prod(i.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor),
                                          init.name))
    onnx.save(model, str(out))
    return init.name


def _revalidate(artifact: Path, model: torch.nn.Module, prep, height: int, width: int):
    x, _, _ = load_images(sample_image_paths(), height, width, prep)
    with torch.no_grad():
        reference = model(torch.from_numpy(x)).numpy()
    return validate("onnx", artifact, inputs={"photos": x}, references={"photos": reference},
                    precision="fp32", input_shape=[1, 3, height, width],
                    output_shape=[1, model.num_classes], batch=1,
                    tolerance=Tolerance(max_rel=1e-4))


@pytest.mark.slow
@pytest.mark.parametrize("name", [  # XS and S: the same check on wider layers (CI time)
    extended(n) if n != "mobilevit_xxs" else n
    for n in list_models("v1")] + ["fixture"])
def test_right_export_passes_and_a_wrong_weight_fails(name, tmp_path):
    if name == "fixture":
        weights, model_name, resolution = str(checkpoint_dir()), "mobilevit_xxs", 64
    else:
        weights = str(save_checkpoint(create_model(name), tmp_path / "w.safetensors"))
        model_name, resolution = name, 96
    assert run(["export", "-m", model_name, "-w", weights, "-r", str(resolution), "-f", "onnx",
                "-o", str(tmp_path / "out")]) == 0
    manifest = json.loads((tmp_path / "out" / "onnx" / "manifest.json").read_text())
    assert manifest["validated"] and not manifest["degenerate"]
    artifact = tmp_path / "out" / "onnx" / manifest["artifact"]["file"]
    model = create_model(model_name, weights=weights)
    from mvdeploy.readback.predict import artifact_preprocessing

    prep = artifact_preprocessing(manifest)
    assert _revalidate(artifact, model, prep, resolution, resolution).passed
    _tamper_onnx(artifact, tmp_path / "wrong.onnx")
    report = _revalidate(tmp_path / "wrong.onnx", model, prep, resolution, resolution)
    assert not report.passed and "of the largest reference value" in report.failures[0]


@pytest.mark.slow
def test_degenerate_reference_is_flagged(tmp_path, capfd):
    weights = save_checkpoint(create_model("mobilevit_xxs", init="random"),
                              tmp_path / "flat.safetensors")
    assert run(["export", "-w", str(weights), "-r", "64", "-f", "onnx",
                "-o", str(tmp_path / "out")]) == 0
    captured = capfd.readouterr()
    assert captured.err.count("fidelity metrics are not meaningful") == 1
    assert " n/a " in captured.out  # agreement columns
    manifest = json.loads((tmp_path / "out" / "onnx" / "manifest.json").read_text())
    assert manifest["degenerate"] is True
    assert manifest["validation"]["reference"]["top1_classes"] == 1
    assert manifest["validation"]["warnings"] == [
        "the reference model gives nearly the same output for every input: fidelity metrics "
        "are not meaningful"]

"""DeepLabV3 on MobileViT v1 and v2 (issue 25, item 2): the network equals transformers'
MobileViTForSemanticSegmentation / MobileViTV2ForSemanticSegmentation, built from configs (no
download) with every tensor perturbed and BatchNorm statistics from real photos, so that a
mis-mapped key or a wrong dilation cannot go unnoticed."""

from __future__ import annotations

import json

import pytest
import torch

from mvdeploy.data import load_images, sample_image_paths
from mvdeploy.errors import CheckpointError
from mvdeploy.models import create_model
from mvdeploy.models.deeplab import DeepLabV3
from mvdeploy.models.variants import ALL_CFGS, SEG_CFGS
from mvdeploy.models.weights import load_pretrained, save_checkpoint
from tests.helpers import input_sensitive_

transformers = pytest.importorskip("transformers")

V1_SEG = ("deeplabv3_mobilevit_xxs", "deeplabv3_mobilevit_xs", "deeplabv3_mobilevit_s")
V2_SEG = tuple(name for name in SEG_CFGS if name not in V1_SEG)
# the fast suite compares one v1 and one v2 width on photos; the others (5-9 s each) are slow
FAST_PARITY = {"deeplabv3_mobilevit_xxs", "deeplabv3_mobilevitv2_050"}


def transformers_seg(name: str, output_stride: int | None = None):
    """transformers' model for `name`, configured as the published checkpoint is."""
    cfg = SEG_CFGS[name]
    backbone = ALL_CFGS[cfg.backbone]
    common = {"num_labels": cfg.num_classes, "output_stride": output_stride or cfg.output_stride,
              "atrous_rates": list(cfg.atrous_rates), "aspp_out_channels": cfg.aspp_channels,
              "id2label": {i: f"class_{i}" for i in range(cfg.num_classes)}}
    if backbone.family == "v2":
        config = transformers.MobileViTV2Config(width_multiplier=backbone.width, **common)
        return transformers.MobileViTV2ForSemanticSegmentation(config).eval()
    config = transformers.MobileViTConfig(
        hidden_sizes=list(backbone.hidden_sizes), neck_hidden_sizes=list(backbone.channels),
        expand_ratio=backbone.expand_ratio, **common)
    return transformers.MobileViTForSemanticSegmentation(config).eval()


def hf_seg_folder(tmp_path, name: str, seed: int = 0, output_stride: int | None = None):
    hf = transformers_seg(name, output_stride)
    input_sensitive_(hf, hf.segmentation_head.classifier.convolution, seed=seed,
                     forward=lambda m, x: m(x).logits)
    directory = tmp_path / f"hf_{name}_{output_stride}"
    hf.save_pretrained(directory)
    return hf.eval(), directory


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", list(SEG_CFGS))
def test_parameter_counts_equal_transformers(name):
    assert _count(DeepLabV3(SEG_CFGS[name])) == _count(transformers_seg(name))


@pytest.mark.parametrize("name", [n if n in FAST_PARITY else pytest.param(n, marks=pytest.mark.slow)
                                  for n in SEG_CFGS])
def test_logits_equal_transformers_on_real_photos(tmp_path, name):
    hf, directory = hf_seg_folder(tmp_path, name, seed=list(SEG_CFGS).index(name))
    model = load_pretrained(directory)
    assert isinstance(model, DeepLabV3) and model.cfg.name == name
    assert model.class_labels[:2] == ["class_0", "class_1"]
    x = torch.from_numpy(load_images(sample_image_paths()[:3], 128, 128)[0])
    with torch.no_grad():
        expected, got = hf(x).logits, model(x)
    assert got.shape == (3, 21, 8, 8)  # output stride 16
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    # the reference is not constant: the masks differ from photo to photo and use classes
    masks = expected.argmax(1)
    assert len({tuple(m.flatten().tolist()) for m in masks}) == 3
    assert len(masks.unique()) >= 3


@pytest.mark.parametrize("output_stride", [8, 32])
def test_other_output_strides_equal_transformers(tmp_path, output_stride):
    """Stride 8 dilates stage 5's depthwise conv (rate 2) and unstrides stage 4; 32 is the
    classifier's layout."""
    name = "deeplabv3_mobilevit_xxs"
    hf, directory = hf_seg_folder(tmp_path, name, seed=3, output_stride=output_stride)
    model = load_pretrained(directory)
    assert model.output_stride == output_stride
    x = torch.from_numpy(load_images(sample_image_paths()[:2], 128, 128)[0])
    with torch.no_grad():
        expected, got = hf(x).logits, model(x)
    assert got.shape[-1] == 128 // output_stride
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_seeded_segmentation_model_by_name_and_graph_forms():
    model = create_model("deeplabv3_mobilevit_xxs", num_classes=5)
    x = torch.from_numpy(load_images(sample_image_paths()[:2], 64, 64)[0])
    with torch.no_grad():
        plain = model(x)
        from mvdeploy.models.mobilevit import GraphForm

        model.set_form(GraphForm(fold="rank4", tokens="3d"))
        assert torch.allclose(model(x), plain, atol=1e-5 * plain.abs().max())
    assert plain.shape == (2, 5, 4, 4)


def test_checkpoints_that_do_not_fit_say_so_in_one_line(tmp_path):
    _, directory = hf_seg_folder(tmp_path, "deeplabv3_mobilevit_xxs")
    conf = json.loads((directory / "config.json").read_text())
    bad = tmp_path / "bad_stride"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes((directory / "model.safetensors").read_bytes())
    (bad / "config.json").write_text(json.dumps({**conf, "output_stride": 4}))
    with pytest.raises(CheckpointError, match=r"output_stride=4 is not supported"):
        load_pretrained(bad)
    # a classifier's config.json beside a segmentation model's weights
    (bad / "config.json").write_text(json.dumps({**conf, "architectures": [
        "MobileViTForImageClassification"], "output_stride": 32}))
    with pytest.raises(CheckpointError, match="weights are a segmentation model's"):
        load_pretrained(bad)
    model = load_pretrained(directory)
    bare = save_checkpoint(model, tmp_path / "seg.safetensors")
    with pytest.raises(CheckpointError, match="bare DeepLabV3 state dict"):
        load_pretrained(bare)

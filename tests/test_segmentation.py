"""DeepLabV3 on MobileViT v1 and v2 (issue 25, item 2): the network equals transformers'
MobileViTForSemanticSegmentation / MobileViTV2ForSemanticSegmentation, built from configs (no
download) with every tensor perturbed and BatchNorm statistics from real photos, so that a
mis-mapped key or a wrong dilation cannot go unnoticed."""

from __future__ import annotations

import json

import numpy as np
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
    bare = save_checkpoint(model, tmp_path / "seg.safetensors")  # mvdeploy's names: no config
    with pytest.raises(CheckpointError, match="bare DeepLabV3 state dict"):
        load_pretrained(bare)


# ---------------------------------------------------------------- the segmentation task


def _seg_scores(model, count: int = 3):
    x = torch.from_numpy(load_images(sample_image_paths()[:count], 128, 128)[0])
    with torch.no_grad():
        return model(x).numpy()


def test_compare_reads_agreement_per_pixel_and_can_fail(tmp_path):
    from mvdeploy.tasks import segmentation

    hf, directory = hf_seg_folder(tmp_path, "deeplabv3_mobilevit_xxs", seed=1)
    model = load_pretrained(directory)
    reference = _seg_scores(model)
    assert not segmentation.one_class_everywhere(reference)  # the guard does not fire
    same = segmentation.compare(reference, _seg_scores(hf_logits(hf)))
    assert same.samples == 3 and same.top1_agreement > 0.999 and same.mask_miou > 0.99
    assert same.snr_db > 100
    with torch.no_grad():  # one wrong weight: the masks move, and the metrics say so
        model.aspp.fuse.conv.weight[:, :64].mul_(-1)
    wrong = segmentation.compare(reference, _seg_scores(model))
    assert wrong.snr_db < 20 and wrong.top1_agreement < 0.9 and wrong.mask_miou < 0.8


def hf_logits(hf):
    return lambda x: hf(x).logits


def test_a_model_that_predicts_one_class_everywhere_is_flagged():
    from mvdeploy.tasks import segmentation

    scores = np.zeros((2, 21, 8, 8), dtype=np.float32)
    scores[:, 4] = 1.0
    assert segmentation.one_class_everywhere(scores)
    scores[1, 7, 3, 3] = 5.0
    assert not segmentation.one_class_everywhere(scores)


def test_confusion_matrix_miou_skips_void():
    from mvdeploy.tasks.segmentation import VOID, ConfusionMatrix

    truth = np.array([[0, 0, 1, 1], [2, 2, VOID, VOID]], dtype=np.uint8)
    predicted = np.array([[0, 1, 1, 1], [2, 0, 2, 2]], dtype=np.uint8)
    confusion = ConfusionMatrix(3)
    confusion.update(predicted, truth)
    # class 0: 1 hit, union 3; class 1: 2 hits, union 3; class 2: 1 hit, union 2
    assert np.allclose(confusion.iou(), [1 / 3, 2 / 3, 1 / 2])
    assert np.isclose(confusion.miou(), (1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert confusion.pixel_accuracy() == 4 / 6
    with pytest.raises(ValueError, match="holds class 3"):
        confusion.update(np.zeros((1, 1), np.uint8), np.full((1, 1), 3, np.uint8))


def test_voc_layout_is_read_and_a_wrong_one_said_in_one_line(tmp_path):
    import shutil

    from mvdeploy.errors import ConfigError
    from mvdeploy.tasks.segmentation import colour_mask, read_mask, voc_pairs

    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for i, photo in enumerate(sample_image_paths()[:2]):
        shutil.copy(photo, root / "JPEGImages" / f"im{i}.jpg")
        mask = np.full((16, 24), i + 1, dtype=np.uint8)
        mask[0] = 255  # a void border row
        colour_mask(mask).save(root / "SegmentationClass" / f"im{i}.png")
    pairs = voc_pairs(root)
    assert [p[0].name for p in pairs] == ["im0.jpg", "im1.jpg"]
    read = read_mask(pairs[1][1])
    assert read[0, 0] == 255 and read[5, 5] == 2  # indices survive the palette PNG
    from PIL import Image

    with Image.open(pairs[0][1]) as image:  # VOC's colours: class 1 is dark red
        assert image.convert("RGB").getpixel((3, 3)) == (128, 0, 0)
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("im1\nmissing\n")
    with pytest.raises(ConfigError, match=r"lack a photo or a mask, e.g. 'missing'"):
        voc_pairs(root)
    with pytest.raises(ConfigError, match="not a PASCAL VOC-layout folder"):
        voc_pairs(root / "JPEGImages")

"""MobileViTv2 is transformers' MobileViTV2ForImageClassification, width for width: the same
parameter count, and the same logits on real photos from input-sensitive weights; it loads from
Hugging Face folders and hub ids, and exports to every format (the issue's done-when)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mvdeploy.cli import run
from mvdeploy.data import load_images, sample_image_paths
from mvdeploy.errors import CheckpointError, ConfigError
from mvdeploy.models import create_model
from mvdeploy.models.groups import node_group
from mvdeploy.models.mobilevit_v2 import (
    V2_FORM,
    GroupNorm1,
    MobileViTV2,
    fold_v2,
    get_v2_cfg,
    unfold_v2,
)
from mvdeploy.models.variants import V2_CFGS
from mvdeploy.models.weights import (
    export_state_dict,
    load_pretrained,
    remap_state_dict,
    save_checkpoint,
)
from tests.helpers import (
    APPLE_V2_PREPROCESSOR,
    export_hub_id_to_every_format,
    input_sensitive_,
    lay_out_hub_cache,
    needs,
    recorded_timm_state,
)

transformers = pytest.importorskip("transformers")

# the seven widths, and the parameter counts transformers' classifier has for each (1000 classes)
PARAMETERS = {"mobilevitv2_050": 1_370_593, "mobilevitv2_075": 2_866_009,
              "mobilevitv2_100": 4_901_841, "mobilevitv2_125": 7_478_089,
              "mobilevitv2_150": 10_594_753, "mobilevitv2_175": 14_251_833,
              "mobilevitv2_200": 18_449_329}


def _transformers_model(name: str):
    config = transformers.MobileViTV2Config(width_multiplier=V2_CFGS[name].width,
                                            num_labels=1000)
    return transformers.MobileViTV2ForImageClassification(config).eval()


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_seven_widths_have_transformers_parameter_counts():
    assert list(V2_CFGS) == list(PARAMETERS)
    for name, expected in PARAMETERS.items():
        assert _count(MobileViTV2(get_v2_cfg(name))) == expected
        assert _count(_transformers_model(name)) == expected


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n != "mobilevitv2_050" else n
                                  for n in V2_CFGS])
def test_logits_equal_transformers_on_real_photos(name):
    hf = _transformers_model(name)
    input_sensitive_(hf, hf.classifier, seed=1, forward=lambda m, x: m(x).logits)
    ours = MobileViTV2(get_v2_cfg(name)).eval()
    ours.load_state_dict(remap_state_dict(hf.state_dict(), ours, "huggingface"))
    x = torch.from_numpy(load_images(sample_image_paths(), 256, 256)[0])
    with torch.no_grad():
        expected, got = hf(x).logits, ours(x)
    # the weights tell the photos apart, so agreement is not that of two constants
    assert len(set(expected.argmax(1).tolist())) >= 3 and float(expected.std(0).mean()) > 0.1
    relative = float((got - expected).abs().max() / expected.abs().max())
    assert relative <= 1e-5, relative  # in fact 0: the same ops in the same order
    # and back: our weights under transformers' names load into transformers unchanged
    again = _transformers_model(name)
    again.load_state_dict(export_state_dict(ours, "huggingface"))
    with torch.no_grad():
        assert torch.equal(again(x).logits, expected)


@pytest.mark.parametrize("patch", [(2, 2), (2, 4), (4, 2), (8, 8)])
def test_unfold_orders_tokens_as_torch_unfold_and_fold_inverts_it(patch):
    x = torch.randn(2, 5, 16, 32)
    ph, pw = patch
    expected = F.unfold(x, kernel_size=patch, stride=patch).reshape(2, 5, ph * pw, -1)
    tokens = unfold_v2(x, ph, pw)
    assert torch.equal(tokens, expected)
    assert torch.equal(fold_v2(tokens, ph, pw, 16, 32), x)
    folded = F.fold(expected.reshape(2, 5 * ph * pw, -1), (16, 32), patch, stride=patch)
    assert torch.equal(folded, x)


def test_an_unknown_v2_width_is_one_line_naming_the_seven():
    with pytest.raises(ConfigError, match="mobilevitv2_050, mobilevitv2_075"):
        get_v2_cfg("mobilevitv2_300")


def test_a_patch_that_does_not_divide_the_map_is_resized_as_in_v1():
    model = MobileViTV2(get_v2_cfg("mobilevitv2_050"), patch_sizes=((3, 3), (2, 2), (2, 2)))
    with torch.no_grad():
        out = model.eval()(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 1000) and np.isfinite(out.numpy()).all()


def test_group_norm_written_out_equals_torch_group_norm():
    """The export form's GroupNorm (two means) is torch's group_norm to float rounding; the
    eager default is torch's own."""
    norm = GroupNorm1(24, eps=1e-5)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
        x = torch.randn(3, 24, 4, 50) * 3 + 1
        expected = F.group_norm(x, 1, norm.weight, norm.bias, 1e-5)
        assert torch.equal(norm(x), expected)
        norm.means = True
        assert torch.allclose(norm(x), expected, atol=1e-5, rtol=1e-5)


def test_export_form_agrees_with_eager_to_float_rounding():
    model = create_model("mobilevitv2_050")
    x = torch.from_numpy(load_images(sample_image_paths(), 64, 64)[0])
    with torch.no_grad():
        eager = model(x)
        model.set_form(V2_FORM)
        exported = model(x)
    assert 0 < float((exported - eager).abs().max() / eager.abs().max()) <= 5e-5
    with pytest.raises(ConfigError, match="rank-4 fold only"):
        model.set_form(V2_FORM.with_fold("nhwc"))


def test_seeded_v2_tells_photos_apart():
    x = torch.from_numpy(load_images(sample_image_paths(), 256, 256)[0])
    with torch.no_grad():
        logits = create_model("mobilevitv2_050")(x)
    assert len(set(logits.argmax(1).tolist())) >= 4 and float(logits.std(0).mean()) > 0.3


def test_v2_layer_groups_come_from_the_graph():
    """The float-group search switches v2's parts by the module stack torch.export records."""
    from mvdeploy.backends.capture import capture

    model = create_model("mobilevitv2_050", init="random", form=V2_FORM)
    program = capture(model, torch.rand(1, 3, 64, 64)).program
    groups = {node_group(n) for n in program.graph.nodes if n.op == "call_function"}
    assert {"stem", "stages.0.0", "stages.2.1.local", "stages.2.1.transformer.0.attn",
            "stages.2.1.transformer.1.mlp", "stages.4.1.fusion", "classifier"} <= groups
    assert not any(g and g.startswith("head_conv") for g in groups)


def test_v2_fold_option_is_refused_in_one_line(capsys, tmp_path):
    assert run(["export", "-m", "mobilevitv2_050", "--fold", "nhwc", "-f", "onnx",
                "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "one graph form" in err and "--fold" in err


def _hf_v2_folder(tmp_path, name: str = "mobilevitv2_100", seed: int = 5):
    hf = _transformers_model(name)
    hf.config.id2label = {i: f"class_{i}" for i in range(1000)}
    input_sensitive_(hf, hf.classifier, seed=seed, forward=lambda m, x: m(x).logits)
    directory = tmp_path / f"hf_{name}"
    hf.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps(APPLE_V2_PREPROCESSOR))
    return hf.eval(), directory


def test_v2_checkpoints_load_from_folders_and_bare_files(tmp_path):
    hf, directory = _hf_v2_folder(tmp_path, "mobilevitv2_050", seed=2)
    model = load_pretrained(directory)
    assert model.cfg.name == "mobilevitv2_050" and model.class_labels[3] == "class_3"
    assert model.preprocessing.channel_order == "BGR" and model.preprocessing.crop_pct < 1
    x = torch.from_numpy(load_images(sample_image_paths()[:2], 64, 64)[0])
    with torch.no_grad():
        assert torch.equal(model(x), hf(x).logits)
        save_checkpoint(model, tmp_path / "v2.safetensors")  # mvdeploy's names, no config
        bare = load_pretrained(tmp_path / "v2.safetensors")
        assert bare.cfg.name == "mobilevitv2_050" and torch.equal(bare(x), model(x))
    with pytest.raises(ConfigError, match="holds mobilevitv2_050, not mobilevitv2_100"):
        create_model("mobilevitv2_100", weights=str(directory))


@pytest.mark.parametrize(("change", "match"), [
    ({"width_multiplier": 0.6}, "width_multiplier=0.6 is none of the published widths"),
    ({"n_attn_blocks": [2, 2, 2]}, r"n_attn_blocks=\[2, 2, 2\] is not supported"),
])
def test_unsupported_v2_config_is_one_line(tmp_path, change, match):
    _, directory = _hf_v2_folder(tmp_path, "mobilevitv2_050", seed=2)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **change}))
    with pytest.raises(CheckpointError, match=match):
        load_pretrained(directory)


@pytest.mark.slow
@needs("tflite", "coreml", "executorch")
def test_export_v2_hub_id_to_every_format_reproduces_transformers(tmp_path):
    """The done-when: `mvdeploy export --model mobilevitv2_100 --weights
    apple/mobilevitv2-1.0-imagenet1k-256` from a laid-out hub cache, offline, validates for
    ONNX, TFLite, Core ML (reference executor) and ExecuTorch; the ONNX file then gives
    transformers' logits on transformers' own processor output (the checkpoint's library).

    Core ML is checked at fp32: fp16 misses the 40 dB gate on these weights (about 31 dB), and
    PyTorch's own fp16 forward of the same model loses as much (about 30 dB): the model's
    sensitivity to fp16, not the converter's (docs/model.md)."""
    from PIL import Image
    from transformers import MobileViTImageProcessor

    hf, directory = _hf_v2_folder(tmp_path)
    cache = tmp_path / "hub"
    repo = "apple/mobilevitv2-1.0-imagenet1k-256"
    lay_out_hub_cache(cache, repo, {n: directory / n for n in (
        "config.json", "model.safetensors", "preprocessor_config.json")})
    report = export_hub_id_to_every_format("mobilevitv2_100", repo, cache, tmp_path / "out")

    processor = MobileViTImageProcessor.from_pretrained(repo, cache_dir=cache,
                                                        local_files_only=True)
    photos = [Image.open(p).convert("RGB") for p in sample_image_paths()]
    pixels = processor(photos, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = hf(pixel_values=pixels).logits.numpy()
    assert len(set(expected.argmax(1).tolist())) >= 3  # the reference tells photos apart
    import onnxruntime as ort

    session = ort.InferenceSession(report["onnx"]["artifact"])
    logits = np.concatenate([session.run(["logits"], {"pixel_values": x[None]})[0]
                             for x in pixels.numpy()])
    assert np.abs(logits - expected).max() <= 1e-4 * max(1.0, np.abs(expected).max())


def test_v2_hugging_face_folder_and_bench_peer_are_transformers_own_model(tmp_path):
    """save_pretrained writes a folder transformers loads as MobileViTV2 with our logits, and
    the bench's peer is transformers' MobileViTV2 holding the same weights."""
    from mvdeploy.bench.peer import transformers_model
    from mvdeploy.models.weights import save_pretrained

    hf, directory = _hf_v2_folder(tmp_path, "mobilevitv2_050", seed=4)
    model = load_pretrained(directory)
    written = save_pretrained(model, tmp_path / "written", resolution=(256, 256),
                              preprocessing=model.preprocessing)
    again = transformers.MobileViTV2ForImageClassification.from_pretrained(written).eval()
    peer = transformers_model("mobilevitv2_050", str(directory))
    x = torch.from_numpy(load_images(sample_image_paths()[:2], 64, 64)[0])
    with torch.no_grad():
        expected = hf(x).logits
        assert torch.equal(again(x).logits, expected) and torch.equal(peer(x), expected)
    assert load_pretrained(written).cfg.name == "mobilevitv2_050"
    with pytest.raises(ConfigError, match="holds 2x2 patches only"):
        save_pretrained(create_model("mobilevitv2_050", patch_sizes="B"), tmp_path / "b",
                        resolution=(256, 256))


TIMM_V2_REFERENCE = Path(__file__).with_name("data") / "timm_mobilevitv2_050.npz"


def test_timm_v2_state_dict_loads_with_timm_logits(tmp_path):
    """A timm MobileViTv2 state dict (tests/data/record_timm_reference.py: timm 1.0.31's
    own key list and logits) is recognised as timm's v2, gets timm's v2 preprocessing (RGB,
    bicubic, crop_pct 0.888) and gives timm's logits on real photos; a timm hub folder
    (config.json with pretrained_cfg) names the width."""
    from safetensors.torch import save_file

    from mvdeploy.models.weights import TIMM_PREPROCESSING, detect_source

    state, expected = recorded_timm_state(TIMM_V2_REFERENCE, seed=4)
    assert detect_source(state, "x") == "timm"
    save_file(state, str(tmp_path / "timm.safetensors"))
    model = load_pretrained(tmp_path / "timm.safetensors")
    assert model.cfg.name == "mobilevitv2_050" and model.checkpoint["source"] == "timm"
    assert model.preprocessing == TIMM_PREPROCESSING["v2"]
    x, _, _ = load_images(sample_image_paths(), 256, 256, model.preprocessing)
    with torch.no_grad():
        ours = model(torch.from_numpy(x)).numpy()
    assert len(set(expected.argmax(1).tolist())) >= 3  # the reference tells photos apart
    assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()

    folder = tmp_path / "timm_hub"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architecture": "mobilevitv2_050", "num_classes": 10, "pretrained_cfg": {
            "crop_pct": 0.888, "interpolation": "bicubic", "mean": [0, 0, 0], "std": [1, 1, 1]}}))
    assert load_pretrained(folder).cfg.name == "mobilevitv2_050"


def _transformers_name(cvnets: str) -> str:
    """What transformers' models/mobilevitv2/convert_mlcvnets_to_pytorch.py
    (create_rename_keys) renames an ml-cvnets MobileViTv2 key to: its steps, in its order, as
    an independent oracle for mvdeploy's ml-cvnets names."""
    k = cvnets.replace(".block.", ".").replace(".conv.", ".convolution.")
    k = k.replace(".norm.", ".normalization.").replace("conv_1.", "mobilevitv2.conv_stem.")
    for i in (1, 2):
        k = k.replace(f"layer_{i}.", f"mobilevitv2.encoder.layer.{i - 1}.layer.")
    k = k.replace(".exp_1x1.", ".expand_1x1.").replace(".red_1x1.", ".reduce_1x1.")
    for i, depth in ((3, 2), (4, 4), (5, 3)):
        prefix = f"mobilevitv2.encoder.layer.{i - 1}."
        k = k.replace(f"layer_{i}.0.", f"{prefix}downsampling_layer.")
        k = k.replace(f"layer_{i}.1.local_rep.0.", f"{prefix}conv_kxk.")
        k = k.replace(f"layer_{i}.1.local_rep.1.", f"{prefix}conv_1x1.")
        for j in range(depth):
            k = k.replace(f"layer_{i}.1.global_rep.{j}.", f"{prefix}transformer.layer.{j}.")
        k = k.replace(f"layer_{i}.1.global_rep.{depth}.", f"{prefix}layernorm.")
        k = k.replace(f"layer_{i}.1.conv_proj.", f"{prefix}conv_projection.")
    for old, new in (("pre_norm_attn.0.", "layernorm_before."), ("pre_norm_attn.1.", "attention."),
                     ("pre_norm_ffn.0.", "layernorm_after."), ("pre_norm_ffn.1.", "ffn.conv1."),
                     ("pre_norm_ffn.3.", "ffn.conv2."), ("classifier.1.", "classifier."),
                     ("seg_head.", "segmentation_head."), (".aspp_layer.", "."),
                     (".aspp_pool.", ".")):
        k = k.replace(old, new)
    return k


def test_mlcvnets_v2_names_are_what_transformers_converter_reads(tmp_path):
    """Every v2 key in ml-cvnets' names goes, through transformers' own conversion steps, to
    the transformers name mvdeploy maps it to (which test_logits_equal_transformers proves);
    and an ml-cvnets-named .pt loads as the same model."""
    from mvdeploy.models.weights import foreign_keys, save_checkpoint

    model = create_model("mobilevitv2_050")
    depths = V2_CFGS["mobilevitv2_050"].depths
    for key in model.state_dict():
        (cvnets,) = foreign_keys(key, "mlcvnets", depths, "v2")
        (hf,) = foreign_keys(key, "huggingface", depths, "v2")
        assert _transformers_name(cvnets) == hf, (key, cvnets)
    path = save_checkpoint(model, tmp_path / "mobilevitv2-0.5.pt", source="mlcvnets")
    loaded = load_pretrained(path)
    assert loaded.cfg.name == "mobilevitv2_050" and loaded.checkpoint["source"] == "mlcvnets"
    x = torch.from_numpy(load_images(sample_image_paths()[:2], 256, 256)[0])
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

"""Weight import: parity with transformers, ml-cvnets key names, strict and clear failures."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from mvdeploy.errors import CheckpointError, ConfigError
from mvdeploy.models import create_model, list_models
from mvdeploy.models.weights import export_state_dict, load_pretrained, save_checkpoint


def _max_diff(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        ya = a(pixel_values=x).logits if hasattr(a, "config") else a(x)
        yb = b(x)
    assert ya.std() > 0.05, "logits too flat for the comparison to mean anything"
    # relative to the largest logit: float rounding, not a mapping error (those are ~1e-1)
    return (ya - yb).abs().max().item() / max(1.0, ya.abs().max().item())


@pytest.mark.parametrize("name", list_models("v1"))
@pytest.mark.parametrize("batch", [1, 2])
def test_huggingface_parity(hf_checkpoint, name, batch):
    hf, directory = hf_checkpoint(name)
    ours = create_model(name, weights=str(directory))
    assert ours.num_classes == 1000
    assert ours.class_labels[:2] == ["class_0", "class_1"]
    x = torch.randn(batch, 3, 256, 256, generator=torch.Generator().manual_seed(batch))
    assert _max_diff(hf, ours, x) <= 1e-5


@pytest.mark.parametrize("resolution", [(224, 224), (320, 256)])
def test_huggingface_parity_when_feature_maps_are_resized(hf_checkpoint, resolution):
    hf, directory = hf_checkpoint("mobilevit_xxs")
    ours = load_pretrained(directory)
    assert _max_diff(hf, ours, torch.randn(1, 3, *resolution)) <= 1e-5


def test_pytorch_model_bin_directory(hf_checkpoint, tmp_path):
    hf, directory = hf_checkpoint("mobilevit_xxs")
    shutil.copy(directory / "config.json", tmp_path / "config.json")
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    assert _max_diff(hf, load_pretrained(tmp_path), torch.randn(1, 3, 256, 256)) <= 1e-5


# Names as ml-cvnets' modules produce them (ConvLayer.block.{conv,norm}, InvertedResidual.block,
# MobileViTBlock.{local_rep,global_rep,conv_proj,fusion}, TransformerEncoder.pre_norm_*).
MLCVNETS_KEYS = [
    "conv_1.block.conv.weight",
    "conv_1.block.norm.running_var",
    "layer_1.0.block.exp_1x1.block.conv.weight",
    "layer_2.2.block.red_1x1.block.norm.bias",
    "layer_3.0.block.conv_3x3.block.conv.weight",
    "layer_3.1.local_rep.conv_3x3.block.conv.weight",
    "layer_3.1.local_rep.conv_1x1.block.conv.weight",
    "layer_3.1.global_rep.0.pre_norm_mha.0.weight",
    "layer_3.1.global_rep.1.pre_norm_mha.1.qkv_proj.weight",
    "layer_3.1.global_rep.1.pre_norm_mha.1.out_proj.bias",
    "layer_3.1.global_rep.0.pre_norm_ffn.0.bias",
    "layer_3.1.global_rep.0.pre_norm_ffn.1.weight",
    "layer_3.1.global_rep.0.pre_norm_ffn.4.weight",
    "layer_3.1.global_rep.2.weight",
    "layer_4.1.global_rep.4.bias",
    "layer_5.1.global_rep.3.weight",
    "layer_5.1.conv_proj.block.conv.weight",
    "layer_5.1.fusion.block.norm.weight",
    "conv_1x1_exp.block.conv.weight",
    "classifier.fc.weight",
]


@pytest.mark.parametrize("name", list_models("v1"))
def test_mlcvnets_round_trip(hf_checkpoint, tmp_path, name):
    hf, directory = hf_checkpoint(name)
    state = export_state_dict(load_pretrained(directory), "mlcvnets")
    assert set(MLCVNETS_KEYS) <= set(state)
    assert state["layer_3.1.global_rep.0.pre_norm_mha.1.qkv_proj.weight"].shape[0] == (
        3 * state["layer_3.1.local_rep.conv_1x1.block.conv.weight"].shape[0]
    )
    path = tmp_path / f"{name}.pt"
    torch.save(state, path)
    ours = create_model(name, weights=str(path))
    assert ours.cfg.name == name and ours.class_labels is None
    assert _max_diff(hf, ours, torch.randn(2, 3, 256, 256)) <= 1e-5


def test_wrapped_training_checkpoint_with_module_prefix(hf_checkpoint, tmp_path):
    hf, directory = hf_checkpoint("mobilevit_xxs")
    state = export_state_dict(load_pretrained(directory), "mlcvnets")
    wrapped = {"epoch": 300, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(wrapped, tmp_path / "ckpt.pt")
    assert _max_diff(hf, load_pretrained(tmp_path / "ckpt.pt"), torch.randn(1, 3, 256, 256)) <= 1e-5


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_native_checkpoint_round_trip(hf_checkpoint, tmp_path, suffix):
    hf, directory = hf_checkpoint("mobilevit_xxs")
    path = save_checkpoint(load_pretrained(directory), tmp_path / f"w{suffix}")
    assert not list(tmp_path.glob("*.partial"))
    assert _max_diff(hf, load_pretrained(path), torch.randn(1, 3, 256, 256)) <= 1e-5


def test_checkpoint_without_batchnorm_counters_loads(hf_checkpoint, tmp_path):
    hf, directory = hf_checkpoint("mobilevit_xxs")
    state = export_state_dict(load_pretrained(directory), "mlcvnets")
    kept = {k: v for k, v in state.items() if "num_batches_tracked" not in k}
    torch.save(kept, tmp_path / "w.pt")
    assert _max_diff(hf, load_pretrained(tmp_path / "w.pt"), torch.randn(1, 3, 256, 256)) <= 1e-5


def test_class_count_comes_from_checkpoint(tmp_path):
    model = create_model("mobilevit_xxs", num_classes=37)
    save_checkpoint(model, tmp_path / "w.safetensors")
    assert create_model("mobilevit_xxs", weights=str(tmp_path / "w.safetensors")).num_classes == 37
    with pytest.raises(ConfigError, match="37 classes, not 1000"):
        create_model("mobilevit_xxs", weights=str(tmp_path / "w.safetensors"), num_classes=1000)


# ------------------------------------------------------------------ bad checkpoints


@pytest.fixture
def xxs_state():
    return export_state_dict(create_model("mobilevit_xxs"), "mlcvnets")


def _expect(path, match):
    with pytest.raises(CheckpointError, match=match) as info:
        load_pretrained(path)
    assert "\n" not in str(info.value)  # one line for the CLI


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.pt", "does not exist")


def test_corrupt_file(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"\x00garbage" * 100)
    _expect(tmp_path / "w.pt", "cannot read checkpoint")


def test_truncated_safetensors(tmp_path):
    save_checkpoint(create_model("mobilevit_xxs"), tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "w.safetensors").write_bytes(data[: len(data) // 2])
    _expect(tmp_path / "w.safetensors", "cannot read checkpoint")


def test_not_a_state_dict(tmp_path):
    torch.save([1, 2, 3], tmp_path / "w.pt")
    _expect(tmp_path / "w.pt", "state dict")


def test_whole_pickled_model_gets_the_state_dict_hint(tmp_path):
    torch.save(create_model("mobilevit_xxs", init="random"), tmp_path / "model.pt")
    _expect(tmp_path / "model.pt", r"torch.save\(model.state_dict\(\), path\)")


def test_a_checkpoint_given_as_model_name_points_to_weights():
    with pytest.raises(ConfigError, match="a checkpoint goes to --weights"):
        create_model("checkpoints/mobilevit_xxs.pt")


def test_foreign_model(tmp_path):
    torch.save(torch.nn.Linear(3, 3).state_dict(), tmp_path / "w.pt")
    _expect(tmp_path / "w.pt", "not a MobileViT checkpoint")


def test_missing_keys_are_listed(tmp_path, xxs_state):
    del xxs_state["layer_4.1.global_rep.2.pre_norm_ffn.4.weight"]
    del xxs_state["layer_3.1.fusion.block.norm.running_mean"]
    torch.save(xxs_state, tmp_path / "w.pt")
    _expect(tmp_path / "w.pt", r"2 missing: layer_3\.1\.fusion\.block\.norm\.running_mean, "
                               r"layer_4\.1\.global_rep\.2\.pre_norm_ffn\.4\.weight")


def test_unexpected_keys_are_listed(tmp_path, xxs_state):
    xxs_state["layer_3.1.extra.weight"] = torch.zeros(3)
    torch.save(xxs_state, tmp_path / "w.pt")
    _expect(tmp_path / "w.pt", r"1 unexpected: layer_3\.1\.extra\.weight")


def test_misshaped_keys_are_listed(tmp_path, xxs_state):
    xxs_state["layer_5.1.global_rep.0.pre_norm_ffn.1.weight"] = torch.zeros(10, 96)
    torch.save(xxs_state, tmp_path / "w.pt")
    _expect(tmp_path / "w.pt", r"1 wrong shape: .*pre_norm_ffn\.1\.weight \(10, 96\) \(expected")


def test_wrong_variant_for_requested_model(tmp_path):
    save_checkpoint(create_model("mobilevit_xs"), tmp_path / "xs.safetensors")
    with pytest.raises(ConfigError, match="holds mobilevit_xs, not mobilevit_xxs"):
        create_model("mobilevit_xxs", weights=str(tmp_path / "xs.safetensors"))


def test_directory_without_config(tmp_path):
    _expect(tmp_path, "no config.json")


def test_hf_directory_without_weights(hf_checkpoint, tmp_path):
    _, directory = hf_checkpoint("mobilevit_xxs")
    shutil.copy(directory / "config.json", tmp_path)
    _expect(tmp_path, "no model.safetensors or pytorch_model.bin")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"model_type": "vit"}, r"MobileViT \('mobilevit'\) and MobileViTv2"),
        ({"model_type": "mobilevitv2"}, "hidden_act='silu' is not supported"),
        ({"hidden_sizes": [10, 20, 30]}, "match none"),
        ({"num_attention_heads": 8}, "num_attention_heads=8 is not supported"),
        ({"expand_ratio": 4.0}, "expand_ratio"),
    ],
)
def test_unsupported_hf_config(hf_checkpoint, tmp_path, change, match):
    _, directory = hf_checkpoint("mobilevit_xxs")
    shutil.copytree(directory, tmp_path / "ckpt")
    conf = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    conf.update(change)
    (tmp_path / "ckpt" / "config.json").write_text(json.dumps(conf))
    _expect(tmp_path / "ckpt", match)


def test_broken_config_json(hf_checkpoint, tmp_path):
    _, directory = hf_checkpoint("mobilevit_xxs")
    shutil.copytree(directory, tmp_path / "ckpt")
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    _expect(tmp_path / "ckpt", "cannot read")


def _transformers_v1_name(cvnets: str) -> str:
    """What transformers' models/mobilevit/convert_mlcvnets_to_pytorch.py (rename_key, and
    convert_state_dict's split of qkv_proj) renames an ml-cvnets MobileViT v1 key to: its steps,
    in its order, as an independent oracle for mvdeploy's ml-cvnets names."""
    name = cvnets
    for i in range(1, 6):
        name = name.replace(f"layer_{i}.", f"encoder.layer.{i - 1}.")
    for old, new in (("conv_1.", "conv_stem."), (".block.", "."), ("exp_1x1", "expand_1x1"),
                     ("red_1x1", "reduce_1x1"), (".local_rep.conv_3x3.", ".conv_kxk."),
                     (".local_rep.conv_1x1.", ".conv_1x1."), (".norm.", ".normalization."),
                     (".conv.", ".convolution."), (".conv_proj.", ".conv_projection.")):
        name = name.replace(old, new)
    for i in range(0, 2):
        for j in range(0, 4):
            name = name.replace(f".{i}.{j}.", f".{i}.layer.{j}.")
    for i in range(2, 6):
        for j in range(0, 4):
            if f".{i}.{j}." in name:
                name = name.replace(f".{i}.{j}.", f".{i}.")
                for part in ("expand_1x1", "conv_3x3", "reduce_1x1"):
                    name = name.replace(part, f"downsampling_layer.{part}")
    for i in range(2, 5):
        for suffix in ("weight", "bias"):
            name = name.replace(f".global_rep.{i}.{suffix}", f".layernorm.{suffix}")
    for old, new in ((".global_rep.", ".transformer."), (".pre_norm_mha.0.", ".layernorm_before."),
                     (".pre_norm_mha.1.out_proj.", ".attention.output.dense."),
                     (".pre_norm_ffn.0.", ".layernorm_after."),
                     (".pre_norm_ffn.1.", ".intermediate.dense."),
                     (".pre_norm_ffn.4.", ".output.dense."),
                     (".transformer.", ".transformer.layer."), (".aspp_layer.", "."),
                     (".aspp_pool.", "."), ("seg_head.", "segmentation_head."),
                     ("segmentation_head.classifier.classifier.", "segmentation_head.classifier.")):
        name = name.replace(old, new)
    if "classifier.fc." in name:
        return name.replace("classifier.fc.", "classifier.")
    name = name if "segmentation_head." in name else "mobilevit." + name
    if ".pre_norm_mha.1.qkv_proj." in name:  # split into query, key, value
        head, _, tail = name.partition(".pre_norm_mha.1.qkv_proj.")
        return f"{head}.attention.attention.{{qkv}}.{tail}"
    return name


@pytest.mark.parametrize("name", ["deeplabv3_mobilevit_xxs", "deeplabv3_mobilevitv2_050"])
def test_mlcvnets_deeplabv3_names_are_what_transformers_converter_reads(name, tmp_path):
    """ml-cvnets' DeepLabV3 checkpoints: every key in ml-cvnets' names goes, through
    transformers' own conversion steps, to the transformers name mvdeploy maps it to (which the
    hub-id parity tests prove); and a bare .pt as ml-cvnets writes it (backbone under
    encoder., the older nested classifier, an auxiliary training head) loads as the same model,
    with the published output stride, rates and preprocessing."""
    from mvdeploy.models.network import build_network
    from mvdeploy.models.patches import PATCH_PRESETS
    from mvdeploy.models.variants import SEG_CFGS
    from mvdeploy.models.weights import foreign_keys
    from tests.test_mobilevit_v2 import _transformers_name

    # torch's default init is enough to tell the tensors apart (and 30 s cheaper for v2 than
    # create_model's input-sensitive seeding)
    model = build_network(SEG_CFGS[name], num_classes=21, patch_sizes=PATCH_PRESETS["A"]).eval()
    backbone = model.backbone_cfg
    for key in model.state_dict():
        (cvnets,) = foreign_keys(key, "mlcvnets", backbone.depths, backbone.family, "segmentation")
        hf = foreign_keys(key, "huggingface", backbone.depths, backbone.family, "segmentation")
        if backbone.family == "v2":
            assert [_transformers_name(cvnets)] == hf, (key, cvnets)
        else:
            oracle = _transformers_v1_name(cvnets)
            assert (oracle == hf[0] if len(hf) == 1 else
                    [oracle.replace("{qkv}", p) for p in ("query", "key", "value")] == hf), \
                (key, cvnets, oracle, hf)
    state = export_state_dict(model, "mlcvnets")
    as_written = {(k.replace("seg_head.classifier.", "seg_head.classifier.classifier.")
                   if k.startswith("seg_head.") else f"encoder.{k}"): v for k, v in state.items()}
    as_written["seg_head.aux_head.0.block.conv.weight"] = torch.zeros(2, 2, 1, 1)
    torch.save(as_written, tmp_path / f"{name}.pt")
    loaded = load_pretrained(tmp_path / f"{name}.pt")
    assert loaded.cfg == model.cfg and loaded.checkpoint["source"] == "mlcvnets"
    # what ml-cvnets' PASCAL VOC configs train with (deeplabv3_mobilevit.yaml and
    # deeplabv3_mobilevitv2.yaml): the file does not hold it
    assert (loaded.cfg.output_stride, loaded.cfg.atrous_rates) == (16, (6, 12, 18))
    assert loaded.preprocessing.shorter_side(512, 512) == 544
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

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

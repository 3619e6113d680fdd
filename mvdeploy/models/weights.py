"""Load MobileViT weights: Hugging Face Hub ids, Hugging Face or timm model directories,
ml-cvnets `.pt` files, timm or mvdeploy state dicts.

Every source goes through one key map (`foreign_keys`): our parameter name -> the source's
name(s). The map is total and strict: a missing, unexpected or mis-shaped tensor is an error
listing all of them, never a partial load. A checkpoint that says how its inputs were prepared
(preprocessor_config.json, timm's pretrained_cfg) brings that preprocessing along.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from mvdeploy.data import Preprocessing
from mvdeploy.errors import CheckpointError, ConfigError
from mvdeploy.models.hub import WEIGHT_FILES, download, looks_like_hub_id
from mvdeploy.models.mobilevit import (
    MODEL_CFGS,
    GraphForm,
    MobileViT,
    MobileViTCfg,
)
from mvdeploy.models.network import build_network
from mvdeploy.models.patches import PATCH_PRESETS, PatchSizes
from mvdeploy.models.variants import (
    OUTPUT_STRIDES,
    SEG_CFGS,
    V2_CFGS,
    DeepLabV3Cfg,
    ModelCfg,
)

Source = Literal["mvdeploy", "huggingface", "mlcvnets", "timm"]

# A key that only one source has, to recognise it. mvdeploy and timm share "stem.conv.weight",
# so neither may be recognised by it.
TELLTALE_KEYS: dict[Source, str] = {
    "mvdeploy": "head_conv.conv.weight",
    "huggingface": "mobilevit.conv_stem.convolution.weight",
    "mlcvnets": "conv_1.block.conv.weight",
    "timm": "final_conv.conv.weight",
}
# MobileViTv2 has no exp conv: transformers' v2 prefix, or (mvdeploy's own names) a final norm
# in a block without a fusion conv
V2_TELLTALE_KEYS: dict[Source, str] = {
    "huggingface": "mobilevitv2.conv_stem.convolution.weight",
    # timm's v2 attention is ml-cvnets' qkv_proj; asked before mvdeploy's, whose final-norm
    # key timm's v2 has too
    "timm": "stages.2.1.transformer.0.attn.qkv_proj.weight",
    "mlcvnets": "layer_3.1.global_rep.0.pre_norm_attn.1.qkv_proj.block.conv.weight",
    "mvdeploy": "stages.4.1.norm.weight",
}

_Rule = tuple[str, str | Callable[[re.Match], str]]

# Our names are regular, so each foreign name is a chain of substitutions on ours.
# Rules apply in order; each one sees the result of the previous ones.
def _hf_rules(prefix: str, transformer: list[_Rule]) -> list[_Rule]:
    """transformers' names for MobileViT v1 (`prefix` mobilevit) and v2 (mobilevitv2): the same
    stage layout, MV2 and block names and conv/norm leaves; `transformer` maps what differs
    (v1's exp conv and attention, v2's 1x1-conv attention and FFN)."""
    return [
        (r"^stem\.", f"{prefix}.conv_stem."),
        (r"^stages\.([01])\.(\d+)\.", rf"{prefix}.encoder.layer.\1.layer.\2."),
        (r"^stages\.([234])\.0\.", rf"{prefix}.encoder.layer.\1.downsampling_layer."),
        (r"^stages\.([234])\.1\.", rf"{prefix}.encoder.layer.\1."),
        (r"\.expand\.", ".expand_1x1."),
        (r"\.dw\.", ".conv_3x3."),
        (r"\.project\.", ".reduce_1x1."),
        (r"\.local_conv\.", ".conv_kxk."),
        (r"\.to_tokens\.", ".conv_1x1.convolution."),
        (r"\.from_tokens\.", ".conv_projection."),
        *transformer,
        (r"\.norm\.", ".layernorm."),
        (r"\.conv\.", ".convolution."),
        (r"\.bn\.", ".normalization."),
    ]


_HF_V1_LAYERS: list[_Rule] = [
    (r"^head_conv\.", "mobilevit.conv_1x1_exp."),
    (r"\.transformer\.(\d+)\.norm1\.", r".transformer.layer.\1.layernorm_before."),
    (r"\.transformer\.(\d+)\.attn\.proj\.", r".transformer.layer.\1.attention.output.dense."),
    (r"\.transformer\.(\d+)\.attn\.qkv\.", r".transformer.layer.\1.attention.attention.{qkv}."),
    (r"\.transformer\.(\d+)\.norm2\.", r".transformer.layer.\1.layernorm_after."),
    (r"\.transformer\.(\d+)\.mlp\.fc1\.", r".transformer.layer.\1.intermediate.dense."),
    (r"\.transformer\.(\d+)\.mlp\.fc2\.", r".transformer.layer.\1.output.dense."),
]
# MobileViTv2 (MobileViTV2ForImageClassification): the attention and FFN are 1x1 convs, and
# there is no exp conv and no fusion conv
_HF_V2_LAYERS: list[_Rule] = [
    (r"\.transformer\.(\d+)\.", r".transformer.layer.\1."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.attn\.qkv\.", ".attention.qkv_proj.convolution."),
    (r"\.attn\.proj\.", ".attention.out_proj.convolution."),
    (r"\.norm2\.", ".layernorm_after."),
    (r"\.mlp\.fc(\d)\.", r".ffn.conv\1.convolution."),
]
# DeepLabV3 (MobileViT(V2)ForSemanticSegmentation): the backbone's names as above, the head's
# under segmentation_head (our ASPP `fuse` is its `project`, which the MV2 rule would rename)
_HF_SEG_HEAD: list[_Rule] = [
    (r"^aspp\.fuse\.", "segmentation_head.aspp.project."),
    (r"^aspp\.", "segmentation_head.aspp."),
    (r"^classifier\.", "segmentation_head.classifier.convolution."),
]
_HF_RULES = _hf_rules("mobilevit", _HF_V1_LAYERS)
_HF_V2_RULES = _hf_rules("mobilevitv2", _HF_V2_LAYERS)
_HF_SEG_RULES = {"v1": _hf_rules("mobilevit", [*_HF_V1_LAYERS, *_HF_SEG_HEAD]),
                 "v2": _hf_rules("mobilevitv2", [*_HF_V2_LAYERS, *_HF_SEG_HEAD])}


# timm's mobilevit.py builds on byobnet.py: MV2 blocks are "bottle" blocks (conv1_1x1, conv2_kxk,
# conv3_1x1), the MobileViT block names follow ml-cvnets, the transformer is timm's ViT Block
# (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2: the same as ours).
_TIMM_RULES: list[_Rule] = [
    (r"\.expand\.", ".conv1_1x1."),
    (r"\.dw\.", ".conv2_kxk."),
    (r"\.project\.", ".conv3_1x1."),
    (r"\.local_conv\.", ".conv_kxk."),
    (r"\.to_tokens\.", ".conv_1x1."),
    (r"\.from_tokens\.", ".conv_proj."),
    (r"\.fusion\.", ".conv_fusion."),
    (r"^head_conv\.", "final_conv."),
    (r"^classifier\.", "head.fc."),
]

# timm's MobileViTv2 (mobilevit.py's MobileVitV2Block on byobnet): v1's names without the exp
# and fusion convs, and ml-cvnets' LinearSelfAttention (qkv_proj, out_proj: 1x1 convs as ours)
_TIMM_V2_RULES: list[_Rule] = [
    *_TIMM_RULES,
    (r"\.attn\.qkv\.", ".attn.qkv_proj."),
    (r"\.attn\.proj\.", ".attn.out_proj."),
]


# ml-cvnets' MobileViT blocks: v1's (mobilevit.py) and v2's (mobilevit_v2.py, as transformers'
# models/mobilevitv2/convert_mlcvnets_to_pytorch.py reads them: local_rep.0 / .1, pre_norm_attn /
# pre_norm_ffn over 1x1 ConvLayer2d blocks)
_MLCVNETS_BLOCKS: dict[str, list[_Rule]] = {
    "v1": [
        (r"^head_conv\.", "conv_1x1_exp.block."),
        (r"^classifier\.", "classifier.fc."),
        (r"\.local_conv\.", ".local_rep.conv_3x3.block."),
        (r"\.to_tokens\.", ".local_rep.conv_1x1.block.conv."),
        (r"\.transformer\.(\d+)\.", r".global_rep.\1."),
        (r"\.norm1\.", ".pre_norm_mha.0."),
        (r"\.attn\.qkv\.", ".pre_norm_mha.1.qkv_proj."),
        (r"\.attn\.proj\.", ".pre_norm_mha.1.out_proj."),
        (r"\.norm2\.", ".pre_norm_ffn.0."),
        (r"\.mlp\.fc1\.", ".pre_norm_ffn.1."),
        (r"\.mlp\.fc2\.", ".pre_norm_ffn.4."),
        (r"\.fusion\.", ".fusion.block."),
    ],
    "v2": [
        (r"^classifier\.", "classifier.1."),  # after its global pooling
        (r"\.local_conv\.", ".local_rep.0.block."),
        (r"\.to_tokens\.", ".local_rep.1.block.conv."),
        (r"\.transformer\.(\d+)\.", r".global_rep.\1."),
        (r"\.norm1\.", ".pre_norm_attn.0."),
        (r"\.attn\.qkv\.", ".pre_norm_attn.1.qkv_proj.block.conv."),
        (r"\.attn\.proj\.", ".pre_norm_attn.1.out_proj.block.conv."),
        (r"\.norm2\.", ".pre_norm_ffn.0."),
        (r"\.mlp\.fc1\.", ".pre_norm_ffn.1.block.conv."),
        (r"\.mlp\.fc2\.", ".pre_norm_ffn.3.block.conv."),
    ],
}


# ml-cvnets' DeepLabV3 head (cvnets/models/segmentation/heads/deeplabv3.py, modules/
# aspp_block.py): seg_head.aspp.aspp_layer holds ASPP's convs (the pooling branch inside its
# aspp_pool Sequential) and project; the classifier is a ConvLayer2d. transformers'
# convert_mlcvnets_to_pytorch.py (v1 and v2) maps these to segmentation_head.*
_MLCVNETS_SEG_HEAD: list[_Rule] = [
    (r"^aspp\.convs\.4\.conv_1x1\.", "seg_head.aspp.aspp_layer.convs.4.aspp_pool.conv_1x1.block."),
    (r"^aspp\.convs\.(\d)\.", r"seg_head.aspp.aspp_layer.convs.\1.block."),
    (r"^aspp\.fuse\.", "seg_head.aspp.aspp_layer.project.block."),
    (r"^classifier\.", "seg_head.classifier.block.conv."),
    (r"\.bn\.", ".norm."),
]


def _mlcvnets_rules(depths: tuple[int, int, int], family: str = "v1") -> list[_Rule]:
    # ml-cvnets keeps the block's final LayerNorm as global_rep[depth]: the index depends on depth
    def final_norm(m: re.Match) -> str:
        return f"layer_{m[1]}.1.global_rep.{depths[int(m[1]) - 3]}."

    return [
        (r"^stem\.", "conv_1.block."),
        (r"^stages\.(\d)\.", lambda m: f"layer_{int(m[1]) + 1}."),
        (r"\.expand\.", ".block.exp_1x1.block."),
        (r"\.dw\.", ".block.conv_3x3.block."),
        (r"\.project\.", ".block.red_1x1.block."),
        *_MLCVNETS_BLOCKS[family],
        (r"^layer_(\d)\.1\.norm\.", final_norm),
        (r"\.from_tokens\.", ".conv_proj.block."),
        (r"\.bn\.", ".norm."),
    ]


def foreign_keys(key: str, source: Source, depths: tuple[int, int, int] = (2, 4, 3),
                 family: str = "v1", task: str = "classification") -> list[str]:
    """Names that `source` uses for our parameter `key` (three for HF's split q/k/v)."""
    if source == "mvdeploy":
        return [key]
    if task == "segmentation":
        if source == "huggingface":
            rules = _HF_SEG_RULES[family]
        elif source == "mlcvnets":  # the head's own names; the backbone's as a classifier's
            rules = _MLCVNETS_SEG_HEAD if key.startswith(("aspp.", "classifier.")) \
                else _mlcvnets_rules(depths, family)
        else:
            raise CheckpointError(f"DeepLabV3 weights load from Hugging Face and ml-cvnets "
                                  f"checkpoints, not {source}")
    elif family == "v2":
        rules = {"huggingface": _HF_V2_RULES, "timm": _TIMM_V2_RULES}.get(source) \
            or _mlcvnets_rules(depths, "v2")
    else:
        rules = ({"huggingface": _HF_RULES, "timm": _TIMM_RULES}.get(source)
                 or _mlcvnets_rules(depths))
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key)
    if "{qkv}" in key:  # HF stores q, k, v as three Linear layers; we fuse them
        return [key.replace("{qkv}", part) for part in ("query", "key", "value")]
    return [key]


def _backbone(model) -> ModelCfg:
    """The classification variant whose layers `model` has (DeepLabV3 keeps its backbone's)."""
    return getattr(model, "backbone_cfg", model.cfg)


def _foreign_keys(key: str, model, source: Source) -> list[str]:
    backbone = _backbone(model)
    return foreign_keys(key, source, backbone.depths, backbone.family, model.cfg.task)


def _optional(key: str) -> bool:
    # BatchNorm's step counter only matters for training; some exporters drop it.
    return key.endswith("num_batches_tracked")


def remap_state_dict(state: Mapping[str, torch.Tensor], model: MobileViT,
                     source: Source) -> dict[str, torch.Tensor]:
    """Rename a foreign state dict to our names, failing loudly on any mismatch."""
    ours = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    bad_shape: list[str] = []
    for key, ref in ours.items():
        names = _foreign_keys(key, model, source)
        if not all(n in state for n in names):
            if _optional(key):
                out[key] = ref  # keep the default so that loading can stay strict
            else:
                missing.extend(n for n in names if n not in state)
            used.update(n for n in names if n in state)
            continue
        used.update(names)
        value = torch.cat([state[n] for n in names]) if len(names) > 1 else state[names[0]]
        if tuple(value.shape) != tuple(ref.shape):
            bad_shape.append(f"{names[0]} {tuple(value.shape)} (expected {tuple(ref.shape)})")
            continue
        out[key] = value.to(ref.dtype)
    unexpected = sorted(set(state) - used)
    problems = [
        (label, items) for label, items in (
            ("missing", missing), ("unexpected", unexpected), ("wrong shape", bad_shape))
        if items
    ]
    if problems:
        detail = "; ".join(
            f"{len(items)} {label}: {', '.join(items[:5])}{' ...' if len(items) > 5 else ''}"
            for label, items in problems
        )
        raise CheckpointError(
            f"{source} checkpoint does not fit {model.cfg.name}: {detail}"
        )
    return out


def export_state_dict(model: MobileViT, source: Source) -> dict[str, torch.Tensor]:
    """Our weights under another source's key names (inverse of remap_state_dict)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        names = _foreign_keys(key, model, source)
        parts = value.chunk(len(names)) if len(names) > 1 else [value]  # 0-d tensors can't chunk
        for name, part in zip(names, parts, strict=True):
            out[name] = part.clone()
    return out


# ---------------------------------------------------------------- reading files


def _read_tensor_file(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated, pickled code, wrong format: all user errors
        if "Unsupported global" in str(exc):  # a pickled object: torch.save(model, path)
            raise CheckpointError(
                f"{path} holds pickled Python objects (a whole model saved with "
                "torch.save(model, ...)?), which mvdeploy does not unpickle: save the weights "
                "with torch.save(model.state_dict(), path) instead") from None
        first = str(exc).strip().split(". ")[0].splitlines()
        reason = first[0].rstrip(".") if first else type(exc).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path}: {reason[:160]} (the file is corrupt or truncated, "
            "or is not a PyTorch state dict / safetensors file of tensors only)"
        ) from None
    # training checkpoints often wrap the weights
    for wrapper in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    # ml-cvnets segmentation files may hold a training-only auxiliary head (transformers'
    # converter drops it too)
    stripped = ((_strip_wrappers(k), v) for k, v in obj.items())
    return {k: v for k, v in stripped if not k.startswith("seg_head.aux_head.")}


def _strip_wrappers(key: str) -> str:
    for prefix in ("module.", "encoder."):  # DataParallel / ml-cvnets segmentation wrappers
        key = key.removeprefix(prefix)
    # older ml-cvnets releases nest the DeepLabV3 classifier once more (transformers'
    # convert_mlcvnets_to_pytorch.py undoes the same)
    return key.replace("seg_head.classifier.classifier.", "seg_head.classifier.")


def detect_family(state: Mapping[str, torch.Tensor], source: Source) -> str:
    """v2 when the state dict has v2's telltale key and (mvdeploy's names) no v1 fusion conv."""
    key = V2_TELLTALE_KEYS.get(source)
    return "v2" if key in state and "stages.4.1.fusion.conv.weight" not in state else "v1"


def detect_source(state: Mapping[str, torch.Tensor], where: object) -> Source:
    for source, key in TELLTALE_KEYS.items():
        if key in state:
            return source
    for source, key in V2_TELLTALE_KEYS.items():
        if key in state and detect_family(state, source) == "v2":
            return source
    if "conv_stem.convolution.weight" in state:
        raise CheckpointError(
            f"{where} is a Hugging Face MobileViTModel without its classifier: "
            "save a MobileViTForImageClassification instead"
        )
    raise CheckpointError(
        f"{where} is not a MobileViT checkpoint: expected one of the keys "
        + ", ".join([*TELLTALE_KEYS.values(), *V2_TELLTALE_KEYS.values()])
    )


def _infer_cfg(state: Mapping[str, torch.Tensor], source: Source, where: object,
               segmentation: bool = False) -> ModelCfg:
    """Pick the variant whose widths match the checkpoint's (stem, exp conv, transformer dims;
    for v2 the stem and transformer dims, which set the width multiplier). A segmentation
    backbone has no exp conv: its stem and transformer dims tell v1's variants apart too."""
    family = detect_family(state, source)

    def width(our_key: str) -> int | None:
        name = foreign_keys(our_key, source, family=family)[0]
        return int(state[name].shape[0]) if name in state else None

    if family == "v2":
        found = (width("stem.conv.weight"),
                 tuple(width(f"stages.{i}.1.to_tokens.weight") for i in (2, 3, 4)))
        for cfg in V2_CFGS.values():
            if found == (cfg.channels[0], cfg.attn_dims):
                return cfg
        raise CheckpointError(f"{where}: widths stem={found[0]} transformer dims={found[1]} "
                              f"match none of {', '.join(V2_CFGS)}")

    found = (
        width("stem.conv.weight"),
        width("head_conv.conv.weight"),
        tuple(width(f"stages.{i}.1.to_tokens.weight") for i in (2, 3, 4)),
    )
    for cfg in MODEL_CFGS.values():
        exp = None if segmentation else cfg.channels[6]
        if found == (cfg.channels[0], exp, cfg.hidden_sizes):
            return cfg
    raise CheckpointError(
        f"{where}: widths stem={found[0]} exp={found[1]} transformer dims={found[2]} match none "
        f"of {', '.join(MODEL_CFGS)}"
    )


# timm's own preprocessing for MobileViT v1, for a timm checkpoint that carries no
# pretrained_cfg (timm/models/mobilevit.py `_cfg`, timm 1.0.31: crop_pct 0.9, bicubic, mean 0,
# std 1; timm's transforms feed RGB scaled to [0, 1]).
TIMM_MOBILEVIT_PREPROCESSING = Preprocessing(channel_order="RGB", crop_pct=0.9,
                                             resample="bicubic")
# MobileViTv2's `_cfg` differs only in crop_pct 0.888 (timm/models/mobilevit.py, timm 1.0.31)
TIMM_PREPROCESSING = {"v1": TIMM_MOBILEVIT_PREPROCESSING,
                      "v2": replace(TIMM_MOBILEVIT_PREPROCESSING, crop_pct=0.888)}

_HF_FIXED = {  # config.json values our architecture implements; anything else is refused
    "num_attention_heads": 4, "mlp_ratio": 2.0, "conv_kernel_size": 3, "hidden_act": "silu",
    "qkv_bias": True, "output_stride": 32, "num_channels": 3,
}
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # transformers' PILImageResampling


@dataclass(frozen=True)
class CheckpointDir:
    """What a model directory (Hugging Face or timm layout) says besides its tensors."""

    source: Source
    cfg: MobileViTCfg
    labels: list[str] | None
    preprocessing: Preprocessing | None
    weights: Path
    origin: str  # where `preprocessing` came from, in words (see load_pretrained)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


def _read_directory(directory: Path) -> CheckpointDir:
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{directory} has no config.json: pass a Hugging Face or timm model directory "
            "(config.json + model.safetensors), a .pt/.safetensors file, or a hub id"
        )
    conf = _read_json(cfg_path)
    weights = next((directory / n for n in WEIGHT_FILES if (directory / n).is_file()), None)
    if weights is None:
        raise CheckpointError(
            f"{directory} has config.json but no model.safetensors or pytorch_model.bin"
        )
    if "architecture" in conf and "model_type" not in conf:
        cfg, labels, prep = _timm_config(conf, cfg_path)
        if prep is None:
            return CheckpointDir("timm", cfg, labels, TIMM_PREPROCESSING[cfg.family], weights,
                                 _timm_default_origin(cfg, f"{cfg_path} has no pretrained_cfg"))
        return CheckpointDir("timm", cfg, labels, prep, weights,
                             f"checkpoint ({cfg_path.name}: pretrained_cfg)")
    cfg, labels = (_hf_seg_config if _is_segmentation(conf) else _hf_config)(conf, cfg_path)
    prep_path = directory / "preprocessor_config.json"
    if prep_path.is_file():
        return CheckpointDir("huggingface", cfg, labels,
                             _hf_preprocessing(_read_json(prep_path), prep_path), weights,
                             f"checkpoint ({prep_path.name})")
    return CheckpointDir("huggingface", cfg, labels, None, weights,
                         f"assumed: {directory} has no preprocessor_config.json")


def _timm_default_origin(cfg: MobileViTCfg, why: str) -> str:
    return f"timm's default for {cfg.name} ({why})"


_HF_V2_FIXED = {  # MobileViTV2Config values our MobileViTv2 implements (transformers 5.24)
    "base_attn_unit_dims": [128, 192, 256], "n_attn_blocks": [2, 4, 3], "expand_ratio": 2.0,
    "ffn_multiplier": 2, "patch_size": 2, "conv_kernel_size": 3, "hidden_act": "swish",
    "output_stride": 32, "num_channels": 3,
}


def _hf_v2_config(conf: dict, cfg_path: Path) -> ModelCfg:
    """MobileViTV2Config: the fixed structure checked, the width multiplier picks the variant."""
    for key, expected in _HF_V2_FIXED.items():
        if key in conf and conf[key] != expected:
            raise CheckpointError(f"{cfg_path}: {key}={conf[key]!r} is not supported "
                                  f"(MobileViTv2 uses {expected!r})")
    width = _number(conf, "width_multiplier", cfg_path, 1.0)
    found = next((cfg for cfg in V2_CFGS.values() if math.isclose(cfg.width, width)), None)
    if found is None:
        raise CheckpointError(
            f"{cfg_path}: width_multiplier={width} is none of the published widths "
            f"({', '.join(f'{c.width:g}' for c in V2_CFGS.values())})")
    return found


def _hf_labels(conf: dict, cfg_path: Path) -> list[str] | None:
    id2label = conf.get("id2label")
    if not (isinstance(id2label, dict) and id2label):
        return None
    bad = next((k for k in id2label if not (isinstance(k, str) and k.strip().isdigit())), None)
    if bad is not None:
        raise CheckpointError(f"{cfg_path}: id2label key {bad!r} is not a class index: "
                              'expected {"0": "label", "1": ...}')
    return [str(id2label[k]) for k in sorted(id2label, key=int)]


# transformers' defaults for what a segmentation config.json leaves out (MobileViTConfig,
# MobileViTV2Config): the model transformers would build is the one loaded
_HF_SEG_DEFAULTS = {"v1": {"output_stride": 32, "atrous_rates": (6, 12, 18),
                           "aspp_out_channels": 256},
                    "v2": {"output_stride": 32, "atrous_rates": (6, 12, 18),
                           "aspp_out_channels": 512}}


def _has_seg_head(state: Mapping[str, torch.Tensor]) -> bool:
    """A DeepLabV3 head's tensors (transformers', ml-cvnets' or our names)."""
    return any(k.startswith(("segmentation_head.", "seg_head.", "aspp.")) for k in state)


# A bare ml-cvnets DeepLabV3 file: the published checkpoints' input, as transformers'
# convert_mlcvnets_to_pytorch.py records it for them (MobileViTImageProcessor(crop_size=512,
# size=544): BGR, scale 1/255, shorter side 544, centre crop 512)
MLCVNETS_SEG_PREPROCESSING = Preprocessing(crop_pct=512 / 544)


def _mlcvnets_seg_cfg(state: Mapping[str, torch.Tensor], path: Path) -> DeepLabV3Cfg:
    """The DeepLabV3 variant of a bare ml-cvnets file: the backbone from its widths, the ASPP
    width from its weights, the output stride and rates ml-cvnets trains with (its deeplabv3
    defaults, which transformers' converters assume too: they are not in the weights)."""
    backbone = _infer_cfg(state, "mlcvnets", path, segmentation=True)
    channels = state.get("seg_head.aspp.aspp_layer.convs.0.block.conv.weight")
    seg = SEG_CFGS[f"deeplabv3_{backbone.name}"]
    return seg if channels is None else replace(seg, aspp_channels=int(channels.shape[0]))


def _is_segmentation(conf: dict) -> bool:
    architectures = conf.get("architectures") or []
    return any(str(a).endswith("ForSemanticSegmentation") for a in architectures)


def _hf_seg_config(conf: dict, cfg_path: Path) -> tuple[DeepLabV3Cfg, list[str] | None]:
    """MobileViT(V2)ForSemanticSegmentation: the backbone checked as for a classifier, then the
    head's output stride, ASPP rates and width (the checkpoint's, else transformers' defaults).
    """
    backbone, labels = _hf_config({k: v for k, v in conf.items() if k != "output_stride"},
                                  cfg_path)
    defaults = _HF_SEG_DEFAULTS[backbone.family]
    stride = conf.get("output_stride", defaults["output_stride"])
    if stride not in OUTPUT_STRIDES:
        raise CheckpointError(f"{cfg_path}: output_stride={stride!r} is not supported (choose "
                              f"one of {', '.join(map(str, OUTPUT_STRIDES))})")
    rates = _int_list(conf, "atrous_rates", cfg_path) if "atrous_rates" in conf \
        else defaults["atrous_rates"]
    if len(rates) != 3:
        raise CheckpointError(f"{cfg_path}: atrous_rates={list(rates)} must hold 3 rates")
    channels = int(_number(conf, "aspp_out_channels", cfg_path, defaults["aspp_out_channels"]))
    seg = replace(SEG_CFGS[f"deeplabv3_{backbone.name}"], output_stride=stride,
                  atrous_rates=tuple(rates), aspp_channels=channels)
    return seg, labels


def _hf_config(conf: dict, cfg_path: Path) -> tuple[ModelCfg, list[str] | None]:
    model_type = conf.get("model_type")
    if model_type == "mobilevitv2":
        return _hf_v2_config(conf, cfg_path), _hf_labels(conf, cfg_path)
    if model_type != "mobilevit":
        raise CheckpointError(
            f"{cfg_path} describes model_type={model_type!r}; mvdeploy supports MobileViT "
            "('mobilevit') and MobileViTv2 ('mobilevitv2')"
        )
    for key, expected in _HF_FIXED.items():
        if key in conf and conf[key] != expected:
            raise CheckpointError(
                f"{cfg_path}: {key}={conf[key]!r} is not supported (MobileViT v1 uses {expected!r})"
            )
    hidden = _int_list(conf, "hidden_sizes", cfg_path)
    neck = _int_list(conf, "neck_hidden_sizes", cfg_path)
    expand_ratio = _number(conf, "expand_ratio", cfg_path, 4.0)
    for cfg in MODEL_CFGS.values():
        if (hidden, neck) == (cfg.hidden_sizes, cfg.channels):
            if expand_ratio != cfg.expand_ratio:
                raise CheckpointError(
                    f"{cfg_path}: expand_ratio={conf.get('expand_ratio')} does not match "
                    f"{cfg.name} (expects {cfg.expand_ratio})"
                )
            break
    else:
        raise CheckpointError(
            f"{cfg_path}: hidden_sizes={list(hidden)} neck_hidden_sizes={list(neck)} match none of "
            f"{', '.join(MODEL_CFGS)}"
        )
    return cfg, _hf_labels(conf, cfg_path)


# A malformed config.json / preprocessor_config.json is one line naming the file, the key and
# what is expected (the fault matrix of issue 27 item 6), never a Python exception.

def _refuse_non_finite(state: dict, where: Path) -> None:
    """A NaN or Inf weight makes every output NaN (or one class for every photo): a damaged or
    diverged checkpoint, refused with the first such tensor's name."""
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() \
                and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{where}: tensor {name} holds {count} NaN or Inf value(s): "
                                  "the checkpoint is damaged or was saved from a diverged run")


def _number(conf: dict, key: str, where: Path, default: float) -> float:
    value = conf.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{where}: {key}={value!r} must be a positive number")
    return float(value)


def _int_list(conf: dict, key: str, where: Path) -> tuple[int, ...]:
    value = conf.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                              for v in value):
        raise CheckpointError(f"{where}: {key}={value!r} must be a list of integers")
    return tuple(value)


def _size(value, key: str, where: Path) -> tuple[int, int | None]:
    """transformers writes sizes as an int, {"shortest_edge": n} or {"height": h, "width": w}."""
    found = None
    if isinstance(value, int) and not isinstance(value, bool):
        found = value, None
    elif isinstance(value, dict) and isinstance(value.get("shortest_edge"), int):
        found = value["shortest_edge"], None
    elif isinstance(value, dict) and isinstance(value.get("height"), int):
        found = value["height"], value.get("width")
    if found is None or found[0] <= 0 or (found[1] is not None and
                                          (not isinstance(found[1], int) or found[1] <= 0)):
        raise CheckpointError(f"{where}: {key}={value!r} must be a positive size: an integer, "
                              '{"shortest_edge": N} or {"height": H, "width": W}')
    return found


def _hf_preprocessing(conf: dict, where: Path) -> Preprocessing:
    """preprocessor_config.json (MobileViTImageProcessor) -> our Preprocessing."""
    resample = conf.get("resample", 2)
    resample = _PIL_RESAMPLE.get(resample) if isinstance(resample, int) else None
    if resample is None:
        raise CheckpointError(f"{where}: resample={conf['resample']} is not supported "
                              "(0 nearest, 2 bilinear, 3 bicubic)")
    crop_pct = 1.0
    if conf.get("do_resize", True) and conf.get("do_center_crop", True):
        shorter, _ = _size(conf.get("size", 288), "size", where)
        crop, _ = _size(conf.get("crop_size", 256), "crop_size", where)
        crop_pct = min(1.0, crop / shorter)
    mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if conf.get("do_normalize", False):
        mean, std = (_three(conf, key, where) for key in ("image_mean", "image_std"))
    scale = _number(conf, "rescale_factor", where, 1 / 255) if conf.get("do_rescale", True) \
        else 1.0
    try:
        return Preprocessing(
            channel_order="BGR" if conf.get("do_flip_channel_order", False) else "RGB",
            scale=scale, mean=mean, std=std, crop_pct=crop_pct, resample=resample)
    except ConfigError as exc:
        raise CheckpointError(f"{where}: {exc}") from None


def _three(conf: dict, key: str, where: Path) -> tuple[float, float, float]:
    """image_mean / image_std: three numbers, or one for all channels (transformers allows it)."""
    value = conf.get(key)
    values = [value] * 3 if isinstance(value, (int, float)) else value
    if not isinstance(values, list) or len(values) != 3 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            for v in values):
        raise CheckpointError(f"{where}: do_normalize is true, so {key} must be 3 numbers "
                              f"(got {value!r})")
    return tuple(float(v) for v in values)


def _timm_config(conf: dict, cfg_path: Path
                 ) -> tuple[MobileViTCfg, list[str] | None, Preprocessing | None]:
    """timm's hub config.json: architecture, num_classes, label_names, pretrained_cfg."""
    arch = str(conf["architecture"])
    known = {**MODEL_CFGS, **V2_CFGS}
    if arch not in known:
        raise CheckpointError(f"{cfg_path}: timm architecture {arch!r} is not MobileViT v1 or "
                              f"v2 (supported: {', '.join(known)})")
    labels = conf.get("label_names")
    labels = [str(x) for x in labels] if isinstance(labels, list) and labels else None
    pre = conf.get("pretrained_cfg") or {}
    prep = None
    if pre:
        try:
            prep = Preprocessing(
                channel_order="RGB", scale=1 / 255,  # timm: ToTensor, then mean/std
                mean=tuple(float(v) for v in pre.get("mean", (0.485, 0.456, 0.406))),
                std=tuple(float(v) for v in pre.get("std", (0.229, 0.224, 0.225))),
                crop_pct=float(pre.get("crop_pct", 0.875)),
                resample=str(pre.get("interpolation", "bilinear")))
        except (TypeError, ValueError) as exc:  # ConfigError is a ValueError
            raise CheckpointError(f"{cfg_path}: pretrained_cfg: {exc}") from None
    return known[arch], labels, prep


def resolve_weights(spec: str | Path) -> Path:
    """The local file or folder a weights spec names (downloading a hub id), checked to exist."""
    if not str(spec).strip():
        raise CheckpointError("the weights path is empty: give a checkpoint path or hub id "
                              "(e.g. apple/mobilevit-xx-small), or leave it out for seeded "
                              "random weights")
    path = download(str(spec)) if looks_like_hub_id(spec) else Path(spec).expanduser()
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist (a local path, or a hub id "
                              "such as apple/mobilevit-xx-small)")
    return path


def load_pretrained(path: str | Path, *, patch_sizes: PatchSizes = PATCH_PRESETS["A"],
                    form: GraphForm | None = None) -> MobileViT:
    """Build the model a checkpoint describes (variant, classes, labels) and load it strictly.

    `path` is a file, a model directory, or a Hugging Face Hub id (`org/name[@revision]`,
    through the standard hub cache). The model gets `class_labels`, `preprocessing` (None: the
    published default), `preprocessing_origin` (where it came from, in words; "assumed: ..."
    when nothing says) and `checkpoint` (where the weights came from).

    Patch sizes carry no weights, so any preset can be combined with any checkpoint; note that
    the published checkpoints were trained with patch 2 at every stage (preset A).
    """
    checkpoint: dict[str, str | None] = {"weights": str(path)}
    from_hub = looks_like_hub_id(path)
    path = resolve_weights(path)
    if from_hub:  # the snapshot folder is named after the commit it holds
        checkpoint.update(hub_id=checkpoint["weights"], commit=path.name)
    labels: list[str] | None = None
    preprocessing: Preprocessing | None = None
    if path.is_dir():
        found = _read_directory(path)
        cfg, labels, preprocessing = found.cfg, found.labels, found.preprocessing
        origin = found.origin
        state = _read_tensor_file(found.weights)
        source = detect_source(state, path)
    else:
        state = _read_tensor_file(path)
        mlcvnets_seg = any(k.startswith("seg_head.") for k in state)
        if _has_seg_head(state) and not mlcvnets_seg:
            raise CheckpointError(f"{path} is a bare DeepLabV3 state dict: load its Hugging "
                                  "Face folder, whose config.json gives the output stride and "
                                  "ASPP rates")
        source = detect_source(state, path)
        if mlcvnets_seg:  # ml-cvnets' own file: its defaults for what the weights do not hold
            cfg = _mlcvnets_seg_cfg(state, path)
            preprocessing, origin = MLCVNETS_SEG_PREPROCESSING, (
                f"the published DeepLabV3 checkpoints' (shorter side 544, crop 512, BGR), as "
                f"transformers' converter records them ({path.name} is a bare ml-cvnets file)")
        else:
            cfg = _infer_cfg(state, source, path)
            preprocessing, origin = _bare_file_preprocessing(source, cfg, path)
    _refuse_non_finite(state, found.weights if path.is_dir() else path)
    weights_task = "segmentation" if _has_seg_head(state) else "classification"
    if weights_task != cfg.task:
        raise CheckpointError(f"{path}: config.json describes a {cfg.task} model but the "
                              f"weights are a {weights_task} model's")
    family = detect_family(state, source)
    if family != cfg.family:
        raise CheckpointError(f"{path}: config.json describes {cfg.name} but the weights are "
                              f"MobileViT{'v2' if family == 'v2' else ' v1'}'s")
    classifier = foreign_keys("classifier.weight", source, family=family, task=cfg.task)[0]
    if classifier not in state:
        raise CheckpointError(f"{path} has no classifier weights ({classifier})")
    num_classes = int(state[classifier].shape[0])
    if labels is not None and len(labels) != num_classes:
        raise CheckpointError(
            f"{path}: config.json names {len(labels)} labels but the classifier has "
            f"{num_classes} outputs"
        )
    model = build_network(cfg, num_classes=num_classes, patch_sizes=patch_sizes, form=form)
    model.load_state_dict(remap_state_dict(state, model, source), strict=True)
    model.class_labels = labels
    model.preprocessing = preprocessing
    model.preprocessing_origin = origin
    model.checkpoint = {**checkpoint, "source": source}
    model.checkpoint_path = path  # the local file or folder (a hub id's snapshot)
    return model.eval()


def _bare_file_preprocessing(source: Source, cfg: MobileViTCfg, path: Path
                             ) -> tuple[Preprocessing | None, str]:
    """A lone weights file says nothing about its inputs: its library's default, if it has one.

    ml-cvnets evaluates MobileViT with the published preprocessing (BGR, bilinear, 288 -> 256:
    what apple/mobilevit-*'s preprocessor_config.json records), timm with its own `_cfg`.
    """
    if source == "timm":
        return TIMM_PREPROCESSING[cfg.family], _timm_default_origin(
            cfg, f"{path.name} is a bare state dict without pretrained_cfg")
    if source == "mlcvnets":
        return None, f"ml-cvnets' default, as Apple published it ({path.name} is a bare file)"
    return None, f"assumed: {path.name} is a bare state dict that does not say how its " \
                 "inputs were prepared"


def save_checkpoint(model: MobileViT, path: str | Path, source: Source = "mvdeploy") -> Path:
    """Write the model's weights under `source`'s key names (`.safetensors` or `.pt`)."""
    path = Path(path)
    state = export_state_dict(model, source)
    tmp = path.with_name(path.name + ".partial")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    else:
        torch.save(state, str(tmp))
    tmp.replace(path)
    return path


def hf_model_config(model: MobileViT, resolution: tuple[int, int]) -> dict:
    """transformers' config.json for `model` (MobileViTConfig or MobileViTV2Config, id2label
    from its labels).
    transformers' MobileViT has one patch size for every stage: the first stage's is written,
    and mvdeploy_patch_sizes keeps the real ones (a B model is not transformers' model)."""
    cfg, (height, _) = model.cfg, resolution
    if cfg.task == "segmentation":  # the backbone's config plus the DeepLabV3 head's
        from types import SimpleNamespace

        backbone = SimpleNamespace(cfg=model.backbone_cfg, patch_sizes=model.patch_sizes,
                                   class_labels=model.class_labels, num_classes=model.num_classes)
        family = "MobileViTV2" if model.backbone_cfg.family == "v2" else "MobileViT"
        return {**hf_model_config(backbone, resolution),
                "architectures": [f"{family}ForSemanticSegmentation"],
                "output_stride": cfg.output_stride, "atrous_rates": list(cfg.atrous_rates),
                "aspp_out_channels": cfg.aspp_channels}
    labels = model.class_labels or [str(i) for i in range(model.num_classes)]
    label_maps = {"id2label": {str(i): name for i, name in enumerate(labels)},
                  "label2id": {name: i for i, name in enumerate(labels)},
                  "mvdeploy_patch_sizes": [list(p) for p in model.patch_sizes]}
    if cfg.family == "v2":
        if any(p != (2, 2) for p in model.patch_sizes):
            # transformers' MobileViTv2 runs 2x2 patches everywhere, and mvdeploy's loader
            # holds its config to that: a folder claiming otherwise would load as another model
            raise ConfigError(f"a Hugging Face folder of {cfg.name} holds 2x2 patches only, "
                              f"not {[list(p) for p in model.patch_sizes]}: export it with "
                              "--patch A for the hf layout")
        return {"architectures": ["MobileViTV2ForImageClassification"],
                "model_type": "mobilevitv2", "width_multiplier": cfg.width,
                "image_size": height, "layer_norm_eps": cfg.layer_norm_eps,
                **_HF_V2_FIXED, **label_maps}
    return {
        "architectures": ["MobileViTForImageClassification"], "model_type": "mobilevit",
        "hidden_sizes": list(cfg.hidden_sizes), "neck_hidden_sizes": list(cfg.channels),
        "expand_ratio": cfg.expand_ratio, "image_size": height,
        "patch_size": model.patch_sizes[0][0], "layer_norm_eps": cfg.layer_norm_eps,
        **_HF_FIXED, **label_maps,
    }


def hf_processor_config(preprocessing: Preprocessing, resolution: tuple[int, int]) -> dict:
    """preprocessor_config.json (MobileViTImageProcessor) for `preprocessing` at `resolution`,
    the inverse of _hf_preprocessing. The processor has no mean/std (transformers 4.57 and 5
    ignore do_normalize): a normalising preprocessing cannot be written, and is refused."""
    height, width = resolution
    if preprocessing.mean != (0.0, 0.0, 0.0) or preprocessing.std != (1.0, 1.0, 1.0):
        raise ConfigError(
            f"preprocessing mean {list(preprocessing.mean)} / std {list(preprocessing.std)} "
            "cannot be written to a preprocessor_config.json: transformers' "
            "MobileViTImageProcessor has no normalisation step")
    resample = {v: k for k, v in _PIL_RESAMPLE.items()}[preprocessing.resample]
    return {
        "image_processor_type": "MobileViTImageProcessor", "do_resize": True,
        "size": {"shortest_edge": preprocessing.shorter_side(height, width)},
        "resample": resample, "do_center_crop": True,
        "crop_size": {"height": height, "width": width},
        "do_rescale": True, "rescale_factor": preprocessing.scale,
        "do_flip_channel_order": preprocessing.channel_order == "BGR",
    }


def save_pretrained(model: MobileViT, directory: str | Path, *, resolution: tuple[int, int],
                    preprocessing: Preprocessing | None = None) -> Path:
    """Write a Hugging Face model directory that transformers and mvdeploy both load:
    config.json (with id2label), preprocessor_config.json, model.safetensors."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = hf_model_config(model, resolution)
    processor = hf_processor_config(preprocessing or Preprocessing(), resolution)
    (directory / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (directory / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
    save_checkpoint(model, directory / "model.safetensors", source="huggingface")
    return directory

"""Export configuration: frozen dataclasses mirroring the TOML tables, strictly checked.

A config file, CLI flags and `--set table.key=value` overrides all land in the same
`table.key` namespace (later wins), so one checker serves all three. Unknown keys, wrong types
and impossible combinations fail with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mvdeploy.backends import (
    CheckContext,
    check_recipe,
    default_formats,
    export_formats,
    spec,
    specs,
)
from mvdeploy.data import Preprocessing
from mvdeploy.errors import ConfigError, MvdeployError
from mvdeploy.models import (
    FOLD_IMPLS,
    check_attention_memory,
    format_patch_sizes,
    get_model_cfg,
    parse_patch_sizes,
)
from mvdeploy.models.mobilevit import parse_resolution
from mvdeploy.pipeline.quantize import CALIBRATION_METHODS, KEEP_FLOAT_CHOICES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def _format_tables() -> dict[str, type]:
    """Each format's own [table] in export configs: its options dataclass."""
    return {s.name: s.options for s in specs() if dataclasses.fields(s.options)}


@dataclass(frozen=True)
class ModelSection:
    name: str = "mobilevit_xxs"
    # hub id (org/name[@rev]), model directory or file; absent: seeded input-sensitive weights
    weights: str | None = None
    patch: str = "A"  # preset or per-stage sizes, e.g. "8,4,2" or "2x4,2,2"
    resolution: str = "256"  # "HEIGHTxWIDTH" or one number
    fold: str = "auto"  # unfold/fold form; auto: each format's own (FormatSpec.fold)
    # for seeded weights; unset: the model's own (1000 for classification, 21 = PASCAL VOC for
    # segmentation); a checkpoint brings its own
    num_classes: int | None = None


INPUT_CHANNELS = ("checkpoint", "RGB", "BGR")
LAYOUTS = ("mvdeploy", "hf")
# a seeded model's classes: bounded up front, as the resolution is, so that a typo is one line
# and not an allocation failure (the head of S at 10^12 classes would be 2.5 TB)
MAX_CLASSES = 100_000


@dataclass(frozen=True)
class ExportSection:
    formats: tuple[str, ...] = field(default_factory=default_formats)
    out: str = "mvdeploy_out"
    batch: int = 1
    dynamic_batch: bool = False  # ONNX only
    save_program: bool = True  # also write the torch.export program (.pt2)
    # the channel order the artifacts take: "checkpoint" (what it was trained on), "RGB" or
    # "BGR"; another order than the checkpoint's is folded into the stem convolution (exact)
    input_channels: str = "checkpoint"
    # "hf": --out is also the folder Hugging Face clients load (optimum, transformers.js):
    # config.json and preprocessor_config.json at its root, the ONNX as onnx/model.onnx
    # (model_fp16, model_quantized); "mvdeploy": out/<format>/<stem>.<suffix> only
    layout: str = "mvdeploy"
    # segmentation: output the class index of every input pixel ("mask", int32 [B, H, W]:
    # logits upsampled bilinearly, then the argmax) instead of logits at 1/output-stride
    mask: bool = False


@dataclass(frozen=True)
class MetadataSection:
    """What Xcode and model viewers show; also written into every artifact's mvdeploy record."""

    author: str = ""  # empty: "mvdeploy <version>"
    license: str = ""  # the checkpoint's licence; left empty when not given
    version: str = ""
    description: str = ""  # empty: model, patch sizes and resolution


@dataclass(frozen=True)
class QuantizeSection:
    precision: str = ""  # empty: fp32, and coreml.compute_precision for Core ML
    # folder; empty: the bundled photos, dealt out with the other sets
    # (mvdeploy.pipeline.image_sets)
    calibration_images: str = ""
    calibration_samples: int = 128
    # what the float-group search tunes on; empty: a share of the calibration folder's images
    # (never calibration or report images: mvdeploy.pipeline.image_sets)
    selection_images: str = ""
    selection_samples: int = 16
    # the search also measures this many colour / brightness / contrast variants of the
    # selection photos (quantize.photometric_views), so groups a new photo's ranges would clip
    # stay float; 0: the photos alone
    selection_views: int = 12
    # top a calibration set of fewer than 32 images up to this many with random resized crops
    # and mirror images of them (quantize.augmented_views); 0: off, the default, because on the
    # trained fixture they cost 0.7-2.7 dB (benchmarks/results/calibration_methods.md)
    calibration_views: int = 0
    # auto: each format's measured default (ONNX minmax, of minmax/entropy/percentile; TFLite
    # and Core ML w8a8 histogram, of histogram/minmax: PT2E activation observers)
    calibration_method: str = "auto"
    per_channel: bool = True  # per-channel weight scales (ONNX and TFLite int8-static)
    # ONNX int8-static keeps these in float; naive int8 of them hurts MobileViT (docs/reference.md),
    # and ORT runs SiLU and softmax slower quantised than float ("activations": int8 for
    # Conv/Gemm/MatMul only)
    keep_float: tuple[str, ...] = ("softmax", "layernorm", "attention", "activations")
    # the fidelity int8-static must keep on held-out photos (ONNX, TFLite): below it, the
    # most sensitive layer groups stay float, up to max_float_groups of them
    min_snr_db: float = 30.0
    min_top1_agreement: float = 0.95
    max_top1_drop: float = 1.0  # accuracy points below float PyTorch's, with --labelled images
    max_float_groups: int = 20
    sensitivity: bool = False  # measure every group's sensitivity even when int8 holds
    # time int8 artifacts against their float32 twin (bench worker, 3 short interleaved rounds)
    compare_speed: bool = True


@dataclass(frozen=True)
class ValidateSection:
    images: str = ""  # folder of photos; empty: the sample photos shipped with mvdeploy
    labelled_images: str = ""  # folder of class_name/*.jpg: top-1 accuracy, artifact vs PyTorch
    max_images: int = 12
    random_inputs: int = 2
    # float32: max |artifact - PyTorch| <= fp32_max_rel * max |PyTorch| on every input set
    fp32_max_rel: float = 1e-4
    fp16_min_snr_db: float = 40.0  # tolerance for float16 artifacts
    quantized_min_snr_db: float = 20.0  # tolerance for int8 / palettised artifacts
    # compare the preprocessing with the checkpoint's own library (transformers, timm) on the
    # photos, where it imports; a difference of more than one 8-bit level stops the export
    check_preprocessing: bool = True


@dataclass(frozen=True)
class ExportConfig:
    model: ModelSection = field(default_factory=ModelSection)
    export: ExportSection = field(default_factory=ExportSection)
    quantize: QuantizeSection = field(default_factory=QuantizeSection)
    validate: ValidateSection = field(default_factory=ValidateSection)
    preprocessing: Preprocessing = field(default_factory=Preprocessing)
    metadata: MetadataSection = field(default_factory=MetadataSection)
    # format name -> its options ([onnx], [tflite], ...: each format's module defines them)
    options: Mapping[str, Any] = field(
        default_factory=lambda: {name: cls() for name, cls in _format_tables().items()},
        metadata={"table": False})
    # [preprocessing] keys the user set; the others come from the checkpoint when it says
    preprocessing_set: frozenset[str] = field(default=frozenset(), metadata={"table": False})
    # where the preprocessing came from, in words ("checkpoint (preprocessor_config.json)",
    # "timm's default for ...", "assumed: ..."), recorded in the manifest
    preprocessing_origin: str = field(default="the published default",
                                      metadata={"table": False})

    def __getattr__(self, name: str) -> Any:
        """cfg.<format>: that format's options, e.g. cfg.onnx.opset."""
        options = self.__dict__.get("options", {})
        if name in options:
            return options[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def format_options(self, fmt: str) -> Any:
        return self.options.get(fmt) or spec(fmt).options()

    def with_checkpoint_preprocessing(self, checkpoint: Preprocessing | None,
                                      origin: str) -> ExportConfig:
        """The checkpoint's preprocessing (else the published defaults) under the user's keys."""
        user = {k: getattr(self.preprocessing, k) for k in self.preprocessing_set}
        resolved = dataclasses.replace(checkpoint or Preprocessing(), **user)
        if user:
            origin = f"{origin}; set by the user: {', '.join(sorted(user))}"
        cfg = dataclasses.replace(self, preprocessing=resolved, preprocessing_origin=origin)
        _check(cfg)  # e.g. coreml.image_input with the checkpoint's per-channel std
        return cfg

    def precision(self, fmt: str) -> str:
        """The recipe a format gets: quantize.precision, else its float default."""
        if self.quantize.precision:
            return self.quantize.precision
        return spec(fmt).default_recipe(self.format_options(fmt))

    @property
    def height_width(self) -> tuple[int, int]:
        return parse_resolution(self.model.resolution)

    def to_dict(self) -> dict[str, Any]:
        tables = {k: v for k, v in dataclasses.asdict(self).items() if k in _SECTIONS}
        return {**tables, **{k: dataclasses.asdict(v) for k, v in self.options.items()}}


# ---------------------------------------------------------------- type checking


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against a field's type; accept the few spellings TOML and --set produce."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is types.UnionType and type(None) in args:  # optional: the other type
        (hint,) = (a for a in args if a is not type(None))
        return _coerce(key, value, hint)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # a NaN tolerance passes every check, and is not JSON
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if isinstance(items, (list, tuple)):
            item_type = args[0]
            fixed_length = len(args) != 2 or args[1] is not Ellipsis
            if fixed_length and len(items) != len(args):
                raise ConfigError(f"{key} needs {len(args)} values, got {value!r}")
            return tuple(_coerce(key, i.strip() if isinstance(i, str) else i, item_type)
                         for i in items)
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{key} must be {name}, got {value!r} ({type(value).__name__})")


def _normalise_model_table(table: dict[str, Any]) -> None:
    """`patch` and `resolution` may be numbers or lists in TOML; store their canonical text."""
    if "patch" in table and not isinstance(table["patch"], str):
        try:
            table["patch"] = format_patch_sizes(parse_patch_sizes(table["patch"])).split(" ")[0]
        except (ConfigError, TypeError) as exc:
            raise ConfigError(f"model.patch: {exc}") from None
    res = table.get("resolution")
    if isinstance(res, int) and not isinstance(res, bool):
        table["resolution"] = str(res)
    elif isinstance(res, list) and len(res) == 2:
        table["resolution"] = f"{res[0]}x{res[1]}"


def _build_section(cls: type, table: Mapping[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in table.items():
        if key not in hints:
            raise ConfigError(
                f"unknown key '{section}.{key}': known keys are "
                + ", ".join(f"{section}.{k}" for k in known)
            )
        kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
    return cls(**kwargs)


def _check(cfg: ExportConfig) -> None:
    """Cross-field rules; each message names the key to change."""
    def wrap(key: str, fn, *args):
        try:
            return fn(*args)
        except MvdeployError as exc:
            raise ConfigError(f"{key}: {exc}") from None

    model_cfg = wrap("model.name", get_model_cfg, cfg.model.name)
    family = model_cfg.family
    patches = wrap("model.patch", parse_patch_sizes, cfg.model.patch)
    height, width = wrap("model.resolution", parse_resolution, cfg.model.resolution)
    wrap("model.resolution", check_attention_memory, height, width, patches)
    if cfg.model.fold not in ("auto", *FOLD_IMPLS):
        raise ConfigError(f"model.fold must be auto or one of {', '.join(FOLD_IMPLS)}, "
                          f"got {cfg.model.fold!r}")
    if family == "v2" and cfg.model.fold != "auto":
        raise ConfigError(f"model.fold: {cfg.model.name} is MobileViTv2, which has one graph "
                          "form (a rank-4 fold); leave --fold at auto")
    if cfg.model.num_classes is not None and not 1 <= cfg.model.num_classes <= MAX_CLASSES:
        raise ConfigError(f"model.num_classes must be between 1 and {MAX_CLASSES} "
                          f"(ImageNet-21k has 21,843), got {cfg.model.num_classes}")
    formats = cfg.export.formats
    known = export_formats()
    bad = [f for f in formats if f not in known]
    if bad or not formats:
        raise ConfigError(f"export.formats: unknown format {', '.join(bad) or '(none)'}; "
                          f"choose from {', '.join(known)}")
    if len(set(formats)) != len(formats):
        raise ConfigError(f"export.formats lists a format twice: {', '.join(formats)}")
    if cfg.export.batch < 1:
        raise ConfigError("export.batch must be at least 1")
    wrap("export.batch", check_attention_memory, height, width, patches, cfg.export.batch)
    if cfg.export.input_channels not in INPUT_CHANNELS:
        raise ConfigError(f"export.input_channels must be one of {', '.join(INPUT_CHANNELS)}, "
                          f"got {cfg.export.input_channels!r}")
    if cfg.export.layout not in LAYOUTS:
        raise ConfigError(f"export.layout must be one of {', '.join(LAYOUTS)}, "
                          f"got {cfg.export.layout!r}")
    if cfg.export.layout == "hf" and not any(spec(f).hf_file_names for f in formats):
        able = [s.name for s in specs() if s.hf_file_names]
        raise ConfigError(f"export.layout = hf is the folder Hugging Face clients load, which "
                          f"read {', '.join(able)}: add it to export.formats")
    if cfg.export.layout == "hf" and model_cfg.task != "classification":
        raise ConfigError(f"export.layout = hf writes image-classification folders; "
                          f"{cfg.model.name} is a {model_cfg.task} model: use the default "
                          "layout (mvdeploy)")
    if cfg.export.mask:
        _check_mask(cfg, model_cfg.task)
    if not cfg.export.out.strip():
        raise ConfigError("export.out is empty: give the folder the artifacts go to (--out)")
    fixed_batch = [f for f in formats if not spec(f).dynamic_batch]
    if cfg.export.dynamic_batch and fixed_batch:
        able = [s.name for s in specs() if s.selectable and s.dynamic_batch]
        raise ConfigError(f"export.dynamic_batch is supported for {', '.join(able)} only: "
                          "export the other formats with a fixed export.batch in a separate run")
    ctx = CheckContext(batch=cfg.export.batch, dynamic_batch=cfg.export.dynamic_batch,
                       preprocessing=cfg.preprocessing, task=model_cfg.task,
                       mask=cfg.export.mask)
    for fmt in _format_tables():
        recipe = None
        if fmt in formats:
            recipe = cfg.precision(fmt)
            check_recipe(fmt, recipe)
        spec(fmt).check(cfg.format_options(fmt), recipe, ctx)
    method = cfg.quantize.calibration_method
    for fmt in formats:
        methods = spec(fmt).calibration_methods
        if method != "auto" and spec(fmt).recipes[cfg.precision(fmt)].calibrated \
                and method not in methods:
            raise ConfigError(f"quantize.calibration_method {method!r} is not one {fmt} has: "
                              f"choose auto or one of {', '.join(methods)}")
    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"quantize.calibration_method must be one of "
                          f"{', '.join(CALIBRATION_METHODS)}, got {method!r}")
    unknown = [k for k in cfg.quantize.keep_float if k not in KEEP_FLOAT_CHOICES]
    if unknown:
        raise ConfigError(f"quantize.keep_float: unknown {', '.join(unknown)}; choose from "
                          f"{', '.join(KEEP_FLOAT_CHOICES)}")
    if cfg.quantize.calibration_samples < 1 or cfg.quantize.selection_samples < 1:
        raise ConfigError("quantize.calibration_samples and quantize.selection_samples must be "
                          "at least 1")
    if min(cfg.quantize.calibration_views, cfg.quantize.selection_views,
           cfg.quantize.max_float_groups) < 0:
        raise ConfigError("quantize.calibration_views, selection_views and max_float_groups "
                          "must not be negative")
    if not 0 <= cfg.quantize.min_top1_agreement <= 1:
        raise ConfigError("quantize.min_top1_agreement is a share between 0 and 1, got "
                          f"{cfg.quantize.min_top1_agreement!r}")
    if cfg.validate.max_images < 1 or cfg.validate.random_inputs < 0:
        raise ConfigError("validate.max_images must be >= 1 and validate.random_inputs >= 0")
    for key in ("fp32_max_rel", "fp16_min_snr_db", "quantized_min_snr_db"):
        if getattr(cfg.validate, key) < 0:
            raise ConfigError(f"validate.{key} must not be negative")


_SECTIONS = {f.name: f.type for f in dataclasses.fields(ExportConfig)
             if f.metadata.get("table", True)}


def _check_mask(cfg: ExportConfig, task: str) -> None:
    """export.mask: what a class-index mask output cannot go with."""
    if task != "segmentation":
        raise ConfigError(f"export.mask (--mask) outputs a segmentation mask, and "
                          f"{cfg.model.name} is a {task} model: leave it out")
    searched = [f for f in cfg.export.formats if spec(f).recipes.get(cfg.precision(f))
                and spec(f).recipes[cfg.precision(f)].searched]
    if searched:
        raise ConfigError(f"export.mask (--mask) cannot go with {cfg.precision(searched[0])} "
                          f"for {', '.join(searched)}: its float-group search compares logits, "
                          "which a mask hides; export logits for int8-static, or a mask with "
                          "fp32, fp16 or int8-dynamic")


def _table_class(table: str) -> type | None:
    if table in _SECTIONS:
        return typing.get_type_hints(ExportConfig)[table]
    return _format_tables().get(table)


def parse_override(text: str) -> tuple[str, Any]:
    """'table.key=value' -> ('table.key', value); the value is read as TOML when it parses."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or key.count(".") != 1:
        raise ConfigError(f"--set expects table.key=value (e.g. model.patch=B), got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value


def load_config(path: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None) -> ExportConfig:
    """Read a TOML file (optional), apply `table.key` overrides, check everything."""
    tables: dict[str, dict[str, Any]] = {}
    if path is not None:
        path = Path(path)
        try:
            tables = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        table, _, name = key.partition(".")
        tables.setdefault(table, {})[name] = value
    sections: dict[str, Any] = {}
    options = {name: cls() for name, cls in _format_tables().items()}
    for table, values in tables.items():
        cls = _table_class(table)
        if cls is None:
            raise ConfigError(f"unknown table [{table}]: known tables are "
                              + ", ".join(f"[{s}]" for s in [*_SECTIONS, *_format_tables()]))
        if not isinstance(values, dict):
            raise ConfigError(f"'{table}' must be a table ([{table}]), got {values!r}")
        values = dict(values)
        if table == "model":
            _normalise_model_table(values)
        section = _build_section(cls, values, table)
        if table in _SECTIONS:
            sections[table] = section
        else:
            options[table] = section
    cfg = ExportConfig(**sections, options=options,
                       preprocessing_set=frozenset(tables.get("preprocessing", {})))
    _check(cfg)
    return cfg

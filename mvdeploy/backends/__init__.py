"""The format registry: one line per format, and the spec each format module declares.

Everything about a format lives in its module under `mvdeploy/backends/`: a frozen `SPEC`
(name, suffix, extra, packages, recipes and their evidence, options table, runtimes, rank
limit, outputs, CLI flags) and the functions the pipeline calls by convention:

    convert(job: Job) -> dict                write the artifact; facts for the manifest
    embed_metadata(path, record) -> None     only where SPEC.metadata is true: the record
                                             (labels, preprocessing) in or beside the file
    load(path, *, threads=None, accelerator=None) -> Session
                                             the runtime: NCHW float32 batch -> scores
                                             (a second runtime of the format names its own
                                             loader in its Runtime: ONNX's load_openvino)
    describe(path) -> dict                   inputs, outputs, op histogram, max rank
    snippet(manifest, client=None) -> str    app code, where SPEC.snippet_language is set
                                             (client: one of SPEC.snippet_clients)
    plain_export(module, example, path)      the peer baseline, where SPEC.peer is true
    int8_trials(job, images, workdir) -> Trials
                                             where a recipe is `searched`: its int8
                                             quantiser, tried with some layer groups float

The runtime side (load, describe, snippet) imports no torch, so the bench worker and
`mvdeploy predict` load a runtime alone; converters import torch inside `convert`.
Shared code asks this registry and never names a format. Adding a format is its module, one
line in FORMATS and its extra in pyproject.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from mvdeploy.data import Preprocessing
from mvdeploy.errors import ArtifactError, ConfigError, MissingDependencyError, MvdeployError
from mvdeploy.tensor_names import MASK_NAME, OUTPUT_NAME

if TYPE_CHECKING:
    from mvdeploy.backends.capture import Captured

FORMATS: dict[str, str] = {
    "torch": "mvdeploy.backends.torch",
    "onnx": "mvdeploy.backends.onnx",
    "tflite": "mvdeploy.backends.tflite",
    "coreml": "mvdeploy.backends.coreml",
    "executorch": "mvdeploy.backends.executorch",
}


class BackendUnavailable(MvdeployError):
    """The runtime cannot run here (e.g. Core ML predictions off macOS)."""


@dataclass(frozen=True)
class Package:
    distribution: str  # pip name, and the name importlib.metadata knows
    module: str  # what to import to prove it works
    role: str


@dataclass(frozen=True)
class Recipe:
    """A precision a format can produce, and how the produced file proves it."""

    description: str
    tolerance: str = "quantized"  # "fp32" (relative max abs), "fp16" or "quantized" (SNR)
    calibrated: bool = False  # needs calibration images
    # the format's int8_trials() lets the export search which layer groups stay float until
    # quantize.min_snr_db is met (mvdeploy.pipeline.quantize.search_float_groups)
    searched: bool = False
    evidence: str = ""  # what the file must hold, in words ("int8 weights")
    shows: Callable[[dict], bool] | None = None  # describe() output -> evidence present
    # packages this recipe needs beyond the format's export_needs, with the extra that
    # installs them (e.g. Core ML w8a8 quantises with litert-torch's PT2E quantizer)
    needs: tuple[tuple[Package, str], ...] = ()


@dataclass(frozen=True)
class Outputs:
    """An artifact's output names; `scores` is the numeric one, holding `kind`."""

    names: tuple[str, ...] = (OUTPUT_NAME,)
    scores: str = OUTPUT_NAME
    kind: str = "logits"  # or "probabilities" (softmax folded in), or "mask"


# beside every artifact: the record formats with metadata embed (input and output names,
# labels, preprocessing), for apps that cannot read embedded metadata (onnxruntime's JS API)
APP_METADATA = "app_metadata.json"

# export.mask: every format's one output is the class index per input pixel (segmentation)
MASK_OUTPUTS = Outputs((MASK_NAME,), MASK_NAME, "mask")


@dataclass(frozen=True)
class Flag:
    """A `mvdeploy export` option that sets one key of the format's table."""

    decls: tuple[str, ...]  # e.g. ("--channels-last",)
    key: str  # the options field it sets
    help: str
    is_flag: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Runtime:
    """A runtime `mvdeploy bench` can time this format with."""

    name: str
    targets: tuple[str, ...]  # bench targets it runs on: cpu, cuda, android, apple, aihub
    aliases: tuple[str, ...] = ()
    imports_torch: bool = False  # its Python bindings need torch (timed loads exclude it)
    # a second runtime of the format: the module function that loads it (same signature as
    # load), the package it needs beyond the format's run_needs and the extra installing it
    loader: str = "load"
    needs: tuple[Package, str] | None = None
    default: bool = True  # in a bench's runtimes when --backend is not given


@dataclass(frozen=True)
class CheckContext:
    """Export settings outside a format's table that its checks may depend on."""

    batch: int
    dynamic_batch: bool
    preprocessing: Preprocessing
    task: str = "classification"  # the model's (mvdeploy.tasks)
    mask: bool = False  # export.mask: the artifact outputs a class-index mask, not scores


def _no_check(options: Any, recipe: str | None, ctx: CheckContext) -> None:
    return None


@dataclass(frozen=True)
class FormatSpec:
    name: str
    title: str  # how people write it: "Core ML", "TFLite (LiteRT)"
    suffix: str
    extra: str  # pip install "mvdeploy[extra]"
    export_needs: tuple[Package, ...]  # all of them, to convert
    run_needs: tuple[Package, ...]  # any one of them, to run
    recipes: Mapping[str, Recipe]
    options: type  # frozen dataclass: the format's [name] table in export configs
    default_recipe: Callable[[Any], str] = lambda options: "fp32"
    check: Callable[[Any, str | None, CheckContext], None] = _no_check  # raise ConfigError
    outputs: Callable[[Any], Outputs] = lambda options: Outputs()
    input_layout: Callable[[Any], str] = lambda options: "NCHW"
    max_rank: int | None = None  # the runtime rejects tensors above this rank
    # the model's graph form for this format (models.GraphForm fields; unset: its defaults),
    # chosen by measurement on the format's runtime; model.fold, when set, overrides the fold
    graph_form: Mapping[str, str] = field(default_factory=dict)
    dynamic_batch: bool = False  # can hold a symbolic batch dimension
    metadata: bool = False  # embeds mvdeploy's record in the file (embed_metadata)
    runtimes: tuple[Runtime, ...] = ()
    flags: tuple[Flag, ...] = ()
    snippet_language: str | None = None  # snippet(manifest) writes app code in this language
    # other clients snippet(manifest, client=NAME) writes for: client name -> language
    snippet_clients: Mapping[str, str] = field(default_factory=dict)
    peer: bool = False  # plain_export(): what a user gets by hand, for the peer baseline
    selectable: bool = True  # appears in export.formats (the .pt2 is saved separately)
    default: bool = True  # exported when --format is not given
    cannot_run_here: Callable[[], str | None] = lambda: None  # e.g. needs macOS
    # what computes its numbers where its runtime cannot run (load() falls back to it)
    reference_runtime: str = ""
    # why the runtime cannot use a bench accelerator here (e.g. a missing ORT provider)
    accelerator_unavailable: Callable[[str], str | None] = lambda accelerator: None
    # quantize.calibration_method values its calibrated recipes take; the first is "auto"'s
    calibration_methods: tuple[str, ...] = ()
    # export.layout = "hf": recipe -> the file name (no suffix) Hugging Face clients look for
    # (transformers.js picks it by dtype, optimum by name); empty: not part of that layout
    hf_file_names: Mapping[str, str] = field(default_factory=dict)

    def guess_precision(self, structure: dict) -> str:
        """The most specific recipe whose evidence the file shows (fp32 when none does)."""
        for name, recipe in reversed(list(self.recipes.items())):
            if recipe.shows is not None and recipe.shows(structure):
                return name
        return "fp32"

    def evidence_failure(self, recipe: str, structure: dict) -> str | None:
        """Never a silent float artifact: the recipe's evidence must be in the file."""
        spec = self.recipes[recipe]
        if spec.shows is None or spec.shows(structure):
            return None
        return f"{recipe} artifact has no {spec.evidence}: the recipe did not apply"


@dataclass(frozen=True)
class Calibration:
    images: np.ndarray  # [N, 3, H, W], preprocessed like inference
    names: list[str]


@dataclass(frozen=True)
class QuantizeOptions:
    """What a format's quantiser reads of the export's [quantize] table."""

    per_channel: bool = True  # per-channel weight scales
    calibration_method: str = "auto"  # "auto": the format's first calibration_methods entry
    keep_float: tuple[str, ...] = ()  # op kinds a quantiser that can leaves float (ONNX)


@dataclass(frozen=True)
class ArtifactMetadata:
    """What Xcode and model viewers show (the export's [metadata] table)."""

    author: str = ""  # empty: "mvdeploy <version>"
    license: str = ""
    version: str = ""
    description: str = ""  # empty: model, patch sizes and resolution


@dataclass(frozen=True)
class Job:
    """What a format's convert() gets: its own options and recipe, never the whole config."""

    captured: Captured
    path: Path
    options: Any  # the format's options dataclass
    recipe: str
    quantize: QuantizeOptions  # per-channel, calibration method, what stays float
    calibration: Calibration | None
    preprocessing: Preprocessing
    metadata: ArtifactMetadata
    model: str
    patch: str
    resolution: tuple[int, int]
    float_groups: frozenset[str] = frozenset()  # layer groups the int8 search keeps float


@dataclass
class Session:
    """A loaded artifact. `prepare` converts an NCHW float32 batch to the runtime's feed
    (layout, dtype: outside timing), `infer` is the timed call, `scores` reads float32 scores
    from what `infer` returned."""

    prepare: Callable[[np.ndarray], Any]
    infer: Callable[[Any], Any]
    scores: Callable[[Any], np.ndarray] = field(default=lambda out: out)
    runtime: str = ""  # what ran it, where a format has more than one way ("reference")
    note: str = ""  # what its numbers mean, when that needs saying

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.scores(self.infer(self.prepare(x)))


def get_backend(name: str) -> ModuleType:
    if name not in FORMATS:
        raise ConfigError(f"unknown format {name!r}: choose one of {', '.join(FORMATS)}")
    return importlib.import_module(FORMATS[name])


def spec(name: str) -> FormatSpec:
    return get_backend(name).SPEC


def specs() -> list[FormatSpec]:
    return [spec(name) for name in FORMATS]


def check_recipe(fmt: str, recipe: str) -> None:
    recipes = spec(fmt).recipes
    if recipe not in recipes:
        raise ConfigError(
            f"{fmt} cannot do precision {recipe!r}: choose one of {', '.join(recipes)}"
        )


def needs_calibration(fmt: str, recipe: str) -> bool:
    return spec(fmt).recipes[recipe].calibrated


def calibration_method(fmt: str, method: str) -> str:
    """quantize.calibration_method for `fmt`: "auto" is the format's measured default (the first
    of FormatSpec.calibration_methods)."""
    return spec(fmt).calibration_methods[0] if method == "auto" else method


def tolerance_kind(fmt: str, recipe: str) -> str:
    """'fp32' (relative max abs), 'fp16' or 'quantized' (SNR)."""
    return spec(fmt).recipes[recipe].tolerance


def export_formats() -> tuple[str, ...]:
    """What `export.formats` may list, in registry order."""
    return tuple(s.name for s in specs() if s.selectable)


def default_formats() -> tuple[str, ...]:
    """What `mvdeploy export` writes when --format is not given."""
    return tuple(s.name for s in specs() if s.selectable and s.default)


def format_for_suffix(suffix: str) -> str | None:
    return next((s.name for s in specs() if s.suffix == suffix.lower()), None)


def runtimes() -> dict[str, FormatSpec]:
    """Bench runtime name -> the format it runs."""
    return {r.name: s for s in specs() for r in s.runtimes}


def runtime_aliases() -> dict[str, str]:
    """Other names people type for a runtime: the format's name, and the runtime's aliases."""
    out = {}
    for s in specs():
        for r in s.runtimes:
            out.update({alias: r.name for alias in r.aliases})
        if s.runtimes and s.name not in out and s.name != s.runtimes[0].name:
            out[s.name] = s.runtimes[0].name
    return out


def all_recipes() -> list[str]:
    return list(dict.fromkeys(r for s in specs() for r in s.recipes))


def packages() -> list[tuple[Package, str]]:
    """Every package some format needs, with the extra that installs it (no duplicates)."""
    seen: dict[str, tuple[Package, str]] = {}
    for s in specs():
        for package in (*s.export_needs, *s.run_needs):
            seen.setdefault(package.distribution, (package, s.extra))
    return list(seen.values())


@contextlib.contextmanager
def refused_by_runtime(path: Path, fmt: str) -> Iterator[None]:
    """A file the format's runtime will not load or run (weights missing or truncated, ONNX
    external data missing or outside its folder, a damaged archive) is one line naming the
    file and what the runtime said, exit 2: never an internal error."""
    try:
        yield
    except MvdeployError:
        raise
    except Exception as exc:
        said = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ArtifactError(f"{spec(fmt).title} cannot load or run {path}: {said[:240]} (the "
                            "file is damaged, or misses a file it refers to)") from None


def require(module: str, package: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package, extra, purpose) from None


def decode_record(metadata: dict) -> dict:
    """Formats that store metadata as strings hold mvdeploy's record as JSON: decode it, so
    every backend's describe() returns it as a dict under "mvdeploy"."""
    if isinstance(metadata.get("mvdeploy"), str):
        metadata = {**metadata, "mvdeploy": json.loads(metadata["mvdeploy"])}
    return metadata


def tensor_info(name: str, shape, dtype: str) -> dict:
    return {"name": name, "shape": [int(d) if d is not None else None for d in shape],
            "dtype": dtype}


def float_recipes(fp16_description: str) -> dict[str, Recipe]:
    """fp32 and fp16, as most formats describe them."""
    return {"fp32": Recipe("float32 (no quantisation)", tolerance="fp32"),
            "fp16": Recipe(fp16_description, tolerance="fp16", evidence="float16 tensors",
                           shows=lambda s: s.get("tensor_types", {}).get("float16", 0) > 0)}

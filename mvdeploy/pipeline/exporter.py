"""The export pipeline: model -> capture -> each format -> validate -> manifest, atomically.

Output layout for `out/`:

    out/<stem>.pt2                      the torch.export program every format was made from
    out/<format>/<stem>.<suffix>        the artifact (.onnx, .tflite, .mlpackage)
    out/<format>/app_metadata.json      what an app needs: input, labels, preprocessing
    out/<format>/manifest.json          config, versions, preprocessing, labels, validation

With export.layout = "hf" the ONNX is out/onnx/model.onnx (model_fp16, model_quantized) and
out/ also holds config.json and preprocessor_config.json (hf_layout.py).

Each format is built in a hidden temporary folder and renamed into place only when complete,
so a crash or Ctrl-C never leaves a half-written artifact behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mvdeploy.backends import (
    APP_METADATA,
    MASK_OUTPUTS,
    ArtifactMetadata,
    Calibration,
    Job,
    Outputs,
    QuantizeOptions,
    get_backend,
    needs_calibration,
    require,
    spec,
    tolerance_kind,
)
from mvdeploy.backends.capture import Captured, capture, program_bytes
from mvdeploy.data import (
    EXIF_ORIENTATION,
    Preprocessing,
    find_labelled_images,
    load_images,
)
from mvdeploy.data import normalise as normalise_pixels
from mvdeploy.errors import ConfigError, MvdeployError, NoSpaceError
from mvdeploy.files import failed_for_space, nearly_full, umask, write_atomic
from mvdeploy.isolate import run_isolated
from mvdeploy.models import (
    PATCH_PRESETS,
    GraphForm,
    create_model,
    get_model_cfg,
    parse_patch_sizes,
)
from mvdeploy.models.library_preprocessing import LibraryCheck, check_against_library
from mvdeploy.models.macs import count_macs
from mvdeploy.native_output import redirect_native_output
from mvdeploy.pipeline.config import ExportConfig
from mvdeploy.pipeline.hf_layout import FILES as HF_FILES
from mvdeploy.pipeline.hf_layout import file_stem, write_hf_files
from mvdeploy.pipeline.image_sets import BUNDLED, ImageSet, ImageSets, split_images
from mvdeploy.pipeline.manifest import build_manifest, read_manifest, write_json
from mvdeploy.pipeline.quantize import (
    FidelityTarget,
    FloatSearch,
    augmented_views,
    photometric_views,
    search_float_groups,
)
from mvdeploy.pipeline.validate import (
    DEGENERATE_WARNING,
    Tolerance,
    ValidationReport,
    reference_spread,
    validate,
)
from mvdeploy.tasks import get_task
from mvdeploy.tensor_names import INPUT_NAME
from mvdeploy.version import __version__

Step = Callable[[str], AbstractContextManager]


def model_task(cfg: ExportConfig) -> str:
    """The task the model's head serves (a module of mvdeploy.tasks)."""
    return get_model_cfg(cfg.model.name).task


def no_progress(text: str) -> AbstractContextManager:
    return contextlib.nullcontext()


@dataclass
class FormatResult:
    format: str
    artifact: Path | None = None
    manifest: Path | None = None
    report: ValidationReport | None = None
    error: str | None = None
    log: Path | None = None
    seconds: float = 0.0
    size_bytes: int = 0
    size_ratio_to_fp32: float | None = None
    float_search: FloatSearch | None = None  # what the int8 search kept float, and why
    speed: dict | None = None  # a quantised artifact's latency against its float32 twin

    @property
    def ok(self) -> bool:
        return self.error is None and self.report is not None and self.report.passed


@dataclass
class ExportResult:
    out: Path
    program: Path | None
    formats: list[FormatResult]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.formats)


def artifact_stem(cfg: ExportConfig) -> str:
    """e.g. mobilevit_xxs_B_256x256, or mobilevit_xxs_2x4-2-2_320x256 for custom patches."""
    patches = parse_patch_sizes(cfg.model.patch)
    preset = next((k for k, v in PATCH_PRESETS.items() if v == patches), None)
    tag = preset or "-".join(f"{h}" if h == w else f"{h}x{w}" for h, w in patches)
    height, width = cfg.height_width
    return f"{cfg.model.name}_{tag}_{height}x{width}"


def _check_targets(out: Path, stem: str, cfg: ExportConfig, force: bool) -> None:
    """Before any work: --out must be a folder this process can write in, and free."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output path {out} is a file: choose a directory with --out")
    existing = next(p for p in [out, *out.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, so no folder can be made there")
    try:  # a real probe: permissions, read-only mounts and special filesystems alike
        os.rmdir(tempfile.mkdtemp(prefix=".mvdeploy-probe-", dir=existing))
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot write in {existing} ({exc.strerror}): "
                          "choose another --out") from None
    targets = [out / f for f in cfg.export.formats]
    if cfg.export.save_program:
        targets.append(out / f"{stem}.pt2")
    if cfg.export.layout == "hf":
        targets += [out / name for name in HF_FILES]
    taken = [t for t in targets if _occupied(t)]
    for folder in (t for t in taken if t.is_dir()):
        other = _artifact_in(folder)
        # --force replaces a result, never another one
        if other and Path(other).stem != file_stem(cfg, folder.name, stem):
            raise ConfigError(f"{folder} holds {other}, another model, patch or resolution: "
                              "--force replaces only the same artifact; choose another --out")
    if taken and not force:
        raise ConfigError(f"{', '.join(str(t) for t in taken)} already exist(s): pass --force to "
                          "replace, or choose another --out")


def _artifact_in(folder: Path) -> str | None:
    """The artifact file a format folder's manifest names (None: no readable manifest)."""
    try:
        return read_manifest(folder / "manifest.json").file
    except MvdeployError:
        return None


# what a killed run leaves (SIGKILL, power loss): hidden names that carry the writer's pid —
# format folders (_atomic_dir), files (files.write_atomic: .NAME.PID.RANDOM.partial), logs
_PARTIAL = re.compile(r"^\..*\.partial-(\d+)-|^\..+\.(\d+)\.[^.]+\.partial$"
                      r"|^\.\w+-convert-(\d+)\.log$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_stale(out: Path) -> list[str]:
    """Remove partial files and folders whose writer is gone; returns their names."""
    removed = []
    for path in out.iterdir() if out.is_dir() else []:
        match = _PARTIAL.match(path.name)
        pid = int(next(g for g in match.groups() if g)) if match else None
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def _occupied(path: Path) -> bool:
    """Something is there that a write would replace (an empty folder does not count)."""
    return path.exists() and not (path.is_dir() and not any(path.iterdir()))


def _refuse_if_taken(final: Path, force: bool) -> None:
    if not force and _occupied(final):
        raise ConfigError(f"{final} was written by another export while this one ran: kept it; "
                          "pass --force to replace, or choose another --out")


@contextlib.contextmanager
def _atomic_dir(final: Path, force: bool) -> Iterator[Path]:
    """Yield a hidden sibling folder; on success it replaces `final`, on failure it vanishes.
    Without `force`, a `final` that appeared meanwhile (another export into the same --out) is
    kept and this result is refused."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-{os.getpid()}-",
                                dir=final.parent))
    tmp.chmod(0o777 & ~umask())  # mkdtemp makes it private; the result should not be
    try:
        yield tmp
        _refuse_if_taken(final, force)
        old = None
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
        tmp.rename(final)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _convert(backend, job: Job, record: dict | None) -> dict:
    """Runs in the converter's own process (mvdeploy.isolate): write the artifact and, where
    the format embeds it, the app record (before validation, which then checks the final file).
    """
    export_info = backend.convert(job)
    if record is not None:
        backend.embed_metadata(job.path, record)
    return export_info


@contextlib.contextmanager
def _full_disk_named(out: Path, partial: Path, log: Path, weights_bytes: int
                     ) -> Iterator[None]:
    """A converter that failed or died on a full disk: say so, not what the converter said.
    Asked before the partial output is removed, which would free the space again. Converters
    also write scratch files to TMPDIR, and one that fails there says something else (Core
    ML: "MIL FileWriter unknown error") after removing them: a TMPDIR that cannot hold the
    weights once is taken for the cause."""
    try:
        yield
    except Exception as exc:
        if failed_for_space(exc, partial, log):
            raise NoSpaceError(out) from exc
        scratch = Path(tempfile.gettempdir())
        if nearly_full(scratch, below=weights_bytes):
            raise NoSpaceError(f"{scratch} (TMPDIR, where converters write scratch files)") \
                from exc
        raise


def _preprocessing(cfg: ExportConfig, nhwc: bool) -> dict:
    height, width = cfg.height_width
    return {**asdict(cfg.preprocessing), "input_layout": "NHWC" if nhwc else "NCHW",
            "resize_shorter_side": cfg.preprocessing.shorter_side(height, width),
            "crop": [height, width], "exif_orientation": EXIF_ORIENTATION,
            "origin": cfg.preprocessing_origin}


def preprocessing_warning(prep: Preprocessing, origin: str) -> str:
    """One line: which preprocessing a checkpoint that does not record its own gets."""
    said = (f"{prep.channel_order}, {prep.resample}, crop_pct {prep.crop_pct:.4g}, "
            f"scale {prep.scale:.4g}, mean {list(prep.mean)}, std {list(prep.std)}")
    head = "preprocessing assumed" if origin.startswith("assumed") else "preprocessing"
    return (f"{head}: {said} ({origin}); if the checkpoint was trained otherwise, set "
            "--set preprocessing.KEY=VALUE")


def _app_metadata(cfg: ExportConfig, model_info: dict, labels: list[str] | None,
                  nhwc: bool, outputs: Outputs) -> dict:
    """What an app needs to feed the artifact and read its output, embedded in the file."""
    return {"mvdeploy": __version__, "model": model_info["name"], "task": model_info["task"],
            "patch_sizes": model_info["patch_sizes"], "resolution": model_info["resolution"],
            "input": INPUT_NAME, "output": outputs.scores, "outputs": list(outputs.names),
            "output_kind": outputs.kind, "num_classes": model_info["num_classes"],
            "labels": labels, "preprocessing": _preprocessing(cfg, nhwc),
            **asdict(cfg.metadata)}


def _output_shape(reference: _Reference, batch: int | None, nhwc: bool,
                  outputs: Outputs) -> list:
    """The scores' shape: [B, classes], or per pixel [B, classes, h, w], which an NHWC
    artifact gives as [B, h, w, classes]; a mask is [B, H, W], the input's size."""
    if outputs.kind == "mask":
        return [batch, *reference.inputs["photos"].shape[2:]]
    shape = [batch, *reference.logits["photos"].shape[1:]]
    return [batch, *shape[2:], shape[1]] if nhwc and len(shape) == 4 else shape


# a mask artifact's pixels that are not near ties (in PyTorch's upsampled logits) must take
# PyTorch's class: all but 1 in 1000 in float; quantised, quantize.min_top1_agreement
MASK_MIN_AGREEMENT = 0.999


def _tolerance(cfg: ExportConfig, fmt: str, precision: str, outputs: Outputs) -> Tolerance:
    if outputs.kind == "mask":  # class indices: no scores to measure an SNR on
        quantised = tolerance_kind(fmt, precision) == "quantized"
        return Tolerance(min_top1_agreement=cfg.quantize.min_top1_agreement if quantised
                         else MASK_MIN_AGREEMENT,
                         max_top1_drop=cfg.quantize.max_top1_drop if quantised else None)
    if spec(fmt).recipes[precision].searched:  # the target the search worked to
        return Tolerance(min_snr_db=cfg.quantize.min_snr_db,
                         min_top1_agreement=cfg.quantize.min_top1_agreement,
                         max_top1_drop=cfg.quantize.max_top1_drop)
    kind = tolerance_kind(fmt, precision)
    if kind == "fp16":
        return Tolerance(min_snr_db=cfg.validate.fp16_min_snr_db)
    if kind == "quantized":
        return Tolerance(min_snr_db=cfg.validate.quantized_min_snr_db)
    return Tolerance(max_rel=cfg.validate.fp32_max_rel)


@dataclass(frozen=True)
class _Reference:
    """Validation inputs per set ("photos", "random") and eager PyTorch's logits for them."""

    inputs: dict[str, np.ndarray]
    logits: dict[str, np.ndarray]
    photo_names: list[str]
    unreadable_photos: int
    labelled: Any  # the task's LabelledReference (validate.labelled_images), streamed
    library_check: dict  # the preprocessing against the checkpoint's own library
    # what the float-group search tunes on: never validated, never in `inputs`
    selection: np.ndarray | None = None  # the photos, then selection_views variants of them
    selection_logits: np.ndarray | None = None


def _split_images(cfg: ExportConfig) -> ImageSets:
    """The report photos validation gates on, and, when a recipe needs them, calibration
    photos and the selection photos the float-group search tunes on: disjoint by content
    (mvdeploy.pipeline.image_sets)."""
    calibrate = any(needs_calibration(f, cfg.precision(f)) for f in cfg.export.formats)
    search = any(spec(f).recipes[cfg.precision(f)].searched for f in cfg.export.formats)
    labelled = ([p for p, _ in find_labelled_images(cfg.validate.labelled_images)]
                if cfg.validate.labelled_images and calibrate else [])
    return split_images(report_folder=cfg.validate.images,
                        calibration_folder=cfg.quantize.calibration_images,
                        selection_folder=cfg.quantize.selection_images,
                        calibrate=calibrate, search=search, exclude=labelled,
                        limits={"report": cfg.validate.max_images,
                                "selection": cfg.quantize.selection_samples})


# Below this many images, activation ranges rarely cover what the model meets in use: the
# usual advice (ORT's and PT2E's calibration examples, Q-HyViT) is a few hundred; 32 is the floor.
FEW_CALIBRATION_IMAGES = 32
CALIBRATION_ADVICE = 128  # what the warnings ask for: quantize.calibration_samples' default


def _calibration(cfg: ExportConfig, image_set: ImageSet) -> tuple[Calibration, dict]:
    samples, paths = cfg.quantize.calibration_samples, image_set.paths
    if len(paths) > samples:  # spread over the sorted folder: its first files may be one class
        paths = [paths[i] for i in sorted({round(i * (len(paths) - 1) / (samples - 1))
                                           for i in range(samples)})] if samples > 1 else paths[:1]
    images, used, skipped = _load_set(cfg, replace(image_set, paths=paths), "to calibrate on",
                                      "--calibration", limit=samples)
    info = {"source": image_set.source, "split_with": list(image_set.shared_with),
            "images": len(used), "unreadable": skipped, "names": [p.name for p in used],
            "flat": int(np.sum(np.ptp(images.reshape(*images.shape[:2], -1), axis=2).max(1)
                               == 0))}
    if 0 < len(images) < FEW_CALIBRATION_IMAGES < cfg.quantize.calibration_views:
        images = augmented_views(images, cfg.quantize.calibration_views)
    info["views"] = len(images)  # calibration inputs, augmented views included
    return Calibration(images, [p.name for p in used]), info


def _calibration_warnings(info: dict, sets: ImageSets) -> list[str]:
    """What makes int8 ranges unrepresentative, said before the conversions."""
    said = []
    if info["unreadable"]:
        said.append(f"{info['unreadable']} calibration image(s) could not be read and are not "
                    "used")
    if info["source"] == BUNDLED:  # the default: say what its figure is worth
        tuned = (f", tuned on {len(sets.selection.paths)} other(s)" if sets.selection else "")
        said.append(f"int8 demo: calibrated on {info['images']} bundled sample photo(s){tuned} "
                    f"and graded on {len(sets.report.paths)} more, so its fidelity figure holds "
                    f"for photos like these, not yet for yours; give --calibration a folder of "
                    f"{CALIBRATION_ADVICE} or more photos like your app's (and --images others "
                    f"for the report)")
    elif info["images"] < FEW_CALIBRATION_IMAGES:
        topped = (f", topped up to {info['views']} with crops and mirror images of them"
                  if info.get("views", 0) > info["images"] else "")
        said.append(f"calibrating on {info['images']} image(s) ({info['source']}){topped}: "
                    f"fewer than {FEW_CALIBRATION_IMAGES} photos rarely cover real inputs, so "
                    f"int8 ranges may clip; give --calibration a folder of "
                    f"{CALIBRATION_ADVICE} or more photos like yours")
    if info["flat"]:  # e.g. a 1x1 image, stretched to the input size
        said.append(f"{info['flat']} calibration image(s) are one flat colour after resizing "
                    "(e.g. 1x1 pixel): they tell int8 nothing about real ranges")
    return said


def _load_set(cfg: ExportConfig, image_set: ImageSet, purpose: str, flag: str,
              limit: int | None = None) -> tuple[np.ndarray, list[Path], int]:
    """data.load_images, with an error that names the set and the flag that feeds it."""
    height, width = cfg.height_width
    try:
        return load_images(image_set.paths, height, width, cfg.preprocessing, limit=limit)
    except ConfigError:
        raise ConfigError(f"none of the {len(image_set.paths)} image(s) {purpose} "
                          f"({image_set.source}) could be read: point {flag} at a folder of "
                          "readable photos") from None


def _reference(cfg: ExportConfig, model: torch.nn.Module, sets: ImageSets) -> _Reference:
    height, width = cfg.height_width
    photos, used, skipped = _load_set(cfg, sets.report, "to validate on", "--images",
                                      limit=cfg.validate.max_images)
    inputs = {"photos": photos}
    if cfg.validate.random_inputs:  # random 8-bit images: also valid for image inputs
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (cfg.validate.random_inputs, height, width, 3))
        inputs["random"] = normalise_pixels(pixels.astype(np.uint8), cfg.preprocessing)
    labelled = None
    if cfg.validate.labelled_images:
        labelled = get_task(model_task(cfg)).labelled_reference(
            cfg.validate.labelled_images, model, height, width, cfg.preprocessing)
    selection = selection_logits = None
    if sets.selection is not None:
        flag = "--selection" if cfg.quantize.selection_images else "--calibration"
        selection = _load_set(cfg, sets.selection, "the search would tune on", flag)[0]
        if cfg.quantize.selection_views:
            selection = np.concatenate([selection, photometric_views(
                selection, cfg.quantize.selection_views, cfg.preprocessing)])
    with torch.no_grad():
        logits = {k: model(torch.from_numpy(v)).numpy() for k, v in inputs.items()}
        if selection is not None:
            selection_logits = model(torch.from_numpy(selection)).numpy()
    return _Reference(inputs, logits, [p.name for p in used], skipped, labelled,
                      _library_check(cfg, model, used), selection, selection_logits)


def _take_input_channels(cfg: ExportConfig, model: torch.nn.Module, reference: _Reference
                         ) -> tuple[ExportConfig, _Reference]:
    """export.input_channels: fold a channel flip into the stem, in place. The reference keeps
    the logits of the model as trained; its inputs are flipped to the order the artifacts now
    take, so validation proves the folded artifact is the same function."""
    wanted, trained = cfg.export.input_channels, cfg.preprocessing.channel_order
    if wanted in ("checkpoint", trained):
        return cfg, reference
    model.flip_input_channels_()
    prep = replace(cfg.preprocessing, channel_order=wanted)
    cfg = replace(cfg, preprocessing=prep, preprocessing_origin=(
        f"{cfg.preprocessing_origin}; trained on {trained}, the artifact takes {wanted} "
        "(the flip is folded into the stem convolution)"))
    inputs = {k: np.ascontiguousarray(v[:, ::-1]) for k, v in reference.inputs.items()}
    labelled = reference.labelled and replace(reference.labelled, preprocessing=prep)
    selection = (None if reference.selection is None
                 else np.ascontiguousarray(reference.selection[:, ::-1]))
    return cfg, replace(reference, inputs=inputs, labelled=labelled, selection=selection)


def _library_check(cfg: ExportConfig, model: torch.nn.Module, photos: list[Path]) -> dict:
    if cfg.model.weights is None:
        return asdict(LibraryCheck("", ran=False, note="seeded weights: no checkpoint"))
    if not cfg.validate.check_preprocessing:
        return asdict(LibraryCheck("", ran=False, note="validate.check_preprocessing = false"))
    height, width = cfg.height_width
    return asdict(check_against_library(model.checkpoint["source"], model.checkpoint_path,
                                        model.cfg.name, cfg.preprocessing, photos, height,
                                        width))


@dataclass(frozen=True)
class _Run:
    """What every format of one export shares: built once, passed forward."""

    cfg: ExportConfig  # with the checkpoint's preprocessing resolved
    out: Path
    stem: str
    captures: dict[GraphForm, Captured]  # formats may want different graph forms
    reference: _Reference
    calibration: Calibration | None
    calibration_info: dict | None
    model_info: dict
    labels: list[str] | None
    force: bool  # replace what is in --out
    hf_layout: dict | None  # export.layout = "hf": the files written and their check
    image_sets: dict  # report / selection / calibration: sizes and sources (image_sets)


def graph_form(cfg: ExportConfig, fmt: str) -> GraphForm:
    """The graph form `fmt` is exported in: the one its backend measured fastest on its runtime
    (FormatSpec.graph_form), with the configured fold if model.fold is not auto. MobileViTv2
    exports in one form (V2_FORM: its GroupNorm written out; the fold is always rank 4)."""
    if get_model_cfg(cfg.model.name).family == "v2":
        from mvdeploy.models.mobilevit_v2 import V2_FORM

        return V2_FORM
    form = GraphForm(**spec(fmt).graph_form)
    return form if cfg.model.fold == "auto" else form.with_fold(cfg.model.fold)


def run_export(cfg: ExportConfig, *, force: bool = False, step: Step = no_progress,
               threads: int | None = None,
               warn: Callable[[str], None] = lambda text: None) -> ExportResult:
    """Export every format in `cfg`, validating each against the eager PyTorch model.

    `warn` receives one line for each thing the user should know before trusting the result
    (random weights, a reference model whose output does not depend on its input).
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be at least 1, got {threads}")
    out = Path(cfg.export.out).expanduser()
    stem = artifact_stem(cfg)
    _check_targets(out, stem, cfg, force)
    stale = clean_stale(out)
    if stale:
        warn(f"removed {len(stale)} partial file(s) left in {out} by an interrupted run: "
             + ", ".join(sorted(stale)))
    with redirect_native_output():  # converters print load warnings at import
        for fmt in cfg.export.formats:  # fail before any work if an extra is missing
            get_backend(fmt).check_installed()
            for package, extra in spec(fmt).recipes[cfg.precision(fmt)].needs:
                require(package.module, package.distribution, extra,
                        f"{spec(fmt).title} {cfg.precision(fmt)}")
    height, width = cfg.height_width
    batch = cfg.export.batch

    if cfg.model.weights is None:
        warn("no --weights: exporting seeded random weights, which tell photos apart but "
             "predict nothing meaningful; pass a checkpoint path or hub id for a real model")
    with step(f"Building {cfg.model.name}, patch {cfg.model.patch}, {height}x{width}"):
        model = create_model(cfg.model.name, patch_sizes=cfg.model.patch,
                             weights=cfg.model.weights,
                             num_classes=None if cfg.model.weights else cfg.model.num_classes)
        cfg = cfg.with_checkpoint_preprocessing(model.preprocessing, model.preprocessing_origin)
        sets = _split_images(cfg)
        reference = _reference(cfg, model, sets)  # the model as trained
        cfg, reference = _take_input_channels(cfg, model, reference)
        calibration, calibration_info = (_calibration(cfg, sets.calibration)
                                         if sets.calibration else (None, None))
    if cfg.model.weights is not None and not cfg.preprocessing_origin.startswith("checkpoint"):
        warn(preprocessing_warning(cfg.preprocessing, cfg.preprocessing_origin))
    if reference_spread(reference.logits).degenerate:  # said before the long conversions
        warn(DEGENERATE_WARNING)
    if reference.unreadable_photos:
        warn(f"{reference.unreadable_photos} validation image(s) could not be read and are not "
             "used (see the manifest's validation inputs for the ones that were)")
    for text in _calibration_warnings(calibration_info, sets) if calibration_info else []:
        warn(text)
    macs = count_macs(model, height, width)
    model_info = {
        "name": cfg.model.name, "task": model_task(cfg),
        "patch_sizes": [list(p) for p in model.patch_sizes],
        "resolution": [height, width], "num_classes": model.num_classes,
        "weights": cfg.model.weights, "checkpoint": getattr(model, "checkpoint", None),
        "params": sum(p.numel() for p in model.parameters()),
        "gmacs": round(macs.gmacs, 4), "batch": None if cfg.export.dynamic_batch else batch,
    }
    # torch.export specialises a batch of 1, so a dynamic batch is traced with 2
    example_batch = 2 if cfg.export.dynamic_batch else batch
    example = torch.from_numpy(reference.inputs["photos"][:1]).repeat(example_batch, 1, 1, 1)
    forms = list(dict.fromkeys(graph_form(cfg, fmt) for fmt in cfg.export.formats))
    program_form = model.form if cfg.model.fold == "auto" else \
        model.form.with_fold(cfg.model.fold)  # the .pt2: the model's default form
    if get_model_cfg(cfg.model.name).family == "v2":
        program_form = forms[0]  # v2's export form, which every lowering takes
    if cfg.export.save_program and program_form not in forms:
        forms.append(program_form)
    captures = {}
    for form in forms:  # every form computes the same outputs: one reference serves them all
        with step("Capturing with torch.export"
                  + (f" ({form.fold} fold, {form.tokens} tokens, {form.qkv} qkv)"
                     if len(forms) > 1 else "")):
            model.set_form(form)
            captures[form] = capture(model, example, dynamic_batch=cfg.export.dynamic_batch,
                                     mask=cfg.export.mask)
    out.mkdir(parents=True, exist_ok=True)
    program_path = None
    if cfg.export.save_program:
        with step(f"Saving the program to {out / (stem + '.pt2')}"):
            program_path = out / f"{stem}.pt2"
            # serialised in memory: torch's zip writer aborts the process on a full disk
            data = program_bytes(captures[program_form])
            _refuse_if_taken(program_path, force)
            write_atomic(program_path, data)

    hf_layout = None
    if cfg.export.layout == "hf":
        with step(f"Writing {' and '.join(HF_FILES)} for Hugging Face clients"):
            photos = [p for p in sets.report.paths if p.name in reference.photo_names]
            hf_layout = write_hf_files(out, model, cfg, photos)
    run = _Run(cfg, out, stem, captures, reference, calibration, calibration_info, model_info,
               model.class_labels, force, hf_layout, sets.to_dict())
    results = [_export_format(run, fmt, step=step, threads=threads)
               for fmt in cfg.export.formats]
    return ExportResult(out=out, program=program_path, formats=results)


def _search(run: _Run, backend, job: Job, tmp: Path) -> FloatSearch:
    """Which layer groups int8-static keeps float to meet quantize.min_snr_db, measured with
    the format's own quantiser on the selection photos: never the report photos validation
    then gates on, so the gate measures photos nothing was tuned on."""
    quantize = run.cfg.quantize
    workdir = tmp / ".float-search"
    workdir.mkdir()
    try:
        trials = backend.int8_trials(job, run.reference.selection, workdir)
        return search_float_groups(
            trials, run.reference.selection_logits, get_task(run.model_info["task"]).compare,
            FidelityTarget(quantize.min_snr_db, quantize.min_top1_agreement),
            max_float_groups=quantize.max_float_groups, sensitivity=quantize.sensitivity,
            views=quantize.selection_views,
            say=lambda text: print(text, flush=True))  # into the conversion log
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


SPEED_ROUNDS = 3


def _cpu_runtime(fmt_spec) -> tuple[str | None, str]:
    """The runtime that can time this format on this machine's CPU, or why none can."""
    runtime = next((r.name for r in fmt_spec.runtimes if "cpu" in r.targets), None)
    why = fmt_spec.cannot_run_here() if runtime else f"{fmt_spec.title} has no CPU runtime"
    return (None, why) if why else (runtime, "")


def _compare_speed(run: _Run, backend, job: Job, runtime: str, log: Path,
                   threads: int | None) -> dict:
    """The artifact's latency beside its float32 twin's (what this export gives for fp32), on
    the format's runtime here, in the bench worker: a short check, not the benchmark."""
    from mvdeploy.backends.timing import time_side_by_side

    twin = job.path.with_name(f".fp32-twin{job.path.suffix}")
    run_isolated(_convert, backend, replace(job, recipe="fp32", path=twin,
                                            float_groups=frozenset()), None, log=log)
    threads = threads or min(os.cpu_count() or 1, 4)
    batch = job.captured.example.shape[0]
    try:
        medians = time_side_by_side(runtime, {"int8": job.path, "fp32": twin},
                                    run.reference.inputs["photos"], threads=threads,
                                    batch=batch, rounds=SPEED_ROUNDS)
    except RuntimeError as exc:  # a timing that failed says nothing about the artifact
        return {"measured": False, "why": str(exc)}
    finally:
        twin.unlink(missing_ok=True)
    ratios = [f / q for f, q in zip(medians["fp32"], medians["int8"], strict=True)]
    return {"measured": True, "runtime": runtime, "threads": threads, "rounds": SPEED_ROUNDS,
            "ms": round(float(np.median(medians["int8"])), 3),
            "fp32_ms": round(float(np.median(medians["fp32"])), 3),
            "speedup": round(float(np.median(ratios)), 3),
            "speedup_range": [round(min(ratios), 3), round(max(ratios), 3)]}


def write_sensitivity(folder: Path, search: FloatSearch, title: str) -> None:
    """sensitivity.json and sensitivity.png (when matplotlib is there): each layer group's
    SNR with only it in int8, most harmful first, and what the search kept float."""
    import json

    kept = set(search.best.float_groups)
    rows = [{"group": g, "snr_db": snr, "kept_float": g in kept} for g, snr in search.ranking()]
    write_atomic(folder / "sensitivity.json", json.dumps(
        {"title": title, "target_snr_db": search.target.min_snr_db, "groups": rows},
        indent=1).encode())
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(rows) + 1.2))
    ax.barh([r["group"] for r in rows][::-1], [r["snr_db"] for r in rows][::-1],
            color=["tab:orange" if r["kept_float"] else "tab:blue" for r in rows][::-1])
    ax.axvline(search.target.min_snr_db, color="black", linestyle="--", linewidth=1)
    ax.set_xlabel("logit SNR with only this group in int8 (dB; lower = more sensitive)")
    ax.set_title(f"{title}: orange stays float", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(folder / "sensitivity.png", dpi=110)
    plt.close(fig)


def _export_format(run: _Run, fmt: str, *, step: Step, threads: int | None) -> FormatResult:
    """Convert, validate and write one format into out/<fmt>, atomically."""
    cfg, reference, labels = run.cfg, run.reference, run.labels
    form = graph_form(cfg, fmt)
    model_info = {**run.model_info, "graph_form": form.recorded()}
    final, stem, out = run.out / fmt, file_stem(cfg, fmt, run.stem), run.out
    backend, format_spec = get_backend(fmt), spec(fmt)
    task = get_task(run.model_info["task"])
    options = cfg.format_options(fmt)
    result = FormatResult(fmt)
    start = time.perf_counter()
    log = out / f".{fmt}-convert-{os.getpid()}.log"
    height, width = cfg.height_width
    batch = None if cfg.export.dynamic_batch else cfg.export.batch
    nhwc = format_spec.input_layout(options) == "NHWC"
    input_shape = [batch, height, width, 3] if nhwc else [batch, 3, height, width]
    precision = cfg.precision(fmt)
    uses_calibration = needs_calibration(fmt, precision)
    outputs: Outputs = MASK_OUTPUTS if cfg.export.mask else format_spec.outputs(options)
    expected = reference.logits
    if outputs.kind == "probabilities":
        expected = {k: task.softmax(v) for k, v in expected.items()}
    if outputs.kind == "mask":  # the scores the artifact's argmax reads, at the input's size
        expected = {k: task.upsample(v, height, width) for k, v in expected.items()}
    try:
        with _atomic_dir(final, run.force) as tmp:
            artifact = tmp / f"{stem}{format_spec.suffix}"
            job = Job(captured=run.captures[form], path=artifact, options=options, recipe=precision,
                      quantize=QuantizeOptions(cfg.quantize.per_channel,
                                               cfg.quantize.calibration_method,
                                               cfg.quantize.keep_float),
                      calibration=run.calibration if uses_calibration else None,
                      preprocessing=cfg.preprocessing,
                      metadata=ArtifactMetadata(**asdict(cfg.metadata)),
                      model=cfg.model.name, patch=cfg.model.patch, resolution=(height, width))
            if format_spec.recipes[precision].searched:
                with step(f"Choosing what stays float in {fmt} {precision}"), \
                        redirect_native_output(log):
                    result.float_search = _search(run, backend, job, tmp)
                job = replace(job, float_groups=frozenset(result.float_search.best.float_groups))
            label = f"Converting to {fmt}" + (f" ({precision})" if precision != "fp32" else "")
            app = _app_metadata(cfg, model_info, labels, nhwc, outputs)
            record = app if format_spec.metadata else None
            write_json(tmp / APP_METADATA, app)
            weights_bytes = 4 * model_info["params"]  # float32: what a converter writes once
            with step(label), redirect_native_output(log), \
                    _full_disk_named(out, tmp, log, weights_bytes):
                export_info = run_isolated(_convert, backend, job, record, log=log)
            with step(f"Validating {fmt} against PyTorch"), redirect_native_output(log):
                report = validate(fmt, artifact, task=task,
                                  inputs=reference.inputs,
                                  references=expected, labelled=reference.labelled,
                                  outputs=tuple(outputs.names),
                                  precision=precision, input_shape=input_shape,
                                  output_shape=_output_shape(reference, batch, nhwc, outputs),
                                  batch=batch, max_rank=format_spec.max_rank, threads=threads,
                                  tolerance=_tolerance(cfg, fmt, precision, outputs),
                                  # random noise lies outside what int8 was calibrated on:
                                  # reported, but only photos are held to the tolerance
                                  gated=("photos",) if uses_calibration else None)
            validation = report.to_dict()
            validation["inputs"] = {"photos": reference.photo_names,
                                    "unreadable_photos": reference.unreadable_photos,
                                    "random": cfg.validate.random_inputs,
                                    # disjoint: the gate saw only "report"
                                    "sets": {role: info for role, info in run.image_sets.items()
                                             if role == "report" or uses_calibration}}
            validation["preprocessing_check"] = reference.library_check
            if run.hf_layout and format_spec.hf_file_names:
                validation["hf_layout"] = run.hf_layout
            if uses_calibration:
                export_info["calibration"] = run.calibration_info
            if cfg.quantize.compare_speed and tolerance_kind(fmt, precision) == "quantized":
                runtime, why = _cpu_runtime(format_spec)
                result.speed = {"measured": False, "why": why}
                if runtime:
                    with step(f"Timing {fmt} {precision} against float32"), \
                            redirect_native_output(log):
                        result.speed = _compare_speed(run, backend, job, runtime, log, threads)
                export_info["speed"] = result.speed
            if result.float_search is not None:
                export_info["float_search"] = result.float_search.to_dict()
                if result.float_search.sensitivity:
                    write_sensitivity(tmp, result.float_search, f"{stem} {fmt} {precision}")
            manifest = build_manifest(
                fmt=fmt, artifact=artifact, model_info=model_info, config=cfg.to_dict(),
                preprocessing=_preprocessing(cfg, nhwc), labels=labels, export_info=export_info,
                validation=validation, precision=precision)
            write_json(tmp / "manifest.json", manifest.to_dict())
        result.artifact = final / artifact.name
        result.manifest = final / "manifest.json"
        result.report = report
        result.size_bytes = manifest.size_bytes
        result.size_ratio_to_fp32 = manifest.artifact["size_ratio_to_fp32"]
        log.unlink(missing_ok=True)
        (out / f"{fmt}-error.log").unlink(missing_ok=True)  # from an earlier failed run
    except Exception as exc:
        if isinstance(exc, (MvdeployError, NoSpaceError)):  # the CLI prints it; the run stops
            log.unlink(missing_ok=True)
            raise
        # a converter failure: report it, keep the log, go on with the other formats
        kept = out / f"{fmt}-error.log"
        with open(log, "a") as handle:
            handle.write(traceback.format_exc())
        os.replace(log, kept)
        first = str(exc).strip().splitlines()
        result.error = f"{type(exc).__name__}: {first[0][:200] if first else ''}"
        result.log = kept
    except BaseException:  # Ctrl-C: the partial folder is already gone; drop the log too
        log.unlink(missing_ok=True)
        raise
    result.seconds = round(time.perf_counter() - start, 2)
    return result

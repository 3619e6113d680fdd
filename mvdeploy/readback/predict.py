"""Classify (or segment) photos with an exported artifact, using the preprocessing the
artifact declares.

The preprocessing and labels come from the metadata embedded in the file, not from flags, so
what runs here is what an app reading that metadata would do.
"""

from __future__ import annotations

import io
from dataclasses import fields
from pathlib import Path

import numpy as np

from mvdeploy.backends import get_backend, refused_by_runtime, spec
from mvdeploy.data import Preprocessing, read_image, unreadable_reason
from mvdeploy.errors import ArtifactError, ConfigError
from mvdeploy.native_output import redirect_native_output
from mvdeploy.readback.inspect import inspect_artifact
from mvdeploy.runner import run_batched
from mvdeploy.tasks import DEFAULT_TASK, get_task
from mvdeploy.tensor_names import MASK_NAME, PROBS_NAME


def embedded_metadata(info: dict) -> dict:
    meta = (info.get("metadata") or {}).get("mvdeploy")
    if not meta and info.get("manifest"):  # e.g. Core ML: the manifest beside it
        manifest = info["manifest"]
        model = manifest["model"]
        meta = {"resolution": model["resolution"], "labels": manifest["labels"],
                "preprocessing": manifest["preprocessing"],
                "output_kind": _output_kind(manifest["artifact"].get("outputs") or []),
                **{k: model[k] for k in ("task", "num_classes", "name", "patch_sizes")
                   if k in model}}
        meta["model"] = meta.pop("name", None)
    if not meta and not spec(info["format"]).metadata:  # e.g. the .pt2 beside the formats
        raise ArtifactError(f"{info['file']} is a {spec(info['format']).title} file, which "
                            "holds no preprocessing or labels: predict with one of the "
                            "artifacts mvdeploy export wrote (each has a manifest beside it)")
    if not meta and info.get("manifest_note"):  # the only source, and it does not match
        note = info["manifest_note"].removesuffix("; re-export to get a matching one")
        raise ArtifactError(f"{note}, and it is the only record of the preprocessing: "
                            "re-export")
    if not meta:
        raise ArtifactError(f"{info['file']} carries no mvdeploy metadata and has no manifest "
                            "beside it: export it with mvdeploy")
    _check_record(meta, info)
    return meta


def _output_kind(outputs: list[dict]) -> str:
    """What the artifact's scores output holds, from its name (tensor_names: the names are the
    contract), for records rebuilt from a manifest (formats without embedded metadata)."""
    names = [o.get("name") for o in outputs]
    return "mask" if MASK_NAME in names else "probabilities" if PROBS_NAME in names else "logits"


def _check_record(meta: dict, info: dict) -> None:
    """The record must fit the file it describes: as many labels as outputs, and the input's
    own height and width (a record of another export would classify into the wrong names)."""
    out_shape = (info.get("outputs") or [{}])[0].get("shape") or []  # a classifier: none
    # the class axis: last for [B, classes] and NHWC per-pixel scores, 1 for NCHW ones
    nchw_pixels = len(out_shape) == 4 and meta["preprocessing"].get("input_layout") != "NHWC"
    classes = (out_shape[1] if nchw_pixels else out_shape[-1]) if out_shape else None
    if meta.get("output_kind") == "mask":  # [B, H, W] class indices: no class axis
        classes = None
    labels = meta.get("labels")
    if labels and isinstance(classes, int) and len(labels) != classes:
        raise ArtifactError(f"the record for {info['file']} lists {len(labels)} labels but the "
                            f"model has {classes} outputs: re-export it")
    shape = (info.get("inputs") or [{}])[0].get("shape") or []
    sizes = [d for d in shape[1:] if isinstance(d, int) and d != 3]
    height, width = meta["resolution"]
    if len(sizes) == 2 and sizes != [height, width]:
        raise ArtifactError(f"the record for {info['file']} says {height}x{width} but the "
                            f"model takes {sizes[0]}x{sizes[1]}: re-export it")


def artifact_preprocessing(meta: dict) -> Preprocessing:
    """The Preprocessing an artifact's embedded record declares."""
    names = {f.name for f in fields(Preprocessing)}
    values = {k: v for k, v in meta["preprocessing"].items() if k in names}
    for key in ("mean", "std"):
        values[key] = tuple(values[key])
    return Preprocessing(**values)


def _scores(info: dict, x: np.ndarray) -> np.ndarray:
    """The artifact `info` describes (inspect_artifact), run on `x` at its own batch size."""
    batch = info["inputs"][0]["shape"][0]
    with redirect_native_output(), refused_by_runtime(Path(info["file"]), info["format"]):
        runner = get_backend(info["format"]).load(Path(info["file"]))  # runtimes log on load
        return run_batched(runner, x, batch if isinstance(batch, int) else None)


def _write_images(image: Path, found: dict, folder: Path | None) -> dict:
    """A task's picture results (a segmentation mask) as PNGs named after the photo
    (photo_mask.png), beside it or in `folder`; the result then holds their paths."""
    from PIL import Image

    from mvdeploy.files import write_atomic

    shown = dict(found)
    for key, value in found.items():
        if isinstance(value, Image.Image):
            target = (folder or image.parent) / f"{image.stem}_{key}.png"
            buffer = io.BytesIO()
            value.save(buffer, format="PNG")
            write_atomic(target, buffer.getvalue())
            shown[key] = str(target)
    return shown


def predict(artifact: str | Path, images: list[str | Path], *, top: int = 5,
            masks_dir: str | Path | None = None) -> list[dict]:
    """Per image: the task's prediction (top classes; for segmentation the classes by share of
    pixels and a colour mask PNG, written beside the photo or into `masks_dir`)."""
    if top < 1:
        raise ConfigError("--top must be at least 1")
    if masks_dir is not None:
        masks_dir = Path(masks_dir)
        if masks_dir.exists() and not masks_dir.is_dir():
            raise ConfigError(f"--masks {masks_dir} is a file: give a folder")
        masks_dir.mkdir(parents=True, exist_ok=True)
    info = inspect_artifact(artifact)
    meta = embedded_metadata(info)
    prep = artifact_preprocessing(meta)
    height, width = meta["resolution"]
    arrays, readable, unreadable = [], [], []
    for image in images:  # one bad file costs its own result, not everyone's
        array = read_image(Path(image), height, width, prep)
        if array is None:
            unreadable.append(image)
        else:
            arrays.append(array)
            readable.append(image)
    if not arrays:
        first = unreadable[0]
        raise ConfigError(f"cannot read image {first}: {unreadable_reason(Path(first))}"
                          + (f" (nor {len(unreadable) - 1} others)" if len(unreadable) > 1
                             else ""))
    scores = _scores(info, np.stack(arrays))
    task = get_task(meta.get("task", DEFAULT_TASK))  # files from before tasks: classifiers
    found = task.predictions(scores, meta.get("output_kind", "logits"), meta.get("labels"), top,
                             frame=(height, width))
    results = {image: {"image": str(image), **_write_images(Path(image), one, masks_dir)}
               for image, one in zip(readable, found, strict=True)}
    for image in unreadable:
        results[image] = {"image": str(image), "error": unreadable_reason(Path(image))}
    return [results[image] for image in images]  # in the order given


def fidelity(artifact: str | Path, program: str | Path, images: list[Path]):
    """validate.Metrics of `artifact` against the .pt2 `program` it was exported from, on
    `images` preprocessed as the artifact declares: how it holds on photos of the user's
    choosing, e.g. ones the export never saw. Returns (metrics, images used)."""
    from mvdeploy.data import load_images

    info = inspect_artifact(artifact)
    meta = embedded_metadata(info)
    task = get_task(meta.get("task", DEFAULT_TASK))
    height, width = meta["resolution"]
    x, used, _ = load_images(images, height, width, artifact_preprocessing(meta))  # or raises
    got = _scores(info, x)
    reference = run_batched(get_backend("torch").load(Path(program)), x, 1)
    if meta.get("output_kind", "logits") == "probabilities":  # a mask is compared as it is
        reference = task.softmax(reference)
    return task.compare(reference, got), used

"""Accuracy on a labelled image folder, streamed in batches so memory stays flat.

A folder holds one sub-folder per class. Its name maps to a class index by, in this order,
the model's labels, a class index ("0", "17"), or — for 1000-class models — an ImageNet-1k
WordNet synset id ("n01440764"), in the standard ImageNet-1k index order (sorted synset ids;
the list ships as mvdeploy/imagenet_synsets.txt, from timm's data/_info, Apache-2.0). Images
are read, preprocessed and run `batch_size` at a time, and only each image's top-5 class
indices are kept: a 50,000-image ImageNet validation folder needs no more memory than ten.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from mvdeploy.data import Preprocessing, find_labelled_images, read_image
from mvdeploy.errors import ConfigError

BATCH_SIZE = 32
TOP_K = 5
_SYNSET = re.compile(r"^n\d{8}$")

Runner = Callable[[np.ndarray], np.ndarray]  # NCHW float32 batch -> scores [N, classes]
Progress = Callable[[int, int], None]  # (images done, total)


@lru_cache(maxsize=1)
def imagenet_synsets() -> list[str]:
    text = (resources.files("mvdeploy") / "imagenet_synsets.txt").read_text()
    return text.split()


def class_index(name: str, labels: list[str] | None, num_classes: int) -> int | None:
    """A class folder's index: by label, then class index, then ImageNet-1k synset id."""
    if labels and name in labels:
        return labels.index(name)
    if name.isdigit() and int(name) < num_classes:
        return int(name)
    if num_classes == 1000 and _SYNSET.match(name):
        try:
            return imagenet_synsets().index(name)
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class LabelledImages:
    """(image, true class index) pairs of a folder, in a deterministic order."""

    root: Path
    items: list[tuple[Path, int]]

    def __len__(self) -> int:
        return len(self.items)


def labelled_images(folder: str | Path, labels: list[str] | None, num_classes: int,
                    limit: int | None = None) -> LabelledImages:
    """Map every class folder under `folder` to a class index; `limit` takes that many images
    spread evenly over the whole folder (so every class keeps its share)."""
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    pairs = find_labelled_images(folder)
    names = sorted({name for _, name in pairs})
    index = {name: class_index(name, labels, num_classes) for name in names}
    unknown = [name for name in names if index[name] is None]
    if unknown:
        how = "a label of the model" if labels else "a class index"
        if num_classes == 1000:
            how += " or an ImageNet-1k synset id (n01440764)"
        raise ConfigError(
            f"{len(unknown)} class folder(s) under {folder} match no class: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}; each folder name "
            f"must be {how} (the model has {num_classes} classes)")
    items = [(path, index[name]) for path, name in pairs]  # type: ignore[misc]
    if limit is not None and limit < len(items):
        items = [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]
    return LabelledImages(Path(folder), items)


@dataclass
class Predictions:
    """Top-k class indices of every readable image; unreadable ones are listed, not scored."""

    top: np.ndarray  # [N, k] int, best first
    targets: np.ndarray  # [N] int
    unreadable: list[Path] = field(default_factory=list)

    def accuracy(self) -> dict[str, float | int]:
        n = len(self.targets)
        return {"images": n,
                "top1": float(np.mean(self.top[:, 0] == self.targets)) if n else 0.0,
                "top5": float(np.mean((self.top == self.targets[:, None]).any(1))) if n else 0.0}

    def agreement(self, reference: Predictions) -> dict[str, float]:
        """Same top-1 as the reference; the reference's top-1 within this top-5."""
        n = len(self.targets)
        ref_top1 = reference.top[:, 0]
        return {"top1": float(np.mean(self.top[:, 0] == ref_top1)) if n else 0.0,
                "top5": float(np.mean((self.top == ref_top1[:, None]).any(1))) if n else 0.0}


@dataclass(frozen=True)
class LabelledReference:
    """A labelled folder and PyTorch's predictions on it, to score artifacts against."""

    images: LabelledImages
    height: int
    width: int
    preprocessing: Preprocessing
    predictions: Predictions

    def score(self, run: Runner, batch: int | None) -> dict:
        got = predict_top(run, self.images, self.height, self.width, self.preprocessing,
                          batch=batch)
        ours, ref = got.accuracy(), self.predictions.accuracy()
        return {"images": ours["images"], "unreadable": len(got.unreadable),
                "reference_top1": ref["top1"], "reference_top5": ref["top5"],
                "artifact_top1": ours["top1"], "artifact_top5": ours["top5"],
                "agreement_top1": got.agreement(self.predictions)["top1"]}


def labelled_reference(folder: str | Path, model, height: int, width: int,
                       prep: Preprocessing) -> LabelledReference:
    """Map `folder` to `model`'s classes and stream it through the model once."""
    images = labelled_images(folder, model.class_labels, model.num_classes)
    predictions = predict_top(torch_runner(model), images, height, width, prep)
    return LabelledReference(images, height, width, prep, predictions)


def batches(images: LabelledImages, height: int, width: int, prep: Preprocessing,
            batch_size: int = BATCH_SIZE
            ) -> Iterator[tuple[np.ndarray | None, np.ndarray, list[Path]]]:
    """(inputs [n, 3, H, W] or None, true classes [n], unreadable paths) per batch of files."""
    for start in range(0, len(images.items), batch_size):
        chunk = images.items[start:start + batch_size]
        arrays, targets, unreadable = [], [], []
        for path, target in chunk:
            array = read_image(path, height, width, prep)
            if array is None:
                unreadable.append(path)
            else:
                arrays.append(array)
                targets.append(target)
        yield (np.stack(arrays) if arrays else None), np.array(targets, np.int64), unreadable


def predict_top(run: Runner, images: LabelledImages, height: int, width: int,
                prep: Preprocessing, *, batch: int | None = None,
                progress: Progress | None = None) -> Predictions:
    """Stream `images` through `run`; `batch` is the artifact's fixed batch size, if any."""
    from mvdeploy.validate import run_batched

    tops, targets, unreadable = [], [], []
    done = 0
    for x, y, bad in batches(images, height, width, prep):
        unreadable += bad
        if x is not None:
            scores = run_batched(run, x, batch)
            k = min(TOP_K, scores.shape[1])
            tops.append(np.argsort(-scores, axis=1, kind="stable")[:, :k])
            targets.append(y)
        done += len(y) + len(bad)
        if progress:
            progress(done, len(images))
    if not tops:
        raise ConfigError(f"none of the {len(images)} images under {images.root} could be read")
    return Predictions(np.concatenate(tops), np.concatenate(targets), unreadable)


def torch_runner(model) -> Runner:
    """An eager PyTorch model as a Runner."""
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(x)).numpy()

    return run


def evaluate_artifacts(artifacts: list[str | Path], data: str | Path, *,
                       limit: int | None = None, weights: str | None = None,
                       threads: int | None = None,
                       progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """Top-1/top-5 of each artifact on `data`, with its embedded preprocessing and labels;
    with `weights`, also the PyTorch model's accuracy and the artifact's agreement with it.

    An artifact that cannot run here (e.g. a Core ML program with an op the reference executor
    does not implement) gets an "error" entry instead.
    """
    from mvdeploy.backends import BackendUnavailable, get_backend, refused_by_runtime
    from mvdeploy.inspect import inspect_artifact
    from mvdeploy.native_output import redirect_native_output
    from mvdeploy.predict import artifact_preprocessing, embedded_metadata

    results: list[dict] = []
    references: dict[tuple, Predictions] = {}
    for artifact in artifacts:
        info = inspect_artifact(artifact)
        meta = embedded_metadata(info)
        prep = artifact_preprocessing(meta)
        height, width = meta["resolution"]
        labels = meta.get("labels")
        num_classes = int(meta.get("num_classes") or len(labels or []))
        images = labelled_images(data, labels, num_classes, limit)
        row: dict = {"artifact": info["file"], "format": info["format"],
                     "precision": info["precision"], "data": str(data)}
        batch = info["inputs"][0]["shape"][0]
        report = (lambda done, total, f=info["file"]: progress(f, done, total)) if progress \
            else None
        with redirect_native_output(), \
                refused_by_runtime(Path(info["file"]), info["format"]):  # one line, exit 2
            try:  # runtimes log delegate creation on first use
                run = get_backend(info["format"]).load(Path(info["file"]), threads=threads)
            except BackendUnavailable as exc:
                results.append({**row, "error": str(exc)})
                continue
            predictions = predict_top(run, images, height, width, prep,
                                      batch=batch if isinstance(batch, int) else None,
                                      progress=report)
        row.update(predictions.accuracy(), unreadable=len(predictions.unreadable),
                   unreadable_files=[str(p) for p in predictions.unreadable[:10]])
        if weights:
            # same model, input and folder-to-class mapping: the same reference predictions
            key = (meta["model"], str(meta["patch_sizes"]), height, width, prep,
                   tuple(labels or ()), num_classes)
            if key not in references:
                references[key] = _reference_predictions(meta, weights, images, prep, threads)
            reference = references[key]
            row["reference"] = {k: v for k, v in reference.accuracy().items() if k != "images"}
            row["agreement"] = predictions.agreement(reference)
        results.append(row)
    return results


def _reference_predictions(meta: dict, weights: str, images: LabelledImages,
                           prep: Preprocessing, threads: int | None) -> Predictions:
    import torch

    from mvdeploy.models import create_model

    if threads:
        torch.set_num_threads(threads)
    model = create_model(meta["model"], patch_sizes=[tuple(p) for p in meta["patch_sizes"]],
                         weights=weights)
    if model.num_classes != int(meta["num_classes"]):
        raise ConfigError(f"{weights} has {model.num_classes} classes but the artifact has "
                          f"{meta['num_classes']}: pass the checkpoint it was exported from")
    height, width = meta["resolution"]
    return predict_top(torch_runner(model), images, height, width, prep)

"""The classification task: what a prediction is, how it is scored, and what "agreement"
between an artifact and PyTorch means. A second task (segmentation) is a module beside this.

Scores are [N, classes] logits. Agreement is measured on the top-1 (counting only decisive
inputs, DECISIVE_MARGIN) and top-5, fidelity by SNR and max relative difference (`compare`).
Labelled folders hold one sub-folder per class. Its name maps to a class index by, in this
order, the model's labels, a class index ("0", "17"), or — for 1000-class models — an
ImageNet-1k WordNet synset id ("n01440764"), in the standard ImageNet-1k index order (sorted
synset ids; the list ships as mvdeploy/tasks/imagenet_synsets.txt, from timm's data/_info,
Apache-2.0). Images are read, preprocessed and run `batch_size` at a time, and only each
image's top-5 class indices are kept: a 50,000-image ImageNet validation folder needs no more
memory than ten.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from mvdeploy.data import Preprocessing, find_labelled_images, read_image
from mvdeploy.errors import ConfigError
from mvdeploy.runner import Runner, run_batched

BATCH_SIZE = 32
TOP_K = 5
HEADLINE = "top1"  # the score a labelled folder is judged by (validate: points below PyTorch)
_SYNSET = re.compile(r"^n\d{8}$")

Progress = Callable[[int, int], None]  # (images done, total)


@lru_cache(maxsize=1)
def imagenet_synsets() -> list[str]:
    text = (resources.files("mvdeploy.tasks") / "imagenet_synsets.txt").read_text()
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
    if limit is not None:
        items = spread_evenly(items, limit)
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
    headline: str = HEADLINE

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


def spread_evenly(items: list, limit: int) -> list:
    """`limit` items spread evenly over `items`, first and last included (a folder's first
    files may all be alike); all of them when there are no more than `limit`."""
    if limit >= len(items):
        return items
    return [items[i] for i in np.linspace(0, len(items) - 1, limit).round().astype(int)]


def open_labelled(folder: str | Path, labels: list[str] | None, num_classes: int,
                  limit: int | None = None) -> LabelledImages:
    """`mvdeploy eval`'s data: one sub-folder per class."""
    return labelled_images(folder, labels, num_classes, limit)


def evaluate(run: Runner, images: LabelledImages, num_classes: int, height: int, width: int,
             prep: Preprocessing, *, batch: int | None = None,
             progress: Progress | None = None) -> Predictions:
    """`mvdeploy eval`: top-1 / top-5 of `run` on `images`, streamed."""
    return predict_top(run, images, height, width, prep, batch=batch, progress=progress)


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


SNR_CAP_DB = 300.0  # identical outputs: report this instead of infinity (JSON has no inf)
# An input whose reference top-1 leads its runner-up by less than this share of the spread (std)
# of its logits is a near tie: any rounding may swap the two, so the top-1 tolerance counts only
# decisive inputs. Trained classifiers are rarely this close; mvdeploy's seeded weights, whose
# 1000 logits are spread like random numbers, often are (6 bundled photos: gaps 0.003-0.8 std).
DECISIVE_MARGIN = 0.1


@dataclass(frozen=True)
class Metrics:
    samples: int
    # the score metrics are None for an artifact that outputs a segmentation mask (no scores)
    max_abs: float | None
    max_rel: float | None  # max_abs / max |reference|
    rel_l2: float | None
    snr_db: float | None
    cosine: float | None
    top1_agreement: float
    top5_agreement: float | None  # inputs whose reference top-1 is in the artifact's top 5
    decisive: int = 0  # inputs whose reference top-1 is not a near tie (DECISIVE_MARGIN)
    top1_agreement_decisive: float = 1.0  # top-1 agreement on those
    # segmentation (tasks/segmentation.py reads every pixel as a row of scores): the mIoU of
    # the artifact's argmax masks against the reference's; None for classification
    mask_miou: float | None = None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, classes] scores, stable for large logits."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def predictions(scores: np.ndarray, output_kind: str, labels: list[str] | None,
                top: int, frame: tuple[int, int] | None = None) -> list[dict]:
    """What `mvdeploy predict` reports per image: the top classes with their probability."""
    probs = softmax(scores) if output_kind == "logits" else scores
    return [{"top": [{"class": int(i), "label": labels[i] if labels else f"class {i}",
                      "probability": float(p[i])} for i in np.argsort(-p)[:top]]}
            for p in probs]


def decisive_rows(ref: np.ndarray) -> np.ndarray:
    """Which rows of reference scores [N, classes] have a top-1 that is not a near tie: the two
    best classes at least DECISIVE_MARGIN row standard deviations apart."""
    top2 = np.sort(ref, axis=1)[:, -2:] if ref.shape[1] > 1 else np.zeros((len(ref), 2))
    return (top2[:, 1] - top2[:, 0]) >= DECISIVE_MARGIN * ref.std(axis=1)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Metrics:
    """Metrics of `candidate` against `reference`, both [N, classes]."""
    ref = reference.astype(np.float64).reshape(len(reference), -1)
    out = candidate.astype(np.float64).reshape(len(candidate), -1)
    err = out - ref
    signal, noise = float((ref**2).sum()), float((err**2).sum())
    snr = SNR_CAP_DB if noise == 0 else min(SNR_CAP_DB, 10 * math.log10(max(signal, 1e-30) / noise))
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
    same_top1 = ref.argmax(1) == out.argmax(1)
    decisive = decisive_rows(ref)
    cosine = float(np.mean((ref * out).sum(axis=1) / np.maximum(norms, 1e-30)))
    max_abs = float(np.abs(err).max())
    return Metrics(
        samples=len(ref),
        max_abs=max_abs,
        max_rel=max_abs / max(float(np.abs(ref).max()), 1e-30),
        rel_l2=float(np.sqrt(noise) / max(np.sqrt(signal), 1e-30)),
        snr_db=round(snr, 2),
        cosine=cosine,
        top1_agreement=float(np.mean(same_top1)),
        top5_agreement=float(np.mean([r in top for r, top in zip(
            ref.argmax(1), np.argsort(-out, axis=1)[:, :5], strict=True)])),
        decisive=int(decisive.sum()),
        top1_agreement_decisive=float(np.mean(same_top1[decisive])) if decisive.any() else 1.0,
    )

"""The segmentation task: per-pixel class scores [N, classes, H, W], their argmax masks, and how
an artifact's masks are compared with PyTorch's and scored against ground truth.

Agreement is classification's, read per pixel: each pixel is a row of class scores, so SNR and
max relative difference are those of the whole logit tensor, "top-1 agreement" is the share of
pixels whose class is the same (pixel agreement), and a pixel whose two best classes nearly tie
is not decisive. On top, `mask_miou` is the mIoU of the artifact's masks against PyTorch's.

Ground truth comes in PASCAL VOC's layout: `JPEGImages/<id>.jpg` beside
`SegmentationClass/<id>.png` (palette PNGs whose pixel values are class indices, 255 = void,
not scored), optionally listed by `ImageSets/Segmentation/val.txt`. Scores are accumulated in a
confusion matrix, so a folder of any size is streamed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image

from mvdeploy.errors import ConfigError
from mvdeploy.tasks import classification
from mvdeploy.tasks.classification import Metrics

VOID = 255  # PASCAL VOC's "not labelled" (object borders): never scored
IMAGE_DIR, MASK_DIR, LIST_FILE = "JPEGImages", "SegmentationClass", "ImageSets/Segmentation"


def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the class axis of [N, classes, H, W] scores."""
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def masks(scores: np.ndarray) -> np.ndarray:
    """[N, classes, H, W] scores -> [N, H, W] class indices (uint8 where they fit)."""
    out = scores.argmax(axis=1)
    return out.astype(np.uint8) if scores.shape[1] <= 256 else out


def _pixels(scores: np.ndarray) -> np.ndarray:
    """[N, C, H, W] -> [N*H*W, C]: one row of class scores per pixel."""
    return np.moveaxis(scores, 1, -1).reshape(-1, scores.shape[1])


def compare(reference: np.ndarray, candidate: np.ndarray) -> Metrics:
    """`candidate`'s scores against `reference`'s, both [N, classes, H, W]."""
    if reference.ndim != 4 or reference.shape != candidate.shape:
        raise ValueError(f"segmentation scores must be two [N, classes, H, W] arrays of one "
                         f"shape, got {reference.shape} and {candidate.shape}")
    per_pixel = classification.compare(_pixels(reference), _pixels(candidate))
    confusion = ConfusionMatrix(reference.shape[1])
    confusion.update(masks(candidate), masks(reference))
    return replace(per_pixel, samples=len(reference), mask_miou=confusion.miou())


def one_class_everywhere(reference: np.ndarray) -> bool:
    """The degenerate guard for masks: every pixel of every input is the same class, so an
    artifact that predicted that class everywhere would agree on every pixel."""
    found = masks(reference)
    return bool((found == found.flat[0]).all())


@dataclass
class ConfusionMatrix:
    """Counts of (predicted, true) class pairs over every scored pixel; void pixels skipped."""

    num_classes: int

    def __post_init__(self) -> None:
        self.counts = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, predicted: np.ndarray, truth: np.ndarray) -> None:
        if predicted.shape != truth.shape:
            raise ValueError(f"mask shapes differ: {predicted.shape} vs {truth.shape}")
        keep = truth != VOID
        t, p = truth[keep].astype(np.int64), predicted[keep].astype(np.int64)
        if t.size and (t.max() >= self.num_classes or t.min() < 0):
            raise ValueError(f"a mask holds class {int(t.max())}, but the model has "
                             f"{self.num_classes} classes (void is {VOID})")
        self.counts += np.bincount(p * self.num_classes + t,
                                   minlength=self.num_classes ** 2).reshape(self.counts.shape)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class neither predicted nor present."""
        hits = np.diag(self.counts).astype(np.float64)
        union = self.counts.sum(0) + self.counts.sum(1) - hits
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, hits / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that occur (in the truth or the prediction)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if not np.isnan(iou).all() else 0.0

    def pixel_accuracy(self) -> float:
        total = int(self.counts.sum())
        return float(np.trace(self.counts) / total) if total else 0.0


def voc_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) pairs of a PASCAL VOC-layout folder: the ids of
    ImageSets/Segmentation/val.txt if present, else every mask that has an image."""
    root = Path(folder)
    images, labels = root / IMAGE_DIR, root / MASK_DIR
    if not (images.is_dir() and labels.is_dir()):
        raise ConfigError(f"{root} is not a PASCAL VOC-layout folder: expected {IMAGE_DIR}/ "
                          f"(photos) and {MASK_DIR}/ (PNG masks, 255 = void) inside it")
    listing = root / LIST_FILE / "val.txt"
    if listing.is_file():
        ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    else:
        ids = sorted(p.stem for p in labels.glob("*.png"))
    pairs, missing = [], []
    for stem in ids:
        image = next((images / f"{stem}{s}" for s in (".jpg", ".jpeg", ".png")
                      if (images / f"{stem}{s}").is_file()), None)
        mask = labels / f"{stem}.png"
        if image is None or not mask.is_file():
            missing.append(stem)
        else:
            pairs.append((image, mask))
    if missing:
        raise ConfigError(f"{root}: {len(missing)} id(s) lack a photo or a mask, e.g. "
                          f"{missing[0]!r} (each needs {IMAGE_DIR}/<id>.jpg and "
                          f"{MASK_DIR}/<id>.png)")
    if not pairs:
        raise ConfigError(f"{root} holds no image/mask pairs")
    return pairs


def read_mask(path: Path) -> np.ndarray:
    """A ground-truth mask as class indices: a palette PNG's indices, or a grey PNG's values."""
    with Image.open(path) as image:
        if image.mode not in ("P", "L"):
            raise ConfigError(f"{path} is a {image.mode} image: a mask must be a palette or "
                              "greyscale PNG whose pixel values are class indices")
        return np.asarray(image, dtype=np.uint8)


def voc_palette() -> list[int]:
    """PASCAL VOC's colour map (class i -> the bits of i spread over R, G and B, as the VOC
    devkit's labelcolormap builds it): background black, void (255) cream."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def colour_mask(mask: np.ndarray) -> Image.Image:
    """A [H, W] class-index mask as a palette PNG image in VOC's colours (what `predict`
    writes beside a photo; its pixel values stay the class indices)."""
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(voc_palette())
    return image

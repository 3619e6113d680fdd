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


def compare_masks(reference: np.ndarray, candidate: np.ndarray) -> Metrics:
    """A mask artifact's [N, H, W] classes against `reference` scores [N, classes, H, W] (the
    logits its argmax reads, upsampled to the input): pixel agreement, counted on the pixels
    whose two best reference classes are not near ties, and mask mIoU. A reference mask
    [N, H, W] (the .pt2 of a mask export) counts every pixel. A mask has no scores, so the
    score metrics are None."""
    sized = reference.shape[:1] + reference.shape[2:] if reference.ndim == 4 else reference.shape
    if reference.ndim not in (3, 4) or candidate.shape != sized:
        raise ValueError(f"a mask [N, H, W] is compared with scores [N, classes, H, W] or a "
                         f"mask, got {candidate.shape} and {reference.shape}")
    found = candidate.reshape(-1)
    if reference.ndim == 4:
        rows = _pixels(reference).astype(np.float64)
        truth, classes = rows.argmax(1), reference.shape[1]
        decisive = classification.decisive_rows(rows)
    else:
        truth = reference.reshape(-1)
        classes, decisive = int(max(truth.max(), found.max())) + 1, np.ones(len(truth), bool)
    same = found == truth
    confusion = ConfusionMatrix(classes)
    confusion.update(candidate, truth.reshape(candidate.shape))
    return Metrics(samples=len(reference), max_abs=None, max_rel=None, rel_l2=None,
                   snr_db=None, cosine=None, top1_agreement=float(same.mean()),
                   top5_agreement=None, decisive=int(decisive.sum()),
                   top1_agreement_decisive=float(same[decisive].mean()) if decisive.any()
                   else 1.0, mask_miou=confusion.miou())


def compare(reference: np.ndarray, candidate: np.ndarray) -> Metrics:
    """`candidate`'s scores against `reference`'s, both [N, classes, H, W]; a candidate
    [N, H, W] is a mask artifact's classes (compare_masks)."""
    if candidate.ndim == 3:
        return compare_masks(np.asarray(reference), np.asarray(candidate))
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


# --- what the rest of mvdeploy asks of a task (mvdeploy.tasks) -------------------------------

HEADLINE = "miou"  # the score a labelled folder is judged by (validate: points below PyTorch)


def upsample(scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """[N, C, h, w] scores -> [N, C, height, width], bilinearly (align_corners=False), as
    transformers' post_process_semantic_segmentation and ml-cvnets' evaluation do before the
    argmax: masks are then read in the frame of the image the model saw."""
    import torch
    import torch.nn.functional as F

    if scores.shape[2:] == (height, width):
        return scores
    with torch.no_grad():
        return F.interpolate(torch.from_numpy(np.ascontiguousarray(scores, np.float32)),
                             size=(height, width), mode="bilinear",
                             align_corners=False).numpy()


def predictions(scores: np.ndarray, output_kind: str, labels: list[str] | None, top: int,
                frame: tuple[int, int] | None = None) -> list[dict]:
    """What `mvdeploy predict` reports per image: the `top` classes by share of pixels, and
    the mask as a VOC-coloured PNG (an Image value: predict writes it beside the photo) in the
    frame the model saw (`frame` = its input height and width)."""
    if output_kind == "mask":  # the artifact took the argmax itself, at the input's size
        found_masks = scores.astype(np.uint8) if scores.max(initial=0) < 256 else scores
    else:
        found_masks = masks(upsample(scores, *frame) if frame is not None else scores)
    found = []
    for mask in found_masks:
        classes, counts = np.unique(mask, return_counts=True)
        order = np.argsort(-counts, kind="stable")[:top]
        found.append({
            "classes": [{"class": int(classes[i]),
                         "label": labels[classes[i]] if labels else f"class {classes[i]}",
                         "share": round(float(counts[i] / mask.size), 4)} for i in order],
            "mask": colour_mask(mask)})
    return found


def read_pair(image_path: Path, mask_path: Path, height: int, width: int, prep
              ) -> tuple[np.ndarray, np.ndarray] | None:
    """A photo preprocessed as the model takes it and its mask put through the same resize
    and crop (nearest, so labels stay labels); None when either cannot be read."""
    from PIL import UnidentifiedImageError

    from mvdeploy.data import normalise, resize_and_crop, to_rgb, upright

    try:
        with Image.open(image_path) as image:
            photo = to_rgb(upright(image))
        truth = Image.fromarray(read_mask(mask_path))
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
    if truth.size != photo.size:
        raise ConfigError(f"{mask_path} is {truth.size[0]}x{truth.size[1]} but its photo "
                          f"{image_path.name} is {photo.size[0]}x{photo.size[1]}: a mask must "
                          "have its photo's size")
    rgb = resize_and_crop(photo, height, width, prep)
    truth = resize_and_crop(truth, height, width, prep, resample="nearest")
    return normalise(np.asarray(rgb), prep), np.asarray(truth, dtype=np.uint8)


@dataclass
class MaskScores:
    """What a run over a VOC folder leaves: the confusion against the truth, and the masks at
    the model's output resolution (small: a 512² input gives 32² masks) for agreement."""

    confusion: ConfusionMatrix
    found: list[np.ndarray]  # empty for a mask artifact: its masks are input-sized
    unreadable: list[Path]
    images: int = 0

    def accuracy(self) -> dict:
        return {"images": self.images, "miou": self.confusion.miou(),
                "pixel_accuracy": self.confusion.pixel_accuracy()}

    def agreement(self, reference: MaskScores) -> dict:
        """Share of output pixels whose class equals the reference's, and the mIoU of these
        masks against the reference's (None for a mask artifact, whose input-sized masks
        validation compares on the photos instead)."""
        if not self.found:
            return {"pixels": None, "mask_miou": None}
        same = ConfusionMatrix(self.confusion.num_classes)
        hits = total = 0
        for ours, theirs in zip(self.found, reference.found, strict=True):
            same.update(ours, theirs)
            hits += int((ours == theirs).sum())
            total += ours.size
        return {"pixels": hits / total if total else 0.0, "mask_miou": same.miou()}


def score_folder(run, pairs: list[tuple[Path, Path]], num_classes: int, height: int,
                 width: int, prep, *, batch: int | None = None, progress=None,
                 batch_size: int = 8) -> MaskScores:
    """Stream `pairs` through `run` (an NCHW batch -> [N, C, h, w] scores), `batch_size` at a
    time: upsample to the input frame, argmax, count against the truth."""
    from mvdeploy.runner import run_batched

    confusion, found, unreadable, scored = ConfusionMatrix(num_classes), [], [], 0
    for start in range(0, len(pairs), batch_size):
        chunk, xs, truths = pairs[start:start + batch_size], [], []
        for image_path, mask_path in chunk:
            pair = read_pair(image_path, mask_path, height, width, prep)
            if pair is None:
                unreadable.append(image_path)
            else:
                xs.append(pair[0])
                truths.append(pair[1])
        if xs:
            scores = run_batched(run, np.stack(xs), batch)
            scored += len(scores)
            if scores.ndim == 3:  # a mask artifact (export.mask): classes at the input's size
                confusion.update(scores, np.stack(truths))
            else:
                confusion.update(masks(upsample(scores, height, width)), np.stack(truths))
                found += list(masks(scores))
        if progress:
            progress(min(start + batch_size, len(pairs)), len(pairs))
    if not scored:
        raise ConfigError(f"none of the {len(pairs)} photos could be read")
    return MaskScores(confusion, found, unreadable, scored)


@dataclass(frozen=True)
class LabelledReference:
    """A VOC-layout folder and PyTorch's masks on it, to score artifacts against."""

    pairs: list[tuple[Path, Path]]
    num_classes: int
    height: int
    width: int
    preprocessing: object
    reference: MaskScores
    headline: str = HEADLINE

    def score(self, run, batch: int | None) -> dict:
        got = score_folder(run, self.pairs, self.num_classes, self.height, self.width,
                           self.preprocessing, batch=batch)
        ours, ref = got.accuracy(), self.reference.accuracy()
        return {"images": ours["images"], "unreadable": len(got.unreadable),
                "reference_miou": ref["miou"], "artifact_miou": ours["miou"],
                "reference_pixel_accuracy": ref["pixel_accuracy"],
                "artifact_pixel_accuracy": ours["pixel_accuracy"],
                "agreement_pixels": got.agreement(self.reference)["pixels"]}


def labelled_reference(folder: str | Path, model, height: int, width: int,
                       prep) -> LabelledReference:
    """`folder` (PASCAL VOC layout) streamed through the eager model once."""
    from mvdeploy.tasks.classification import torch_runner

    pairs = voc_pairs(folder)
    reference = score_folder(torch_runner(model), pairs, model.num_classes, height, width, prep)
    return LabelledReference(pairs, model.num_classes, height, width, prep, reference)


def open_labelled(folder: str | Path, labels: list[str] | None, num_classes: int,
                  limit: int | None = None) -> list[tuple[Path, Path]]:
    """`mvdeploy eval`'s data: a VOC-layout folder's (photo, mask) pairs."""
    pairs = voc_pairs(folder)
    return classification.spread_evenly(pairs, limit) if limit else pairs


def evaluate(run, pairs: list[tuple[Path, Path]], num_classes: int, height: int, width: int,
             prep, *, batch: int | None = None, progress=None) -> MaskScores:
    """`mvdeploy eval`: mIoU and pixel accuracy of `run` on `pairs`, streamed."""
    return score_folder(run, pairs, num_classes, height, width, prep, batch=batch,
                        progress=progress)


def write_voc(out: str | Path, images: np.ndarray, found: np.ndarray) -> Path:
    """A PASCAL VOC-layout folder that `mvdeploy eval --task segmentation` reads:
    JPEGImages/<n>.png (lossless, so the photo is exactly `images[n]`, RGB uint8) and
    SegmentationClass/<n>.png (`found[n]` as a palette mask in VOC colours)."""
    out = Path(out)
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (out / MASK_DIR).mkdir(parents=True, exist_ok=True)
    for n, (image, mask) in enumerate(zip(images, found, strict=True)):
        Image.fromarray(image).save(out / IMAGE_DIR / f"{n:04}.png")
        colour_mask(mask).save(out / MASK_DIR / f"{n:04}.png")
    return out

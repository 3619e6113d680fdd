"""Quantisation in the export pipeline: calibration views, and the search for what stays float.

Which recipes a format offers, and how its file proves them, is in the format's SPEC (asked
through mvdeploy.backends: check_recipe, needs_calibration, ...); the PT2E quantiser the
formats that quantise in PyTorch share is mvdeploy.backends.pt2e.

The search (`search_float_groups`) is format-free: a format that offers it hands over
`Trials`, its own quantiser run on its own runtime or a faithful simulation of it, and the
search asks them for logits with some layer groups left in float.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np

# the task's compare(reference, candidate) -> Metrics (snr_db, top1_agreement_decisive)
Compare = Callable[[np.ndarray, np.ndarray], Any]


# "auto" is each format's measured default (FormatSpec.calibration_methods[0])
CALIBRATION_METHODS = ("auto", "minmax", "entropy", "percentile", "histogram")
KEEP_FLOAT_CHOICES = ("softmax", "layernorm", "attention", "activations")


def augmented_views(images: np.ndarray, count: int, seed: int = 0) -> np.ndarray:
    """`images` followed by random resized crops (half to all of each side) and mirror images
    of them, up to `count` in all: a few photos then cover more of the ranges and positions a
    model meets. Deterministic for a seed."""
    import torch
    import torch.nn.functional as F

    n, _, height, width = images.shape
    views = list(images[:count])
    rng = np.random.default_rng(seed)
    while len(views) < count:
        image = images[len(views) % n]
        scale = rng.uniform(0.5, 1.0)
        h, w = max(1, round(height * scale)), max(1, round(width * scale))
        top, left = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        crop = torch.from_numpy(np.ascontiguousarray(image[:, top:top + h, left:left + w]))
        view = F.interpolate(crop[None], size=(height, width), mode="bilinear",
                             align_corners=False)[0].numpy()
        views.append(view[:, :, ::-1] if rng.random() < 0.5 else view)
    return np.ascontiguousarray(np.stack(views), dtype=np.float32)


# Pillow's ImageEnhance factors the selection's variants draw from: colour saturation (0 is
# greyscale), brightness and contrast. Photos a user's app meets differ from a few tuning
# photos in these more than in framing, and on input-sensitive weights they are what pushes
# activations past the calibrated ranges (a saturated flower went 2-3x past them in the last
# stages and lost 17 dB more than the tuning photos: docs/quantisation.md).
PHOTOMETRIC_FACTORS = {"colour": (0.0, 2.5), "brightness": (0.7, 1.3), "contrast": (0.6, 1.5)}
_LUMA = {"RGB": (0.299, 0.587, 0.114), "BGR": (0.114, 0.587, 0.299)}  # ITU-R 601, as Pillow


def photometric_views(images: np.ndarray, count: int, prep, seed: int = 1) -> np.ndarray:
    """`count` variants of the preprocessed `images` (cycled), each with a random colour
    saturation, brightness and contrast, computed as Pillow's ImageEnhance does but on the
    0..255 pixels recovered from `prep` (a data.Preprocessing). Deterministic for a seed."""
    mean = np.asarray(prep.mean, np.float64)[:, None, None]
    std = np.asarray(prep.std, np.float64)[:, None, None]
    if prep.channel_order == "BGR":  # mean and std are given in RGB order, like the photo
        mean, std = mean[::-1], std[::-1]
    luma = np.asarray(_LUMA[prep.channel_order])[:, None, None]
    rng = np.random.default_rng(seed)
    views = []
    for i in range(count):
        colour, brightness, contrast = (rng.uniform(*PHOTOMETRIC_FACTORS[k])
                                        for k in ("colour", "brightness", "contrast"))
        pixels = (images[i % len(images)] * std + mean) / prep.scale
        grey = (luma * pixels).sum(0, keepdims=True)
        pixels = (grey + colour * (pixels - grey)).clip(0, 255) * brightness
        level = (luma * pixels.clip(0, 255)).sum(0).mean()
        pixels = (level + contrast * (pixels.clip(0, 255) - level)).clip(0, 255)
        views.append((pixels * prep.scale - mean) / std)
    return np.ascontiguousarray(np.stack(views), dtype=np.float32)


# ---------------------------------------------------------------- the search


@dataclass(frozen=True)
class FidelityTarget:
    """What a quantised artifact must keep on held-out photos, against float PyTorch."""

    min_snr_db: float
    min_top1_agreement: float

    def met(self, snr_db: float, top1_agreement: float) -> bool:
        return snr_db >= self.min_snr_db and top1_agreement >= self.min_top1_agreement


class Trials(Protocol):
    """A format's own int8 quantiser, run on held-out photos: logits with `float_groups` left
    float, or with `only` that one group quantised (its sensitivity)."""

    groups: list[str]  # the layer groups its graph holds, in graph order
    # dB the search adds to the target when the trials simulate the runtime rather than run it
    margin_db: float

    def logits(self, float_groups: frozenset[str] = frozenset(),
               only: str | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class Attempt:
    float_groups: tuple[str, ...]
    snr_db: float
    # on the inputs that are not near ties (tasks.classification.DECISIVE_MARGIN)
    top1_agreement: float
    met: bool


@dataclass
class FloatSearch:
    """What the search tried, in order, and each group's sensitivity when it was measured."""

    target: FidelityTarget
    groups: list[str]
    max_float_groups: int
    attempts: list[Attempt] = field(default_factory=list)
    sensitivity: dict[str, float] = field(default_factory=dict)  # group -> SNR dB, alone int8
    images: int = 0  # selection photos the tries were measured on
    views: int = 0  # photometric variants of them measured beside them (photometric_views)

    @property
    def reached(self) -> bool:
        return any(a.met for a in self.attempts)

    @property
    def best(self) -> Attempt:
        """The attempt that met the target with the fewest groups float, else the closest."""
        met = [a for a in self.attempts if a.met]
        if met:
            return min(met, key=lambda a: (len(a.float_groups), -a.snr_db))
        return max(self.attempts, key=lambda a: a.snr_db)

    def ranking(self) -> list[tuple[str, float]]:
        """Groups by sensitivity, the most harmful (lowest SNR when alone int8) first."""
        return sorted(self.sensitivity.items(), key=lambda item: item[1])

    def to_dict(self) -> dict:
        best = self.best
        return {"target": asdict(self.target), "reached": self.reached,
                "float_groups": list(best.float_groups), "snr_db": best.snr_db,
                "top1_agreement": best.top1_agreement, "tries": len(self.attempts),
                "max_float_groups": self.max_float_groups, "groups": len(self.groups),
                "selection_images": self.images, "selection_views": self.views,
                "attempts": [{**asdict(a), "float_groups": list(a.float_groups)}
                             for a in self.attempts],
                "sensitivity": [{"group": g, "snr_db": snr} for g, snr in self.ranking()]}


def _noise(snr_db: float) -> float:
    return 10 ** (-snr_db / 10)


def search_float_groups(trials: Trials, reference: np.ndarray, compare: Compare,
                        target: FidelityTarget, *,
                        max_float_groups: int, sensitivity: bool = False, views: int = 0,
                        say: Callable[[str], None] = lambda text: None) -> FloatSearch:
    """Quantise everything; while the target is missed, keep the most sensitive groups float.

    Each group's sensitivity is the SNR of the model with that group alone in int8. Quantisation
    noise from different layers adds up roughly in power, so the noise left after keeping the
    k most harmful groups float is predicted as the sum of the others'; the search tries the
    smallest k predicted to meet the target, and, when a try misses, scales the prediction by
    what it measured and tries again with more, up to `max_float_groups`. Once a try meets the
    target it bisects down to the fewest groups that still do. `views`: how many of the last
    `reference` rows are photometric variants of the photos before them; the target must then
    hold on both.
    """
    search = FloatSearch(target, list(trials.groups), max_float_groups,
                         images=len(reference) - views, views=views)
    aim = replace(target, min_snr_db=target.min_snr_db + trials.margin_db)

    photos = len(reference) - views

    def measure(logits: np.ndarray) -> tuple[float, float]:
        """SNR and decisive top-1 agreement, the worse of the photos' and the variants': pooled,
        the variants' larger logits would outweigh the photos' noise."""
        parts = [compare(reference[:photos], logits[:photos])]
        if views:
            parts.append(compare(reference[photos:], logits[photos:]))
        return (min(m.snr_db for m in parts), min(m.top1_agreement_decisive for m in parts))

    def attempt(float_groups: tuple[str, ...]) -> Attempt:
        snr_db, top1 = measure(trials.logits(frozenset(float_groups)))
        tried = Attempt(float_groups, snr_db, top1, aim.met(snr_db, top1))
        search.attempts.append(tried)
        say(f"try {len(search.attempts)}: {len(float_groups)} group(s) float -> "
            f"{tried.snr_db:.1f} dB, top-1 {tried.top1_agreement:.0%}")
        return tried

    first = attempt(())
    if (first.met or not max_float_groups) and not sensitivity:
        return search
    for i, group in enumerate(search.groups, 1):
        search.sensitivity[group] = measure(trials.logits(only=group))[0]
        say(f"sensitivity {i}/{len(search.groups)}: {group} {search.sensitivity[group]:.1f} dB")
    if first.met or not max_float_groups:
        return search
    order = [g for g, _ in search.ranking()]
    noise = [_noise(search.sensitivity[g]) for g in order]
    budget, scale = _noise(aim.min_snr_db), 1.0
    missed, met, limit = 0, None, min(max_float_groups, len(order))  # k float: missed < met
    while met is None and missed < limit:
        wanted = next((k for k in range(missed + 1, limit + 1)
                       if scale * sum(noise[k:]) <= budget), limit)
        tried = attempt(tuple(order[:wanted]))
        if tried.met:
            met = wanted
            break
        predicted = sum(noise[wanted:])
        if predicted > 0 and not math.isinf(tried.snr_db):
            scale = max(scale, _noise(tried.snr_db) / predicted)
        missed = wanted
    # the prediction errs on the safe side (separately measured noise overlaps): bisect down
    # to the fewest groups that still meet the target, which keeps the most int8
    while met is not None and met - missed > 1:
        middle = (missed + met) // 2
        if attempt(tuple(order[:middle])).met:
            met = middle
        else:
            missed = middle
    return search

"""Check mvdeploy's preprocessing against the checkpoint's own library, on the validation photos.

Validation compares an artifact with PyTorch fed mvdeploy's preprocessing, so a wrong
preprocessing (channel order, resample, crop) passes it. The checkpoint's own library is the
independent witness: transformers' MobileViTImageProcessor for a Hugging Face folder, timm's
data config and transforms for a timm checkpoint. Each is used only when it imports here (timm
needs torchvision, which does not run beside torch 2.13 CPU wheels); the answer says whether
the check ran.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from mvdeploy.data import Preprocessing, preprocess, upright
from mvdeploy.errors import ConfigError
from mvdeploy.native_output import redirect_native_output

LEVELS_ALLOWED = 1.0  # one 8-bit level: what two correct resizers may differ by


@dataclass(frozen=True)
class LibraryCheck:
    """The result, recorded in the manifest."""

    library: str  # e.g. "transformers 5.24.0 MobileViTImageProcessor"
    ran: bool
    max_levels: float | None = None  # largest difference, in 8-bit levels of the input
    note: str = ""


Preprocessor = Callable[[Image.Image], np.ndarray]  # RGB PIL image -> float32 [3, H, W]


def _transformers_preprocessor(directory: Path, height: int, width: int
                               ) -> tuple[str, Preprocessor] | None:
    if importlib.util.find_spec("transformers") is None:
        return None
    import transformers
    from transformers import MobileViTImageProcessor

    processor = MobileViTImageProcessor.from_pretrained(str(directory))
    crop = processor.crop_size or {}
    overrides = {}
    if (crop.get("height"), crop.get("width")) != (height, width):  # another export resolution:
        short = (processor.size or {}).get("shortest_edge")  # the file's ratio, at this size
        overrides = {"crop_size": {"height": height, "width": width}}
        if short and crop.get("height"):
            overrides["size"] = {"shortest_edge": int(max(height, width) * short
                                                      / crop["height"] + 1e-6)}

    def run(image: Image.Image) -> np.ndarray:
        out = processor(images=image, return_tensors="np", **overrides)
        return out["pixel_values"][0].astype(np.float32)

    return f"transformers {transformers.__version__} MobileViTImageProcessor", run


def _timm_preprocessor(arch: str, height: int, width: int) -> tuple[str, Preprocessor] | None:
    try:  # timm imports torchvision at import time
        import timm
        from timm.data import create_transform, resolve_data_config
    except Exception:
        return None
    model = timm.create_model(arch, pretrained=False)
    config = resolve_data_config({"input_size": (3, height, width)}, model=model)
    transform = create_transform(**config)
    return f"timm {timm.__version__} resolve_data_config + create_transform", \
        lambda image: transform(image).numpy().astype(np.float32)


def _levels(ours: np.ndarray, theirs: np.ndarray, prep: Preprocessing) -> float:
    """Largest difference in 8-bit levels (one level = scale / std in the tensor)."""
    std = np.asarray(prep.std, np.float32)
    if prep.channel_order == "BGR":
        std = std[::-1]
    step = prep.scale / std[:, None, None]
    return float(np.max(np.abs(ours - theirs) / step))


def _diagnose(images: list[Image.Image], theirs: list[np.ndarray], prep: Preprocessing,
              height: int, width: int) -> str:
    """Which single key, changed, makes mvdeploy agree with the library: the difference."""
    candidates = [("channel_order", "RGB" if prep.channel_order == "BGR" else "BGR")]
    candidates += [("resample", r) for r in ("bilinear", "bicubic", "nearest")
                   if r != prep.resample]
    candidates += [("crop_pct", c) for c in (1.0, 0.9, 0.875, 256 / 288) if c != prep.crop_pct]
    for key, value in candidates:
        other = dataclasses.replace(prep, **{key: value})
        if all(_levels(preprocess(i, height, width, other), t, other) <= LEVELS_ALLOWED
               for i, t in zip(images, theirs, strict=True)):
            return f"{key} is {value!r} there, {getattr(prep, key)!r} here"
    return "scale, mean/std or resize differ (no single key explains it)"


def check_against_library(source: str, checkpoint: Path | None, arch: str,
                          prep: Preprocessing, photos: list[Path], height: int,
                          width: int) -> LibraryCheck:
    """Compare on `photos`; raise ConfigError (one line) when they differ by more than a level."""
    if source == "huggingface" and checkpoint is not None and checkpoint.is_dir() \
            and (checkpoint / "preprocessor_config.json").is_file():
        name, make = "transformers", lambda: _transformers_preprocessor(checkpoint, height, width)
    elif source == "timm":
        name, make = "timm", lambda: _timm_preprocessor(arch, height, width)
    else:
        return LibraryCheck("", ran=False, note=f"no library of its own for a {source} "
                            "checkpoint of this kind")
    images, theirs = [], []
    with redirect_native_output():  # the libraries log their import-time fallbacks
        found = make()
        for path in photos if found else []:
            with Image.open(path) as image:  # upright, as mvdeploy reads photos
                images.append(upright(image).convert("RGB"))
            theirs.append(found[1](images[-1]))
    if found is None:
        return LibraryCheck(name, ran=False, note=f"{name} does not import here: not compared")
    library = found[0]
    levels = [_levels(preprocess(i, height, width, prep), t, prep)
              for i, t in zip(images, theirs, strict=True)]
    worst = int(np.argmax(levels))
    if levels[worst] > LEVELS_ALLOWED:
        raise ConfigError(
            f"preprocessing differs from the checkpoint's own ({library}) by "
            f"{levels[worst]:.0f} 8-bit levels on {photos[worst].name}: "
            f"{_diagnose(images, theirs, prep, height, width)}; fix the [preprocessing] keys, "
            "or set validate.check_preprocessing=false to export anyway")
    return LibraryCheck(library, ran=True, max_levels=round(max(levels), 3))

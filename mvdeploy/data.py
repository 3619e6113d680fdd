"""Images in, model inputs out: the preprocessing the published MobileViT checkpoints expect.

Hugging Face's MobileViTImageProcessor (apple/mobilevit-*): resize the shorter side to 288,
center-crop 256, scale by 1/255, no mean/std, RGB -> BGR. Other resolutions keep the same
crop ratio (256/288).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mvdeploy.errors import ConfigError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
CROP_RATIO = 256 / 288  # crop / resize, as the published checkpoints were evaluated


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB photo becomes the model's input tensor; recorded in every manifest."""

    channel_order: str = "BGR"  # order of the 3 input channels
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # subtracted after scaling
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    resize_shorter_side: int = 0  # 0: crop size / CROP_RATIO (288 for 256)
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise ConfigError(
                f"preprocessing.channel_order must be RGB or BGR, got {self.channel_order!r}"
            )
        if self.resample not in _RESAMPLE:
            raise ConfigError(
                f"preprocessing.resample must be one of {', '.join(_RESAMPLE)}, "
                f"got {self.resample!r}"
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("preprocessing.mean and .std need 3 values each, std > 0")

    def shorter_side(self, height: int, width: int) -> int:
        return self.resize_shorter_side or math.ceil(max(height, width) / CROP_RATIO)


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def preprocess(image: Image.Image, height: int, width: int,
               prep: Preprocessing = Preprocessing()) -> np.ndarray:
    """One PIL image -> float32 array [3, height, width]."""
    image = image.convert("RGB")
    short = prep.shorter_side(height, width)
    w, h = image.size
    # the longer side is truncated, as transformers' and torchvision's shortest-edge resize do
    new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    new_w, new_h = max(width, new_w), max(height, new_h)
    image = image.resize((new_w, new_h), _RESAMPLE[prep.resample])
    left, top = (new_w - width) // 2, (new_h - height) // 2
    image = image.crop((left, top, left + width, top + height))
    return normalise(np.asarray(image), prep)


def normalise(pixels: np.ndarray, prep: Preprocessing = Preprocessing()) -> np.ndarray:
    """RGB pixels [..., H, W, 3] -> float32 [..., 3, H, W]: scale, mean/std, channel order."""
    x = pixels.astype(np.float32) * np.float32(prep.scale)
    x = (x - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    if prep.channel_order == "BGR":
        x = x[..., ::-1]
    return np.ascontiguousarray(np.moveaxis(x, -1, -3))


def sample_image_paths() -> list[Path]:
    """The public-domain / CC0 photos shipped with mvdeploy (see sample_images/LICENSES.md)."""
    folder = resources.files("mvdeploy") / "sample_images"
    return sorted(Path(str(p)) for p in folder.iterdir() if Path(str(p)).suffix == ".jpg")


def find_images(folder: str | Path) -> list[Path]:
    """Image files under `folder`, recursively, in a deterministic order."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"image folder {root} does not exist or is not a directory")
    paths = find_images_or_none(root)
    if not paths:
        raise ConfigError(
            f"no images (.jpg, .png, .bmp, .webp) in {root}: point to a folder of photos"
        )
    return paths


def find_labelled_images(folder: str | Path) -> list[tuple[Path, str]]:
    """(image, class name) for every image under folder/<class name>/, deterministic order."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"labelled folder {root} does not exist or is not a directory")
    pairs = [(path, sub.name) for sub in sorted(p for p in root.iterdir() if p.is_dir())
             for path in find_images_or_none(sub)]
    if not pairs:
        raise ConfigError(f"no images in class folders under {root}: expected "
                          "CLASS_NAME/*.jpg (one sub-folder per class)")
    return pairs


def find_images_or_none(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def load_images(paths: Iterable[Path], height: int, width: int,
                prep: Preprocessing = Preprocessing(),
                limit: int | None = None) -> tuple[np.ndarray, list[Path], int]:
    """Preprocess readable images into [N, 3, H, W]; returns (batch, used paths, skipped count)."""
    arrays, used, skipped = [], [], 0
    for path in paths:
        if limit is not None and len(arrays) >= limit:
            break
        try:
            with Image.open(path) as image:
                arrays.append(preprocess(image, height, width, prep))
            used.append(path)
        except (OSError, UnidentifiedImageError, ValueError):
            skipped += 1
    if not arrays:
        raise ConfigError(f"none of the {skipped} image files could be read")
    return np.stack(arrays), used, skipped

"""Images in, model inputs out: the preprocessing the published MobileViT checkpoints expect.

The defaults are what the published checkpoints expect, from Hugging Face's
MobileViTImageProcessor (apple/mobilevit-*): resize the shorter side to 288, center-crop 256,
scale by 1/255, no mean/std, RGB -> BGR. Other resolutions keep the same crop ratio (256/288).
A checkpoint that says otherwise (preprocessor_config.json, timm's pretrained_cfg) brings its
own `Preprocessing` (see mvdeploy.models.weights).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mvdeploy.errors import ConfigError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
PUBLISHED_CROP_PCT = 256 / 288  # crop / resized shorter side of the published checkpoints


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB photo becomes the model's input tensor; recorded in every manifest."""

    channel_order: str = "BGR"  # order of the 3 input channels
    scale: float = 1 / 255
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # subtracted after scaling
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    crop_pct: float = PUBLISHED_CROP_PCT  # centre crop / resized shorter side (timm's crop_pct)
    resize_shorter_side: int = 0  # 0: floor(crop size / crop_pct), 288 for 256
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
        if not (math.isfinite(self.scale) and self.scale > 0):  # 0: the model sees only zeros
            raise ConfigError(f"preprocessing.scale must be a positive number (1/255 for 8-bit "
                              f"pixels to 0..1), got {self.scale}")
        if not 0 < self.crop_pct <= 1:
            raise ConfigError(f"preprocessing.crop_pct must be in (0, 1], got {self.crop_pct}")
        if self.resize_shorter_side < 0:
            raise ConfigError("preprocessing.resize_shorter_side must be >= 0 (0: from crop_pct)")

    def shorter_side(self, height: int, width: int) -> int:
        # floor, as timm does (256 / 0.9 -> 284); the epsilon keeps 256 / (256/288) at 288
        return self.resize_shorter_side or math.floor(max(height, width) / self.crop_pct + 1e-6)


_RESAMPLE = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def preprocess(image: Image.Image, height: int, width: int,
               prep: Preprocessing = Preprocessing()) -> np.ndarray:
    """One PIL image -> float32 array [3, height, width]."""
    image = to_rgb(image)
    return normalise(np.asarray(resize_and_crop(image, height, width, prep)), prep)


def resize_and_crop(image: Image.Image, height: int, width: int, prep: Preprocessing,
                    resample: str | None = None) -> Image.Image:
    """The geometric half of `preprocess`: shorter side resized, then centre-cropped to
    height x width. Segmentation masks take the same steps with resample="nearest", so each
    label stays on the pixel the model saw."""
    short = prep.shorter_side(height, width)
    w, h = image.size
    # the longer side is truncated, as transformers' and torchvision's shortest-edge resize do
    new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    new_w, new_h = max(width, new_w), max(height, new_h)
    image = image.resize((new_w, new_h), _RESAMPLE[resample or prep.resample])
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return image.crop((left, top, left + width, top + height))


_WIDE_GREY = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535}


# Photos are read as people see them: a phone stores a portrait shot sideways with an EXIF
# Orientation tag, and galleries, browsers, UIImage and PIL's exif_transpose turn it upright.
EXIF_ORIENTATION = "applied (PIL ImageOps.exif_transpose)"  # recorded in every manifest


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF Orientation tag says (a copy; unchanged without one)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block (any of several errors): the image as stored
        return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> 8-bit RGB.

    PIL's own convert("RGB") clips 16- and 32-bit greyscale (how PIL opens 16-bit PNGs) at 255,
    which turns a normal photo all white, so those are scaled to 8 bits first; float images
    ("F") are read as 0..1 when they fit, else as 0..255.
    """
    if image.mode in _WIDE_GREY or image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        peak = _WIDE_GREY.get(image.mode) or (1.0 if values.max(initial=0) <= 1 else 255.0)
        grey = np.clip(np.rint(values * (255 / peak)), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey, mode="L")
    return image.convert("RGB")


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


def quantization_pool_paths() -> list[Path]:
    """What a quantised export without folders deals into calibration, selection and report
    sets: the sample photos, then six unlike them (greyscale, microscopy, texture, text), so
    the report is not graded only on colour photos like the calibration's."""
    folder = resources.files("mvdeploy") / "sample_images" / "quantization_pool"
    more = sorted(Path(str(p)) for p in folder.iterdir() if Path(str(p)).suffix == ".jpg")
    return sample_image_paths() + more


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


def read_image(path: Path, height: int, width: int,
               prep: Preprocessing = Preprocessing()) -> np.ndarray | None:
    """One image file -> float32 [3, height, width], or None when it cannot be read."""
    try:
        with Image.open(path) as image:
            return preprocess(upright(image), height, width, prep)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def unreadable_reason(path: Path) -> str:
    """Why read_image gave None for `path`, in a few words for the user."""
    if not path.exists():
        return "no such file"
    if path.is_dir():
        return "a folder, not an image file"
    try:
        with Image.open(path) as image:
            upright(image).load()
    except Image.DecompressionBombError:
        return (f"too large (over PIL's decompression-bomb limit of {Image.MAX_IMAGE_PIXELS:,} "
                "pixels)")
    except UnidentifiedImageError:
        return "not an image file PIL can open"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    return "cannot be read"


def load_images(paths: Iterable[Path], height: int, width: int,
                prep: Preprocessing = Preprocessing(),
                limit: int | None = None) -> tuple[np.ndarray, list[Path], int]:
    """Preprocess readable images into [N, 3, H, W]; returns (batch, used paths, skipped count)."""
    arrays, used, skipped = [], [], 0
    for path in paths:
        if limit is not None and len(arrays) >= limit:
            break
        array = read_image(path, height, width, prep)
        if array is None:
            skipped += 1
            continue
        arrays.append(array)
        used.append(path)
    if not arrays:
        raise ConfigError(f"none of the {skipped} image files could be read")
    return np.stack(arrays), used, skipped

"""Pieces of app code more than one format's snippet() writes (preprocessing in words and in
Kotlin), from the manifest's preprocessing record."""

from __future__ import annotations


def is_segmentation(manifest: dict) -> bool:
    """Whether the manifest's model segments (its snippet is segment(), not classify())."""
    return (manifest.get("model") or {}).get("task") == "segmentation"


def crop_text(prep: dict) -> str:
    height, width = prep["crop"]
    return f"resize the shorter side to {prep['resize_shorter_side']}, centre-crop {height}x{width}"


def kotlin_channel_expr(channel: str, prep: dict) -> str:
    """Kotlin expression for one channel of an ARGB pixel `p`, normalised as in training."""
    shift = {"R": 16, "G": 8, "B": 0}[channel]
    index = "RGB".index(channel)  # mean / std are given in RGB order
    value = f"(p shr {shift} and 0xFF)" if shift else "(p and 0xFF)"
    expr = f"{value} * {prep['scale']:.8g}f"
    mean, std = prep["mean"][index], prep["std"][index]
    if mean:
        expr = f"({expr} - {mean:.8g}f)"
    if std != 1:
        expr = f"{expr} / {std:.8g}f"
    return expr


def kotlin_crop(prep: dict, comment: str | None = None) -> str:
    """Kotlin lines that leave `crop`: the Bitmap `photo` resized and centre-cropped as in
    training (shared by the classification and segmentation snippets)."""
    height, width = prep["crop"]
    short = prep["resize_shorter_side"]
    comment = comment or f"    // As the model was trained: {crop_text(prep)}.\n"
    return f"""\
{comment}    val shorter = minOf(photo.width, photo.height)
    val resized = Bitmap.createScaledBitmap(photo, maxOf({width}, {short} * photo.width / shorter),
        maxOf({height}, {short} * photo.height / shorter), true)
    val crop = Bitmap.createBitmap(resized, (resized.width - {width}) / 2,
        (resized.height - {height}) / 2, {width}, {height})
"""


def python_crop(prep: dict, comment: str) -> str:
    """Python lines (in a function) that leave `crop`, an RGB uint8 array: the photo at `path`
    upright, resized and centre-cropped as in training, as PIL does it."""
    height, width = prep["crop"]
    short = prep["resize_shorter_side"]
    return f"""\
    photo = ImageOps.exif_transpose(Image.open(path)).convert("RGB")  # upright, as shown
{comment}    w, h = photo.size
    size = ({short}, int({short} * h / w)) if w <= h else (int({short} * w / h), {short})
    size = (max({width}, size[0]), max({height}, size[1]))
    photo = photo.resize(size, Image.Resampling.{prep['resample'].upper()})
    left, top = (size[0] - {width}) // 2, (size[1] - {height}) // 2
    crop = np.asarray(photo.crop((left, top, left + {width}, top + {height})))
"""


def swift_region(prep: dict) -> str:
    """Swift lines that set a VNCoreMLRequest `request`'s region of interest to the centre crop
    the model was trained on (Vision then scales that region to the input)."""
    height, width = prep["crop"]
    short = prep["resize_shorter_side"]
    return f"""\
    // As the model was trained: {crop_text(prep)}.
    let scale = {short}.0 / Double(min(photo.width, photo.height))
    let cropWidth = {width}.0 / scale / Double(photo.width)
    let cropHeight = {height}.0 / scale / Double(photo.height)
    request.regionOfInterest = CGRect(x: (1 - cropWidth) / 2, y: (1 - cropHeight) / 2,
                                      width: cropWidth, height: cropHeight)
    request.imageCropAndScaleOption = .scaleFill
"""

"""Per-stage patch sizes for the three MobileViT stages (strides 8, 16, 32).

The paper's configuration A is (2,2,2) and B is (8,4,2): B uses larger patches
in the high-resolution stages, so attention sees fewer, larger tokens there.
"""

from __future__ import annotations

from collections.abc import Sequence

from mvdeploy.errors import ConfigError

Patch = tuple[int, int]  # (patch height, patch width)
PatchSizes = tuple[Patch, Patch, Patch]  # stages at stride 8, 16, 32

PATCH_PRESETS: dict[str, PatchSizes] = {
    "A": ((2, 2), (2, 2), (2, 2)),
    "B": ((8, 8), (4, 4), (2, 2)),
}

_SPEC_HELP = "use a preset (A, B) or three sizes such as 8,4,2 or 2x4,2,2 (HEIGHTxWIDTH)"


def _parse_one(item: object) -> Patch:
    if isinstance(item, int) and not isinstance(item, bool):
        pair = (item, item)
    elif isinstance(item, str):
        parts = item.strip().lower().split("x")
        if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
            raise ConfigError(f"bad patch size {item!r}: {_SPEC_HELP}")
        nums = [int(p) for p in parts]
        pair = (nums[0], nums[-1])
    elif isinstance(item, Sequence) and len(item) == 2 and all(isinstance(v, int) for v in item):
        pair = (int(item[0]), int(item[1]))
    else:
        raise ConfigError(f"bad patch size {item!r}: {_SPEC_HELP}")
    if min(pair) < 1:
        raise ConfigError(f"patch sizes must be at least 1, got {item!r}")
    return pair


def parse_patch_sizes(spec: str | Sequence[object]) -> PatchSizes:
    """Turn 'A', 'B', '8,4,2', '2x4,2,2', [8, 4, 2] or [[2, 4], 2, 2] into PatchSizes."""
    if isinstance(spec, str):
        key = spec.strip()
        if key.upper() in PATCH_PRESETS:
            return PATCH_PRESETS[key.upper()]
        items: Sequence[object] = [s for s in key.split(",")]
    else:
        items = spec
    if len(items) != 3:
        raise ConfigError(
            f"patch sizes need one entry per MobileViT stage (3), got {spec!r}: {_SPEC_HELP}"
        )
    first, second, third = (_parse_one(i) for i in items)
    return (first, second, third)


def format_patch_sizes(patch_sizes: PatchSizes) -> str:
    """Inverse of parse_patch_sizes: '2,2,2' or '2x4,2,2' (and the preset name if any)."""
    text = ",".join(str(h) if h == w else f"{h}x{w}" for h, w in patch_sizes)
    for name, preset in PATCH_PRESETS.items():
        if preset == patch_sizes:
            return f"{name} ({text})"
    return text


STAGE_STRIDES = (8, 16, 32)
MAX_ATTENTION_BYTES = 4 * 2**30  # the largest attention matrix of a whole batch, float32


def attention_bytes(height: int, width: int, patch_sizes: PatchSizes, heads: int = 4) -> int:
    """The largest attention matrix one image needs: per stage, (ph * pw) patch positions x
    heads x N² float32 scores, N = patches per position. It grows with the fourth power of the
    side, so a large resolution with small patches exhausts memory long before anything else."""
    sizes = []
    for stride, (ph, pw) in zip(STAGE_STRIDES, patch_sizes, strict=True):
        h, w = -(-height // stride), -(-width // stride)
        tokens = -(-h // ph) * -(-w // pw)
        sizes.append(ph * pw * heads * tokens**2 * 4)
    return max(sizes)


def check_attention_memory(height: int, width: int, patch_sizes: PatchSizes,
                           batch: int = 1) -> None:
    """Refuse up front what would fail as an allocation deep in PyTorch: one attention matrix
    for the whole batch above MAX_ATTENTION_BYTES."""
    need = attention_bytes(height, width, patch_sizes) * batch
    if need > MAX_ATTENTION_BYTES:
        what = f"a batch of {batch} at " if batch > 1 else ""
        fix = "a smaller batch" if batch > 1 and need / batch <= MAX_ATTENTION_BYTES else \
            "a smaller resolution or larger patches (e.g. --patch B)"
        raise ConfigError(
            f"{what}{height}x{width} with patch sizes {format_patch_sizes(patch_sizes)} needs "
            f"{need / 2**30:.0f} GiB for one attention matrix (limit "
            f"{MAX_ATTENTION_BYTES / 2**30:.0f} GiB): use {fix}")

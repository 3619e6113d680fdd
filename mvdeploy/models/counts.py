"""Parameters and MACs of the variants, for `mvdeploy models` without torch.

The counts come from the network itself (mvdeploy.models.macs: torch's FlopCounterMode), once,
into counts.json beside this file, for every variant x patch preset x the usual resolutions at
1000 classes; `mvdeploy models` reads them there and builds the network only for what the table
lacks (another patch configuration, resolution or class count). A test recounts every entry,
so the table cannot drift from the model. Regenerate with:

    python -m mvdeploy.models.counts
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from mvdeploy.files import write_atomic
from mvdeploy.models.patches import PATCH_PRESETS, PatchSizes, format_patch_sizes
from mvdeploy.models.variants import list_models

TABLE = Path(__file__).with_name("counts.json")
RESOLUTIONS = (224, 256, 320, 384, 512)  # square sizes the table covers


def key(name: str, patches: PatchSizes, height: int, width: int, num_classes: int) -> str:
    return f"{name}|{format_patch_sizes(patches).split(' ')[0]}|{height}x{width}|{num_classes}"


@functools.cache
def _shipped() -> dict[str, dict]:
    try:
        return json.loads(TABLE.read_text())["counts"]
    except (OSError, ValueError, KeyError):  # a broken install counts live instead
        return {}


def live_counts(name: str, patches: PatchSizes, height: int, width: int,
                num_classes: int) -> dict:
    """Count on the network (imports torch)."""
    from mvdeploy.models.factory import create_model
    from mvdeploy.models.macs import count_macs

    model = create_model(name, patch_sizes=patches, init="random", num_classes=num_classes)
    macs = count_macs(model, height, width)
    return {"params": sum(p.numel() for p in model.parameters()),
            "gmacs": round(macs.total / 1e9, 4), "attention_gmacs": round(macs.attention / 1e9, 4)}


def counts(name: str, patches: PatchSizes, height: int, width: int,
           num_classes: int = 1000) -> dict:
    """params, gmacs, attention_gmacs: from the table when it has them, else counted live."""
    found = _shipped().get(key(name, patches, height, width, num_classes))
    return found if found is not None else live_counts(name, patches, height, width,
                                                       num_classes)


def table_entries() -> list[tuple[str, PatchSizes, int, int, int]]:
    return [(name, patches, size, size, 1000) for name in list_models()
            for patches in PATCH_PRESETS.values() for size in RESOLUTIONS]


def write_table(path: Path = TABLE) -> None:
    entries = {key(*e): live_counts(*e) for e in table_entries()}
    write_atomic(path, json.dumps({"about": "python -m mvdeploy.models.counts; checked by "
                                            "tests/test_models.py", "counts": entries},
                                  indent=1) + "\n")


if __name__ == "__main__":
    write_table()
    print(f"wrote {TABLE}")

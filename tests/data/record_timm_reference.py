"""Record timm's own MobileViT-XXS and MobileViTv2-0.5 outputs for the timm parity tests
(needs timm).

    python tests/data/record_timm_reference.py
    # writes tests/data/timm_mobilevit_xxs.npz and tests/data/timm_mobilevitv2_050.npz

Each timm model is built with 10 classes, given the seeded weights `tests.helpers.seeded_state`
draws for its key list, then made input-sensitive with mvdeploy's BatchNorm calibration. A file
keeps the key list (names, shapes, dtypes), the tensors the calibration changed (BatchNorm
statistics, head) and timm's logits for the bundled photos under timm's own preprocessing, so
the test rebuilds the exact state dict and compares without timm. Recorded with timm 1.0.31 and
torch 2.13.0 (CPU); timm imports torchvision, which does not run beside this torch here, so it
was imported with an empty stand-in module (timm's MobileViTs use no torchvision code).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import timm
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mvdeploy.data import Preprocessing, load_images, sample_image_paths  # noqa: E402
from mvdeploy.models.init import calibrate_  # noqa: E402
from mvdeploy.models.weights import TIMM_PREPROCESSING  # noqa: E402
from tests.helpers import seeded_state  # noqa: E402

# (timm architecture, the seed its state is drawn with, timm's pretrained_cfg preprocessing)
RECORDS = (("mobilevit_xxs", 3, TIMM_PREPROCESSING["v1"]),
           ("mobilevitv2_050", 4, TIMM_PREPROCESSING["v2"]))


def record(arch: str, seed: int, prep: Preprocessing) -> None:
    model = timm.create_model(arch, pretrained=False, num_classes=10).eval()
    assert model.pretrained_cfg["crop_pct"] == prep.crop_pct
    keys = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()]
    model.load_state_dict(seeded_state(keys, seed=seed))
    calibrate_(model, model.head.fc)
    changed = {k: v for k, v in model.state_dict().items()
               if k.endswith(("running_mean", "running_var")) or k.startswith("head.fc.")}
    x, _, _ = load_images(sample_image_paths(), 256, 256, prep)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    np.savez_compressed(
        Path(__file__).with_name(f"timm_{arch}.npz"),
        key_names=np.array([k for k, _, _ in keys]),
        key_shapes=np.array([",".join(map(str, s)) for _, s, _ in keys]),
        key_dtypes=np.array([d for _, _, d in keys]),
        logits=logits, timm_version=np.array(timm.__version__),
        **{f"state/{k}": v.numpy() for k, v in changed.items()})
    print(f"timm {timm.__version__} {arch}: logits {logits.shape}, "
          f"top-1 {logits.argmax(1).tolist()}")


if __name__ == "__main__":
    for arch, seed, prep in RECORDS:
        record(arch, seed, prep)

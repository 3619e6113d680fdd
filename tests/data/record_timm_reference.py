"""Record timm's own MobileViT-XXS output for the timm-layout parity test (needs timm).

    python tests/data/record_timm_reference.py        # writes tests/data/timm_mobilevit_xxs.npz

timm's model is built with 10 classes, given the seeded weights `tests.helpers.seeded_state`
draws for its key list, then made input-sensitive with mvdeploy's BatchNorm calibration. The
file keeps the key list (names, shapes, dtypes), the tensors the calibration changed (BatchNorm
statistics, head) and timm's logits for the bundled photos, so the test rebuilds the exact
state dict and compares without timm. Recorded with timm 1.0.31 and torch 2.13.0 (CPU); timm
imports torchvision, which does not run beside this torch here, so it was imported with an
empty stand-in module (timm's MobileViT uses no torchvision code).
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
from tests.helpers import seeded_state  # noqa: E402

# timm's pretrained_cfg for mobilevit_xxs.cvnets_in1k (timm/models/mobilevit.py, _cfg)
TIMM_PREPROCESSING = Preprocessing(channel_order="RGB", crop_pct=0.9, resample="bicubic")


def main() -> None:
    model = timm.create_model("mobilevit_xxs", pretrained=False, num_classes=10).eval()
    keys = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()]
    model.load_state_dict(seeded_state(keys, seed=3))
    calibrate_(model, model.head.fc)
    changed = {k: v for k, v in model.state_dict().items()
               if k.endswith(("running_mean", "running_var")) or k.startswith("head.fc.")}
    x, _, _ = load_images(sample_image_paths(), 256, 256, TIMM_PREPROCESSING)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    np.savez_compressed(
        Path(__file__).with_name("timm_mobilevit_xxs.npz"),
        key_names=np.array([k for k, _, _ in keys]),
        key_shapes=np.array([",".join(map(str, s)) for _, s, _ in keys]),
        key_dtypes=np.array([d for _, _, d in keys]),
        logits=logits, timm_version=np.array(timm.__version__),
        **{f"state/{k}": v.numpy() for k, v in changed.items()})
    print(f"timm {timm.__version__}: logits {logits.shape}, top-1 {logits.argmax(1).tolist()}")


if __name__ == "__main__":
    main()

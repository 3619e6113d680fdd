"""Record timm's own MobileViTv2-0.5 output for the timm v2 parity test (needs timm).

    python tests/data/record_timm_v2_reference.py     # writes tests/data/timm_mobilevitv2_050.npz

As record_timm_reference.py does for v1: timm's model with 10 classes gets the seeded weights
`tests.helpers.seeded_state` draws for its key list, made input-sensitive with mvdeploy's
BatchNorm calibration; the file keeps the key list, the tensors the calibration changed and
timm's logits for the bundled photos (with timm's v2 preprocessing), so the test rebuilds the
exact state dict and compares without timm. Recorded with timm 1.0.31 and torch 2.13.0 (CPU);
timm imports torchvision, which does not run beside this torch here, so it was imported with an
empty stand-in module (timm's MobileViTv2 uses no torchvision code).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import timm
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mvdeploy.data import load_images, sample_image_paths  # noqa: E402
from mvdeploy.models.init import calibrate_  # noqa: E402
from mvdeploy.models.weights import TIMM_PREPROCESSING  # noqa: E402
from tests.helpers import seeded_state  # noqa: E402


def main() -> None:
    model = timm.create_model("mobilevitv2_050", pretrained=False, num_classes=10).eval()
    assert model.pretrained_cfg["crop_pct"] == TIMM_PREPROCESSING["v2"].crop_pct
    keys = [(k, tuple(v.shape), str(v.dtype).removeprefix("torch."))
            for k, v in model.state_dict().items()]
    model.load_state_dict(seeded_state(keys, seed=4))
    calibrate_(model, model.head.fc)
    changed = {k: v for k, v in model.state_dict().items()
               if k.endswith(("running_mean", "running_var")) or k.startswith("head.fc.")}
    x, _, _ = load_images(sample_image_paths(), 256, 256, TIMM_PREPROCESSING["v2"])
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    np.savez_compressed(
        Path(__file__).with_name("timm_mobilevitv2_050.npz"),
        key_names=np.array([k for k, _, _ in keys]),
        key_shapes=np.array([",".join(map(str, s)) for _, s, _ in keys]),
        key_dtypes=np.array([d for _, _, d in keys]),
        logits=logits, timm_version=np.array(timm.__version__),
        **{f"state/{k}": v.numpy() for k, v in changed.items()})
    print(f"timm {timm.__version__}: logits {logits.shape}, top-1 {logits.argmax(1).tolist()}")


if __name__ == "__main__":
    main()

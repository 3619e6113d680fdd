"""MediaPipe's own resize (a region of interest) vs the checkpoint's (PIL), on the trained fixture.

    python benchmarks/mediapipe_resize.py      # writes benchmarks/results/mediapipe_resize.md

Exports export_configs/mobilevit_xxs_B_android.toml with the trained fixture at its own 64x64,
then classifies the bundled photos and the held-out digits with MediaPipe Tasks' ImageClassifier
two ways: (1) the `mvdeploy snippet --client mediapipe-python` path, which resizes and crops
with PIL as in training and hands MediaPipe the crop; (2) the whole photo with the same crop as a
region of interest, which MediaPipe stretches to the input itself. Both are compared with
eager PyTorch on the model as trained (patch B, BGR, PIL preprocessing). Needs the clients extra.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mvdeploy.cli import run  # noqa: E402
from mvdeploy.data import load_images, sample_image_paths  # noqa: E402
from mvdeploy.fixtures import checkpoint_dir, write_digits  # noqa: E402
from mvdeploy.models import PATCH_PRESETS  # noqa: E402
from mvdeploy.models.weights import load_pretrained  # noqa: E402
from mvdeploy.readback.snippets import load_manifest, snippet  # noqa: E402


def _scores(result, classes: int) -> np.ndarray:
    scores = np.zeros(classes, np.float32)
    for c in result.classifications[0].categories:
        scores[c.index] = c.score
    return scores


def main() -> None:
    import mediapipe as mp
    from mediapipe.tasks.python import vision
    from mediapipe.tasks.python.components.containers.rect import RectF
    from mediapipe.tasks.python.vision.core.image_processing_options import (
        ImageProcessingOptions,
    )

    work = Path(tempfile.mkdtemp())
    out = work / "android"
    assert run(["export", str(ROOT / "export_configs" / "mobilevit_xxs_B_android.toml"),
                "--set", f"model.weights={checkpoint_dir()}", "--set", "model.resolution=64",
                "--set", f"export.out={out}", "-f", "tflite"]) == 0
    (tflite,) = (out / "tflite").glob("*.tflite")
    prep = load_manifest(tflite).to_dict()["preprocessing"]
    _, code = snippet(load_manifest(tflite), "mediapipe-python")
    namespace: dict = {}
    os.chdir(tflite.parent)
    exec(compile(code, "snippet.py", "exec"), namespace)
    all_scores = vision.ImageClassifier.create_from_options(vision.ImageClassifierOptions(
        base_options=mp.tasks.BaseOptions(model_asset_path=str(tflite)), max_results=-1))

    def via_roi(path: Path) -> np.ndarray:
        rgb = np.asarray(Image.open(path).convert("RGB"))
        h, w = rgb.shape[:2]
        scale = prep["resize_shorter_side"] / min(w, h)
        cw, ch = prep["crop"][1] / scale / w, prep["crop"][0] / scale / h
        roi = RectF(left=(1 - cw) / 2, top=(1 - ch) / 2, right=(1 + cw) / 2, bottom=(1 + ch) / 2)
        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        return _scores(all_scores.classify(image, ImageProcessingOptions(region_of_interest=roi)),
                       10)

    def via_snippet(path: Path) -> np.ndarray:
        scores = np.zeros(10, np.float32)  # the snippet returns its top 5 (label, score)
        for name, score in namespace["classify"](path):
            scores[int(name)] = score
        return scores

    model = load_pretrained(checkpoint_dir(), patch_sizes=PATCH_PRESETS["B"])
    rows = []
    digits = write_digits(work / "digits", "held-out")
    sets = {"bundled photos": sample_image_paths(),
            "held-out digits": sorted(digits.rglob("*.png"))}
    for name, paths in sets.items():
        x, _, _ = load_images(paths, 64, 64, model.preprocessing)
        with torch.no_grad():
            reference = torch.softmax(model(torch.from_numpy(x)), -1).numpy()
        for how, classify in (("snippet (PIL crop, then MediaPipe)", via_snippet),
                              ("MediaPipe region of interest", via_roi)):
            got = np.stack([classify(p) for p in paths])
            agree = float(np.mean(got.argmax(1) == reference.argmax(1)))
            diff = float(np.abs(got.max(1) - reference.max(1)).max())
            rows.append(f"| {name} ({len(paths)}) | {how} | {agree:.3f} | {diff:.2e} |")
    text = "\n".join([
        "# MediaPipe's resize vs the checkpoint's (trained fixture, 64x64, Android config)",
        "",
        "`python benchmarks/mediapipe_resize.py`; MediaPipe "
        f"{mp.__version__}. Top-1 agreement with eager PyTorch on the model as trained, and the",
        "largest difference in the top-1 probability.",
        "",
        "| images | path | top-1 agreement | max top-1 probability diff |",
        "|---|---|---|---|",
        *rows, ""])
    target = ROOT / "benchmarks" / "results" / "mediapipe_resize.md"
    target.write_text(text)
    print(text)
    os._exit(0)  # mediapipe 1.2.3 can deadlock closing classifiers at exit


if __name__ == "__main__":
    main()

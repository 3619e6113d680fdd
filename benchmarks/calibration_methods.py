"""Which calibration makes the best all-int8 model: method x calibration set x weights.

Each row is a real `int8-static` export (ONNX through ORT's calibrators, TFLite through PT2E's
observers) with everything quantised (`quantize.max_float_groups = 0`: no layer kept float),
validated on held-out images against float PyTorch. Two calibration sets: the images alone,
and topped up to 64 views with random resized crops and mirror images
(`quantize.calibration_views`). Two weights: mvdeploy's seeded input-sensitive XXS A at 256x256
(the bundled pool dealt into calibration and report sets, mvdeploy.pipeline.image_sets; the
committed results were measured with three bundled photos calibrating and three held out) and the
trained digits fixture at 64x64 (calibrated on 20 training digits, held out on 2 digits per
class). The defaults (`quantize.calibration_method = "auto"`; `calibration_views = 0`, no
augmented views) follow this table.

    python benchmarks/calibration_methods.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from mvdeploy.backends import spec
from mvdeploy.files import write_atomic
from mvdeploy.fixtures import checkpoint_dir, write_digits
from mvdeploy.pipeline.config import load_config
from mvdeploy.pipeline.exporter import run_export


def rows_for(weights: str, base: dict, tmp: Path) -> list[dict]:
    rows = []
    for fmt in ("onnx", "tflite"):
        for method in spec(fmt).calibration_methods:
            for views in (0, 64):
                out = tmp / f"{weights}_{fmt}_{method}_{views}".replace(" ", "_")
                cfg = load_config(overrides={
                    **base, "export.formats": fmt, "export.out": str(out),
                    "export.save_program": False, "quantize.precision": "int8-static",
                    "quantize.calibration_method": method,
                    "quantize.calibration_views": views, "quantize.max_float_groups": 0,
                    "quantize.compare_speed": False, "quantize.min_snr_db": 0.0})
                (result,) = run_export(cfg).formats
                photos = result.report.metrics["photos"]
                info = json.loads(result.manifest.read_text())["artifact"]["calibration"]
                rows.append({"weights": weights, "format": fmt, "method": method,
                             "calibration_images": info["images"],
                             "calibration_views": info["views"], "snr_db": photos.snr_db,
                             "top1_agreement": photos.top1_agreement,
                             "held_out": photos.samples})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mvdeploy_calibration_") as tmp:
        tmp = Path(tmp)
        rows = rows_for("seeded XXS A 256", {"model.resolution": "256"}, tmp)
        digits_train = write_digits(tmp / "train", "train", per_class=2)  # 20 digits
        sample = write_digits(tmp / "sample", "held-out", per_class=2)
        rows += rows_for("trained fixture 64", {
            "model.weights": str(checkpoint_dir()), "model.resolution": "64",
            "quantize.calibration_images": str(digits_train),
            "validate.images": str(sample), "validate.max_images": 20}, tmp)
    lines = ["Written by `python benchmarks/calibration_methods.py`: all-int8 `int8-static` "
             "(no layer kept float), SNR of the logits and top-1 agreement on held-out images "
             "against float PyTorch. views: calibration inputs after topping up with crops and "
             "mirror images.", "",
             "| weights | format | method | images | views | SNR dB | top-1 |",
             "|---|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['weights']} | {r['format']} | {r['method']} | {r['calibration_images']} | "
              f"{r['calibration_views']} | {r['snr_db']:.1f} | {r['top1_agreement']:.0%} |"
              for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "calibration_methods.json", json.dumps(rows, indent=1).encode())
    write_atomic(args.out / "calibration_methods.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()

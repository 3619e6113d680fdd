"""How many calibration images int8 needs: fidelity on a fixed report set vs calibration size.

The trained digits fixture at 64x64, all-int8 `int8-static` (no group kept float, so the
calibration alone decides), calibrated on 10, 30, 130 and 510 training digits (an equal number
per class), graded on the same 40 held-out digits (4 per class) against float PyTorch. The
seeded weights are not measured: 512 distinct photos are not available offline.

    python benchmarks/calibration_size.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from mvdeploy.data import sample_image_paths
from mvdeploy.files import write_atomic
from mvdeploy.fixtures import checkpoint_dir, write_digits
from mvdeploy.pipeline.config import load_config
from mvdeploy.pipeline.exporter import run_export

PER_CLASS = (1, 3, 13, 51)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--formats", default="onnx,tflite")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mvdeploy_calibration_size_") as tmp:
        tmp = Path(tmp)
        report = write_digits(tmp / "report", "held-out", per_class=4)
        for per_class in PER_CLASS:
            calibration = write_digits(tmp / f"train_{per_class}", "train", per_class=per_class)
            cfg = load_config(overrides={
                "model.weights": str(checkpoint_dir()), "model.resolution": "64",
                "export.formats": args.formats, "export.out": str(tmp / f"out_{per_class}"),
                "export.save_program": False, "quantize.precision": "int8-static",
                "quantize.calibration_images": str(calibration),
                "quantize.calibration_samples": 512,
                # the search is off (nothing kept float), but its set must still be disjoint
                "quantize.selection_images": str(sample_image_paths()[0].parent),
                "quantize.max_float_groups": 0, "quantize.min_snr_db": 0.0,
                "quantize.compare_speed": False,
                "validate.images": str(report), "validate.max_images": 40})
            for r in run_export(cfg, force=True).formats:
                photos = r.report.metrics["photos"]
                info = json.loads(r.manifest.read_text())["artifact"]["calibration"]
                rows.append({"format": r.format, "calibration_images": info["images"],
                             "report_images": photos.samples, "snr_db": photos.snr_db,
                             "top1_agreement": photos.top1_agreement})
                print(json.dumps(rows[-1]), flush=True)
    lines = ["Written by `python benchmarks/calibration_size.py`: the trained fixture at 64x64, "
             "all-int8 `int8-static`, logit SNR and top-1 agreement with float PyTorch on 40 "
             "held-out digits, per calibration size.", "",
             "| format | calibration images | SNR dB | top-1 |", "|---|---:|---:|---:|"]
    lines += [f"| {r['format']} | {r['calibration_images']} | {r['snr_db']:.1f} | "
              f"{r['top1_agreement']:.0%} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "calibration_size.json", json.dumps(rows, indent=1).encode())
    write_atomic(args.out / "calibration_size.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Export variants x patch presets x resolutions x precisions and tabulate the validation.

    python benchmarks/export_matrix.py                     # fp32, all models: export_matrix.md
    python benchmarks/export_matrix.py --models mobilevit_xxs --resolutions 256 \
        --precisions fp32,fp16,int8-dynamic,int8-static,int8-weights,palettize-4,palettize-6,\
palettize-8,w8a8 --calibration skimage --name quantization

Seeded random weights; validation on the bundled sample photos plus 2 random inputs, as
`mvdeploy export` does. `--calibration skimage` calibrates on scikit-image's photos that
mvdeploy does not bundle, so all bundled photos are held out.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from mvdeploy.config import load_config, parse_override
from mvdeploy.data import sample_image_paths
from mvdeploy.exporter import run_export
from mvdeploy.manifest import library_versions
from mvdeploy.models import list_models
from mvdeploy.quantize import RECIPES


def skimage_calibration_folder() -> str:
    import skimage.data

    folder = Path(tempfile.mkdtemp(prefix="mvdeploy_calibration_"))
    bundled = {p.stem for p in sample_image_paths()}
    source = Path(skimage.data.__file__).parent
    for path in [*source.glob("*.png"), *source.glob("*.jpg")]:
        if path.stem not in bundled:
            shutil.copy(path, folder / path.name)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/mvdeploy_matrix"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--patches", default="A,B")
    parser.add_argument("--resolutions", default="256,320x256")
    parser.add_argument("--formats", default="onnx,tflite,coreml")
    parser.add_argument("--precisions", default="",
                        help="comma-separated recipes; each runs on the formats that offer it "
                             "(default: each format's float default)")
    parser.add_argument("--calibration", default="",
                        help="calibration folder, or 'skimage' (default: bundled photos, split)")
    parser.add_argument("--name", default="export_matrix", help="results file name stem")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        metavar="TABLE.KEY=VALUE", help="extra config override (repeatable)")
    args = parser.parse_args()
    extra = dict(parse_override(s) for s in args.sets)
    calibration = (skimage_calibration_folder() if args.calibration == "skimage"
                   else args.calibration)
    rows = []
    for name in args.models.split(","):
        for patch in args.patches.split(","):
            for res in args.resolutions.split(","):
                for precision in args.precisions.split(","):
                    formats = [f for f in args.formats.split(",")
                               if not precision or precision in RECIPES[f]]
                    rows += export_one(args.out, name, patch, res, precision, formats,
                                       calibration, extra)
    write_results(args.results, args.name, rows)


def export_one(out_root: Path, name: str, patch: str, res: str, precision: str,
               formats: list[str], calibration: str, extra: dict) -> list[dict]:
    torch.manual_seed(0)
    out = out_root / f"{name}_{patch}_{res}_{precision or 'default'}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = {"model.name": name, "model.patch": patch, "model.resolution": res,
                 "export.out": str(out), "export.formats": ",".join(formats),
                 "quantize.precision": precision, "quantize.calibration_images": calibration}
    if precision == "w8a8":
        overrides["coreml.minimum_deployment_target"] = "iOS17"
    overrides.update(extra)
    rows = []
    for r in run_export(load_config(overrides=overrides)).formats:
        row = {"model": name, "patch": patch, "resolution": res, "format": r.format,
               "status": "error" if r.error else r.report.status, "seconds": r.seconds,
               "error": r.error}
        if r.manifest:
            manifest = json.loads(r.manifest.read_text())
            artifact = manifest["artifact"]
            row.update(size_mb=round(artifact["size_bytes"] / 1e6, 2),
                       size_ratio=artifact["size_ratio_to_fp32"], precision=artifact["precision"],
                       max_rank=manifest["validation"]["structure"].get("max_rank"))
            photos = manifest["validation"]["metrics"].get("photos")
            if photos:
                row.update(max_abs=photos["max_abs"], snr_db=photos["snr_db"],
                           cosine=photos["cosine"], top1=photos["top1_agreement"],
                           top5=photos["top5_agreement"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def write_results(results: Path, stem: str, rows: list[dict]) -> None:
    results.mkdir(parents=True, exist_ok=True)
    env = {"python": platform.python_version(), "machine": platform.machine(),
           "libraries": library_versions()}
    (results / f"{stem}.json").write_text(
        json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    cols = [("model", "{}"), ("patch", "{}"), ("resolution", "{}"), ("format", "{}"),
            ("precision", "{}"), ("status", "{}"), ("size_mb", "{}"), ("size_ratio", "{:.2f}"),
            ("max_abs", "{:.1e}"), ("snr_db", "{:.1f}"), ("cosine", "{:.5f}"), ("top1", "{:.0%}"),
            ("top5", "{:.0%}"), ("max_rank", "{}"), ("seconds", "{}")]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[c]) if r.get(c) is not None else "-"
                                       for c, fmt in cols) + " |")
    (results / f"{stem}.md").write_text(
        "Written by `python benchmarks/export_matrix.py` (see its docstring for the exact "
        "command); seeded random weights; metrics on the bundled photos (held out from "
        "calibration). size_ratio: artifact size / float32 weights. Core ML numbers need "
        "macOS: on Linux its status is `structural`.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

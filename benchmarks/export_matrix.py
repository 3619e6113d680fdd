"""Export variants x patch presets x resolutions x precisions and tabulate the validation.

    python benchmarks/export_matrix.py                     # fp32, all models: export_matrix.md
    python benchmarks/export_matrix.py --models mobilevit_xxs --resolutions 256 \
        --precisions fp32,fp16,int8-dynamic,int8-static,int8-weights,palettize-4,palettize-6,\
palettize-8,w8a8 --calibration skimage --name quantization
    python benchmarks/export_matrix.py --fixture --precisions fp32,fp16,int8-dynamic,\
int8-static,int8-weights,palettize-4,palettize-6,palettize-8,w8a8 --name quantization_fixture

Without --weights, mvdeploy's seeded input-sensitive weights (their outputs differ from photo to
photo; each row says whether the reference was degenerate); validation on the bundled sample
photos plus 2 random inputs, as `mvdeploy export` does. `--calibration skimage` calibrates on
scikit-image's photos that mvdeploy does not bundle, so all bundled photos are held out.
`--fixture` uses the trained digits fixture at 64x64: validated on 2 held-out digits per class,
calibrated on its training split, and scored on the whole held-out split (top-1 accuracy of
each artifact next to PyTorch's).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
from pathlib import Path

from mvdeploy.backends import spec
from mvdeploy.data import sample_image_paths
from mvdeploy.models import list_models
from mvdeploy.pipeline.config import load_config, parse_override
from mvdeploy.pipeline.exporter import run_export
from mvdeploy.pipeline.manifest import library_versions, read_manifest


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
    parser.add_argument("--models", default=",".join(list_models("v1")))
    parser.add_argument("--patches", default="A,B")
    parser.add_argument("--resolutions", default="256,320x256")
    parser.add_argument("--formats", default="onnx,tflite,coreml")
    parser.add_argument("--precisions", default="",
                        help="comma-separated recipes; each runs on the formats that offer it "
                             "(default: each format's float default)")
    parser.add_argument("--calibration", default="",
                        help="calibration folder, or 'skimage' (default: bundled photos, split)")
    parser.add_argument("--weights", default=None,
                        help="checkpoint (path or hub id; default: seeded input-sensitive)")
    parser.add_argument("--fixture", action="store_true",
                        help="the trained digits fixture: 64x64, digits for validation, "
                             "calibration and accuracy")
    parser.add_argument("--name", default="export_matrix", help="results file name stem")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        metavar="TABLE.KEY=VALUE", help="extra config override (repeatable)")
    args = parser.parse_args()
    extra = dict(parse_override(s) for s in args.sets)
    calibration = (skimage_calibration_folder() if args.calibration == "skimage"
                   else args.calibration)
    if args.weights:
        extra["model.weights"] = args.weights
    if args.fixture:
        from mvdeploy.fixtures import checkpoint_dir, write_digits

        digits = Path(tempfile.mkdtemp(prefix="mvdeploy_digits_"))
        args.models, args.resolutions = "mobilevit_xxs", "64"
        calibration = str(write_digits(digits / "train", "train"))
        extra.update({"model.weights": str(checkpoint_dir()),
                      "validate.images": str(write_digits(digits / "sample", per_class=2)),
                      "validate.max_images": 20,
                      "validate.labelled_images": str(write_digits(digits / "held-out"))})
    rows = []
    for name in args.models.split(","):
        for patch in args.patches.split(","):
            for res in args.resolutions.split(","):
                for precision in args.precisions.split(","):
                    formats = [f for f in args.formats.split(",")
                               if not precision or precision in spec(f).recipes]
                    rows += export_one(args.out, name, patch, res, precision, formats,
                                       calibration, extra)
    weights = ("the trained digits fixture (mvdeploy/fixtures/mobilevit_xxs_digits), metrics on "
               "20 held-out digits (2 per class) plus 2 random inputs, accuracy on all held-out "
               "digits" if args.fixture else f"weights {args.weights}" if args.weights else
               "mvdeploy's seeded input-sensitive weights, metrics on the bundled photos "
               "(held out from calibration) plus 2 random inputs")
    write_results(args.results, args.name, rows, weights)


def export_one(out_root: Path, name: str, patch: str, res: str, precision: str,
               formats: list[str], calibration: str, extra: dict) -> list[dict]:
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
            manifest = read_manifest(r.manifest)
            artifact = manifest.artifact
            row.update(size_mb=round(artifact["size_bytes"] / 1e6, 2),
                       size_ratio=artifact["size_ratio_to_fp32"], precision=artifact["precision"],
                       max_rank=manifest.validation["structure"].get("max_rank"))
            validation = manifest.validation
            row.update(degenerate=manifest.degenerate,
                       reference_spread=round(validation["reference"]["spread"], 3))
            photos = validation["metrics"].get("photos")
            if photos:
                row.update(max_abs=photos["max_abs"], max_rel=photos["max_rel"],
                           snr_db=photos["snr_db"], cosine=photos["cosine"],
                           top1=photos["top1_agreement"], top5=photos["top5_agreement"],
                           top1_decisive=photos.get("top1_agreement_decisive"),
                           decisive=photos.get("decisive"))
            search = artifact.get("float_search")
            if search:
                row.update(float_groups=f"{len(search['float_groups'])}/{search['groups']}",
                           kept_float=search["float_groups"], search_tries=search["tries"])
            speed = artifact.get("speed") or {}
            if speed.get("measured"):
                row.update(speedup=speed["speedup"], ms=speed["ms"], fp32_ms=speed["fp32_ms"])
            accuracy = validation["accuracy"].get("labelled")
            if accuracy:
                row.update(accuracy=accuracy["artifact_top1"],
                           reference_accuracy=accuracy["reference_top1"])
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def write_results(results: Path, stem: str, rows: list[dict], weights: str) -> None:
    results.mkdir(parents=True, exist_ok=True)
    env = {"python": platform.python_version(), "machine": platform.machine(),
           "libraries": library_versions()}
    (results / f"{stem}.json").write_text(
        json.dumps({"env": env, "weights": weights, "rows": rows}, indent=2) + "\n")
    cols = [("model", "{}"), ("patch", "{}"), ("resolution", "{}"), ("format", "{}"),
            ("precision", "{}"), ("status", "{}"), ("size_mb", "{}"), ("size_ratio", "{:.2f}"),
            ("max_abs", "{:.1e}"), ("max_rel", "{:.1e}"), ("snr_db", "{:.1f}"),
            ("cosine", "{:.5f}"), ("top1", "{:.0%}"), ("top1_decisive", "{:.0%}"),
            ("top5", "{:.0%}"), ("float_groups", "{}"), ("speedup", "{:.2f}"),
            ("accuracy", "{:.2%}"), ("reference_accuracy", "{:.2%}"),
            ("reference_spread", "{:.2f}"), ("max_rank", "{}"), ("seconds", "{}")]
    if not any("accuracy" in r for r in rows):
        cols = [c for c in cols if "accuracy" not in c[0]]
    lines = ["| " + " | ".join(c for c, _ in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(fmt.format(r[c]) if r.get(c) is not None else "-"
                                       for c, fmt in cols) + " |")
    (results / f"{stem}.md").write_text(
        "Written by `python benchmarks/export_matrix.py` (see its docstring for the exact "
        f"command); {weights}. top1/top5: agreement with PyTorch's top-1 (top1_decisive: on the "
        "inputs whose top-1 is not a near tie); float_groups: layer groups int8-static's search "
        "kept float, of all; speedup: float32 twin's latency / this artifact's (export's short "
        "interleaved check, 3 rounds, onnxruntime or LiteRT at 2 threads); max_rel: max abs "
        "difference / largest reference value; reference_spread: how much PyTorch's outputs "
        "vary across the inputs (below 0.01 the row is degenerate and proves little). "
        "size_ratio: artifact size / float32 weights. Core ML numbers need macOS: on Linux "
        "its status is `structural`.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Does an int8-static export's reported fidelity hold on photos it never saw?

Each row is a real `mvdeploy export --precision int8-static` (its own calibration, selection and
report sets, mvdeploy.pipeline.image_sets), then the same artifact measured against the export's own
.pt2 on 11 photos that are not in the package and that no set of the export drew from:
scikit-image's photos other than the twelve mvdeploy bundles (brick, cell, gravel,
microaneurysms, moon, the motorcycle pair, page; its synthetic images left out), scikit-learn's
two sample photos and matplotlib's Grace Hopper. All install with the dev extra, offline.

    python benchmarks/heldout_int8.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from mvdeploy.data import quantization_pool_paths
from mvdeploy.files import write_atomic
from mvdeploy.pipeline.config import load_config
from mvdeploy.pipeline.exporter import run_export
from mvdeploy.readback.predict import fidelity

SYNTHETIC = {"chessboard_GRAY", "chessboard_RGB", "color", "logo", "phantom", "horse"}


def unseen_photos(folder: Path) -> list[Path]:
    """Copy the photos described above into `folder` (sorted; 11 with today's packages)."""
    import matplotlib
    import skimage.data
    import sklearn.datasets

    folder.mkdir(parents=True, exist_ok=True)
    bundled = {p.stem for p in quantization_pool_paths()}
    sources = [p for p in sorted(Path(skimage.data.__file__).parent.glob("*.png"))
               if p.stem not in bundled | SYNTHETIC]
    sources += sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))
    sources.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    for path in sources:
        shutil.copy(path, folder / f"{path.parent.parent.name}_{path.name}")
    return sorted(folder.iterdir())


def measure(overrides: dict, unseen: list[Path], out: Path) -> list[dict]:
    """Export with `overrides`, then each format's artifact on the unseen photos."""
    cfg = load_config(overrides={"export.out": str(out), "quantize.precision": "int8-static",
                                 "quantize.compare_speed": False, **overrides})
    began = time.perf_counter()
    result = run_export(cfg, force=True)
    rows = []
    for r in result.formats:
        manifest = json.loads(r.manifest.read_text())
        sets = manifest["validation"]["inputs"]["sets"]
        search = manifest["artifact"].get("float_search", {})
        reported = r.report.metrics["photos"]
        seen, used = fidelity(r.artifact, result.program, unseen)
        rows.append({
            "format": r.format, "weights": cfg.model.weights or "seeded",
            "model": cfg.model.name, "patch": cfg.model.patch,
            "resolution": cfg.model.resolution,
            "calibration": sets["calibration"]["images"],
            "calibration_source": sets["calibration"]["source"],
            "selection": sets["selection"]["images"], "report": sets["report"]["images"],
            "selection_views": search.get("selection_views", 0),
            "report_names": sets["report"]["names"], "unseen_names": [p.name for p in used],
            "float_groups": len(search.get("float_groups", [])),
            "groups": search.get("groups"), "size_ratio_to_fp32": r.size_ratio_to_fp32,
            "validated": r.ok, "search_snr_db": search.get("snr_db"),
            "reported_snr_db": reported.snr_db,
            "reported_top1": f"{round(reported.top1_agreement * reported.samples)}/"
                             f"{reported.samples}",
            "unseen_snr_db": seen.snr_db, "unseen_photos": len(used),
            "unseen_top1": seen.top1_agreement, "unseen_top1_decisive":
                seen.top1_agreement_decisive, "unseen_decisive": seen.decisive,
            "seconds": r.seconds})
        print(json.dumps(rows[-1]), flush=True)
    print(f"export took {time.perf_counter() - began:.0f} s", flush=True)
    return rows


def markdown(rows: list[dict], command: str) -> str:
    lines = [f"`{command}`", "",
             "| weights | patch | format | calibration (source) | selection | report | float "
             "groups | size ratio | reported dB (top-1) | unseen dB | unseen top-1 (decisive) | "
             "gap dB | validated | s |", "|" + "---|" * 14]
    for r in rows:
        views = f" + {r['selection_views']} variants" if r.get("selection_views") else ""
        lines.append(
            f"| {r['weights']} | {r['patch']} | {r['format']} | {r['calibration']} "
            f"({r['calibration_source']}) | {r['selection']}{views} | {r['report']} | "
            f"{r['float_groups']}/{r['groups']} | {r['size_ratio_to_fp32']} | "
            f"{r['reported_snr_db']:.1f} ({r['reported_top1']}) | {r['unseen_snr_db']:.1f} | "
            f"{r['unseen_top1']:.0%} ({r['unseen_top1_decisive']:.0%} of "
            f"{r['unseen_decisive']}) | {r['reported_snr_db'] - r['unseen_snr_db']:+.1f} | "
            f"{'yes' if r['validated'] else 'no'} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--name", default="int8_heldout")
    parser.add_argument("--weights", default="", help="checkpoint (default: seeded weights)")
    parser.add_argument("--model", default="mobilevit_xxs")
    parser.add_argument("--patches", default="A,B")
    parser.add_argument("--resolution", default="256")
    parser.add_argument("--formats", default="onnx,tflite")
    parser.add_argument("--calibration", default="", help="calibration folder (default: the "
                        "bundled photos, as a user without --calibration gets)")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        metavar="KEY=VALUE", help="any other config key")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mvdeploy_heldout_") as tmp:
        tmp = Path(tmp)
        unseen = unseen_photos(tmp / "unseen")
        rows = []
        for patch in args.patches.split(","):
            overrides = {"model.name": args.model, "model.patch": patch,
                         "model.resolution": args.resolution, "export.formats": args.formats,
                         "quantize.calibration_images": args.calibration}
            if args.weights:
                overrides["model.weights"] = args.weights
            overrides.update(s.split("=", 1) for s in args.sets)
            rows += measure(overrides, unseen, tmp / f"export_{patch}")
    command = "python benchmarks/heldout_int8.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
        if v and k not in ("out", "sets")) + "".join(f" --set {s}" for s in args.sets)
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / f"{args.name}.json", json.dumps(rows, indent=1).encode())
    write_atomic(args.out / f"{args.name}.md", markdown(rows, command).encode())


if __name__ == "__main__":
    main()

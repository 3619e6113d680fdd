"""Export every variant x patch preset x resolution to all formats and tabulate the validation.

    python benchmarks/export_matrix.py --out /tmp/mvdeploy_matrix --results benchmarks/results

Random-initialised weights (seeded) unless --weights-dir holds <model>.safetensors files;
validation uses the bundled sample photos plus 2 random inputs, as `mvdeploy export` does.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from pathlib import Path

import torch

from mvdeploy.config import load_config
from mvdeploy.exporter import run_export
from mvdeploy.manifest import library_versions
from mvdeploy.models import list_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/mvdeploy_matrix"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--models", default=",".join(list_models()))
    parser.add_argument("--patches", default="A,B")
    parser.add_argument("--resolutions", default="256,320x256")
    parser.add_argument("--formats", default="onnx,tflite,coreml")
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        for patch in args.patches.split(","):
            for res in args.resolutions.split(","):
                torch.manual_seed(0)
                out = args.out / f"{name}_{patch}_{res}"
                shutil.rmtree(out, ignore_errors=True)
                cfg = load_config(overrides={
                    "model.name": name, "model.patch": patch, "model.resolution": res,
                    "export.out": str(out), "export.formats": args.formats})
                for r in run_export(cfg).formats:
                    row = {"model": name, "patch": patch, "resolution": res,
                           "format": r.format, "status": "error" if r.error else r.report.status,
                           "seconds": r.seconds, "error": r.error}
                    if r.manifest:
                        manifest = json.loads(r.manifest.read_text())
                        row["size_mb"] = round(manifest["artifact"]["size_bytes"] / 1e6, 2)
                        row["precision"] = manifest["artifact"]["precision"]
                        row["max_rank"] = manifest["validation"]["structure"].get("max_rank")
                        photos = manifest["validation"]["metrics"].get("photos")
                        if photos:
                            row.update(max_abs=photos["max_abs"], snr_db=photos["snr_db"],
                                       top1=photos["top1_agreement"])
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    args.results.mkdir(parents=True, exist_ok=True)
    env = {"python": platform.python_version(), "machine": platform.machine(),
           "libraries": library_versions()}
    (args.results / "export_matrix.json").write_text(
        json.dumps({"env": env, "rows": rows}, indent=2) + "\n")
    lines = ["| model | patch | input | format | status | MB | max abs (photos) | SNR dB | "
             "top-1 agree | max rank | convert+validate s |", "|" + "---|" * 11]
    for r in rows:
        def f(key: str, fmt: str, r: dict = r) -> str:
            return fmt.format(r[key]) if r.get(key) is not None else "-"
        lines.append(f"| {r['model']} | {r['patch']} | {r['resolution']} | {r['format']} | "
                     f"{r['status']} | {f('size_mb', '{}')} | {f('max_abs', '{:.1e}')} | "
                     f"{f('snr_db', '{:.0f}')} | {f('top1', '{:.0%}')} | "
                     f"{f('max_rank', '{}')} | {r['seconds']} |")
    (args.results / "export_matrix.md").write_text(
        "Written by `python benchmarks/export_matrix.py`; seeded random weights, bundled photos. "
        "Core ML numbers need macOS: on Linux its status is `structural`.\n\n"
        + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Peak memory of `mvdeploy eval` as the labelled folder grows: streaming keeps it flat.

    python benchmarks/eval_memory.py        # writes benchmarks/results/eval_memory.{json,md}

Builds a folder of 3,594 labelled images (every scikit-learn digit and its mirror image, 8x8
PNGs in class folders), exports the trained fixture to ONNX and TFLite at 64x64, then runs
`mvdeploy eval` in a fresh process on the first 100, 1,000 and all 3,594 images (spread over
the classes with --limit), with and without --weights (the PyTorch reference), and records each
run's peak resident memory (the child's ru_maxrss) and throughput. Loading all 3,594 inputs in
one batch would take 3594 x 3 x 64 x 64 x 4 B = 177 MB on its own.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from mvdeploy.fixtures import checkpoint_dir, digits_split

SIZES = (100, 1000, 3594)


def build_folder(root: Path) -> Path:
    for split in ("train", "held-out"):
        images, labels, index = digits_split(split)
        for image, label, i in zip(images, labels, index, strict=True):
            folder = root / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, mode="L").save(folder / f"{i:04d}.png")
            Image.fromarray(np.ascontiguousarray(image[:, ::-1]), mode="L").save(
                folder / f"{i:04d}_mirror.png")
    return root


def measure(args: list[str]) -> dict:
    """Run `mvdeploy ARGS` in a wrapper process whose only child is that run: its
    RUSAGE_CHILDREN peak is the run's own."""
    code = ("import resource, subprocess, sys, time; t = time.perf_counter(); "
            "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, "
            "time.perf_counter() - t); print(r.stdout, end='')")
    done = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "mvdeploy.cli",
                           *args], capture_output=True, text=True, check=True)
    first, _, rest = done.stdout.partition("\n")
    returncode, peak_kb, seconds = first.split()
    if int(returncode) != 0:
        raise SystemExit(f"mvdeploy {' '.join(args)} failed: {rest[-500:]}")
    return {"peak_rss_mb": round(int(peak_kb) / 1024, 1), "seconds": round(float(seconds), 1),
            "results": json.loads(rest)}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="mvdeploy_eval_memory_"))
    data = build_folder(work / "digits")
    total = sum(1 for _ in data.rglob("*.png"))
    assert total == SIZES[-1], total
    out = work / "export"
    subprocess.run([sys.executable, "-m", "mvdeploy.cli", "export", "-w", str(checkpoint_dir()),
                    "-r", "64", "-f", "onnx,tflite", "-o", str(out)], check=True,
                   capture_output=True)
    artifacts = {fmt: str(next((out / fmt).glob("mobilevit_xxs_A_64x64.*")))
                 for fmt in ("onnx", "tflite")}
    rows = []
    for fmt, artifact in artifacts.items():
        for reference in (False, True):
            for size in SIZES:
                args = ["eval", artifact, "--data", str(data), "--limit", str(size), "--json"]
                if reference:
                    args += ["--weights", str(checkpoint_dir())]
                run = measure(args)
                (result,) = run["results"]
                row = {"format": fmt, "reference": reference, "images": result["images"],
                       "peak_rss_mb": run["peak_rss_mb"], "seconds": run["seconds"],
                       "top1": result["top1"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    results = Path(__file__).parent / "results"
    (results / "eval_memory.json").write_text(json.dumps({
        "command": "python benchmarks/eval_memory.py", "python": platform.python_version(),
        "machine": platform.machine(), "rows": rows}, indent=2) + "\n")
    lines = ["| format | with --weights | images | peak RSS MB | seconds | top-1 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['format']} | {'yes' if r['reference'] else 'no'} | {r['images']} | "
              f"{r['peak_rss_mb']} | {r['seconds']} | {r['top1']:.2%} |" for r in rows]
    (results / "eval_memory.md").write_text(
        "Written by `python benchmarks/eval_memory.py`: `mvdeploy eval` of the trained fixture "
        "(64x64) on the first N of 3,594 digit images (scikit-learn's digits and their mirror "
        "images, so top-1 drops on mirrored digits), each run in a fresh process; peak RSS of "
        "that process; seconds include start-up and imports. All N inputs in one batch would "
        "take 177 MB for N = 3,594.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

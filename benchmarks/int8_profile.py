"""Why int8 pays or not on onnxruntime's CPU: its own profiler on fp32 and int8-static graphs.

Three ONNX exports of the same seeded XXS (patch B, 256x256, `mvdeploy export` as a user runs
it): fp32, int8-static as shipped (the search keeps what it needs float to meet 30 dB), and
int8-static with everything quantised (`quantize.max_float_groups = 0`, which misses the
target). Each is profiled at 1 thread (op times then add up to the run) and the kernel time
per run is summed by op type, so the cost of the QuantizeLinear / DequantizeLinear boundaries
shows beside what QLinearConv and the int8 GEMMs save.

    python benchmarks/int8_profile.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from mvdeploy.data import load_images, sample_image_paths
from mvdeploy.files import write_atomic
from mvdeploy.pipeline.config import load_config
from mvdeploy.pipeline.exporter import run_export

VARIANTS = {  # name -> config overrides
    "fp32": {"quantize.precision": "fp32"},
    "int8-static (shipped)": {"quantize.precision": "int8-static"},
    "int8-static (all int8)": {"quantize.precision": "int8-static",
                               "quantize.max_float_groups": 0, "quantize.min_snr_db": 0.0},
}


def profile(path: Path, images: np.ndarray, runs: int) -> tuple[Counter, float]:
    """Kernel microseconds per op type per run, and the mean run time in ms."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for i in range(runs + 5):
        session.run(None, {name: images[i % len(images)][None]})
    events = json.loads(Path(session.end_profiling()).read_text())
    per_op: Counter = Counter()
    model_runs = [e["dur"] for e in events if e.get("name") == "model_run"][5:]
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"]
    kernels = {op: us / (runs + 5) for op, us in per_op.items()}
    return Counter(kernels), float(np.mean(model_runs)) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--patch", default="B")
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args()
    images, _, _ = load_images(sample_image_paths(), 256, 256)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="mvdeploy_int8_profile_") as tmp:
        for variant, overrides in VARIANTS.items():
            out = Path(tmp) / variant.replace(" ", "_").replace("(", "").replace(")", "")
            cfg = load_config(overrides={
                "model.patch": args.patch, "model.resolution": "256", "export.formats": "onnx",
                "export.out": str(out), "export.save_program": False,
                "quantize.compare_speed": False, **overrides})
            (result,) = run_export(cfg).formats
            kernels, run_ms = profile(result.artifact, images, args.runs)
            rows[variant] = {"run_ms": round(run_ms, 3),
                             "snr_db": result.report.metrics["photos"].snr_db,
                             "kernels_us": {op: round(us, 1) for op, us in kernels.most_common()}}
            print(variant, json.dumps(rows[variant])[:300], flush=True)
    ops = sorted({op for r in rows.values() for op in r["kernels_us"]},
                 key=lambda op: -max(r["kernels_us"].get(op, 0) for r in rows.values()))
    names = list(rows)
    lines = [f"Written by `python benchmarks/int8_profile.py --patch {args.patch}`: "
             "onnxruntime's profiler, 1 thread, seeded XXS "
             f"{args.patch} 256x256, kernel time per run by op type (µs), mean of "
             f"{args.runs} runs. SNR: logits on the held-out bundled photos against PyTorch.", "",
             "| op type | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for op in ops:
        lines.append(f"| {op} | " + " | ".join(
            f"{rows[n]['kernels_us'].get(op, 0):.0f}" for n in names) + " |")
    lines.append("| **kernels, total** | " + " | ".join(
        f"**{sum(rows[n]['kernels_us'].values()):.0f}**" for n in names) + " |")
    lines.append("| run (ms) | " + " | ".join(f"{rows[n]['run_ms']:.2f}" for n in names) + " |")
    lines.append("| SNR dB | " + " | ".join(f"{rows[n]['snr_db']:.1f}" for n in names) + " |")
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"int8_profile_{args.patch}"
    write_atomic(args.out / f"{stem}.json", json.dumps(rows, indent=1).encode())
    write_atomic(args.out / f"{stem}.md", ("\n".join(lines) + "\n").encode())
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""How much does `mvdeploy bench` add to what it measures?

For one configuration per runtime (XXS, patch A, 256x256, fp32, 2 threads) this times
  (a) a bare loop: a fresh Python process that loads the artifact with the runtime's plain
      API and times `run` on one preprocessed photo, nothing else (no pinning, no subprocess
      juggling, no input cycling), and
  (b) `mvdeploy bench` on the same artifact,
alternating a and b for several rounds, and reports the median p50 of each and their ratio.
LiteRT's own `benchmark_model` is a C++ binary that is not on PyPI, so the bare loop stands in
for it here; on a phone, the android target *is* benchmark_model.

    python benchmarks/harness_overhead.py [--rounds 3] [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"

BARE = r"""
import json, sys, time
import numpy as np
runtime, artifact, inputs, threads, runs = sys.argv[1:6]
x = np.load(inputs)[:1]
if runtime == "onnxruntime":
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    call = lambda: session.run(None, {name: x})
else:
    from ai_edge_litert.interpreter import Interpreter
    runner = Interpreter(model_path=artifact, num_threads=int(threads)).get_signature_runner()
    call = lambda: runner(pixel_values=x)
for _ in range(10):
    call()
times = []
for _ in range(int(runs)):
    t0 = time.perf_counter_ns(); call(); times.append((time.perf_counter_ns() - t0) / 1e6)
print(json.dumps({"p50": float(np.median(times)), "runs": len(times)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--cache", default=str(Path.home() / ".cache/mvdeploy/bench"))
    args = parser.parse_args()

    from mvdeploy.data import load_images, sample_image_paths

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "x.npy"
        np.save(inputs, load_images(sample_image_paths(), 256, 256)[0])
        bench, bare = {}, {}
        for r in range(args.rounds):
            out = Path(tmp) / f"bench{r}"
            subprocess.run([sys.executable, "-m", "mvdeploy.cli", "bench", "-m", "mobilevit_xxs",
                            "-p", "A", "-r", "256", "-b", "onnxruntime,litert", "-t", "2",
                            "--min-runs", str(args.runs), "--min-seconds", "0",
                            "--repetitions", "1", "--cache", args.cache, "--out", str(out)],
                           check=True, capture_output=True)
            report = json.loads((out / "results.json").read_text())
            for row in report["results"]:
                bench.setdefault(row["runtime"], []).append(row["latency_ms"]["p50"])
                artifact = row["artifact"]
                done = subprocess.run([sys.executable, "-c", BARE, row["runtime"], artifact,
                                       str(inputs), "2", str(args.runs)],
                                      check=True, capture_output=True, text=True)
                bare.setdefault(row["runtime"], []).append(
                    json.loads(done.stdout.strip().splitlines()[-1])["p50"])
        for runtime in bench:
            b, a = float(np.median(bench[runtime])), float(np.median(bare[runtime]))
            rows.append({"runtime": runtime, "bench_p50_ms": b, "bare_loop_p50_ms": a,
                         "ratio": b / a, "rounds_bench": bench[runtime],
                         "rounds_bare": bare[runtime]})
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "harness_overhead.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Harness overhead: mvdeploy bench vs a bare loop",
             "", "`python benchmarks/harness_overhead.py`: XXS, patch A, 256x256, fp32, "
             f"2 threads, {args.runs} timed runs, {args.rounds} alternating rounds, median of "
             "the rounds' p50.", "",
             "| runtime | mvdeploy bench p50 ms | bare loop p50 ms | bench / bare |",
             "|---|---|---|---|"]
    lines += [f"| {r['runtime']} | {r['bench_p50_ms']:.3f} | {r['bare_loop_p50_ms']:.3f} | "
              f"{r['ratio']:.3f} |" for r in rows]
    (RESULTS / "harness_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Which graph form each runtime runs fastest: every form of the same weights, and the plain
transformers export, timed interleaved in one process (ours/peer ratios, fp32).

    python benchmarks/graph_forms.py --models mobilevit_xxs,mobilevit_xs,mobilevit_s \\
        --threads 2 --rounds 15 --out benchmarks/results

Forms (mvdeploy.models.GraphForm): plain = rank4 fold, 3-D tokens, packed qkv (ml-cvnets,
transformers, mvdeploy before issue 15); nhwc = the NHWC-first fold; +2d = tokens kept
[B*P*N, d]; +separate = three q/k/v linears; +mha (ONNX only) = attention rewritten into
com.microsoft.MultiHeadAttention. The row marked * is what `mvdeploy export` writes for that
format. Each round runs every artifact 10 times in turn; the table gives the median of the
per-round means and the ratio to the transformers peer's median. Patch A (the peer's only
patch size), 256x256, batch 1. This chose FormatSpec.graph_form; `mvdeploy bench --peer`
reports the shipped artifacts with full statistics.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from op_profile import RESOLUTION, export

from mvdeploy.backends import get_backend, spec
from mvdeploy.files import write_atomic
from mvdeploy.models import PLAIN_FORM, GraphForm, create_model
from mvdeploy.models.weights import save_checkpoint

FORMS = {
    "plain": PLAIN_FORM,
    "nhwc": GraphForm("nhwc", "3d", "packed"),
    "nhwc+2d": GraphForm("nhwc", "2d", "packed"),
    "nhwc+2d+separate": GraphForm("nhwc", "2d", "separate"),
}
RUNTIMES = {"onnx": "onnxruntime", "tflite": "litert", "executorch": "executorch"}


def ort_session(path: Path, threads: int):
    """Spin-waiting off: several sessions in one process on few cores would contend."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})[0]


def runner(fmt: str, path: Path, threads: int):
    if fmt == "onnx":
        return ort_session(path, threads)
    session = get_backend(fmt).load(path, threads=threads)
    return lambda x: session.scores(session.infer(session.prepare(x)))


def variants(fmt: str) -> dict[str, tuple[GraphForm | None, str]]:
    """name -> (form or None for the peer, onnx attention)."""
    out = {name: (form, "standard") for name, form in FORMS.items()}
    if fmt == "onnx":
        out["plain+mha"] = (PLAIN_FORM, "fused")
        out["nhwc+2d+mha"] = (FORMS["nhwc+2d"], "fused")
        out["nhwc+2d+separate+mha"] = (FORMS["nhwc+2d+separate"], "fused")
    out["transformers"] = (None, "standard")
    return out


def shipped(fmt: str) -> str:
    form = GraphForm(**spec(fmt).graph_form)
    name = next(k for k, v in FORMS.items() if v == form)
    return name + ("+mha" if fmt == "onnx" else "")


def measure(name: str, fmt: str, weights: Path, work: Path, threads: int,
            rounds: int) -> list[dict]:
    runs, sizes = {}, {}
    for variant, (form, attention) in variants(fmt).items():
        path = work / f"{name}_{fmt}_{variant}{spec(fmt).suffix}"
        print(f"{name} {fmt}: exporting {variant}", flush=True)
        export(fmt, name, "A", weights, form, path, attention=attention)
        runs[variant] = runner(fmt, path, threads)
        sizes[variant] = path.stat().st_size
    x = np.random.default_rng(0).random((1, 3, RESOLUTION, RESOLUTION), np.float32)
    reference = runs["transformers"](x)
    diffs = {k: float(np.abs(r(x) - reference).max() / np.abs(reference).max())
             for k, r in runs.items()}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for variant, run in runs.items():
            start = time.perf_counter()
            for _ in range(10):
                run(x)
            times[variant].append((time.perf_counter() - start) / 10 * 1000)
    peer = float(np.median(times["transformers"]))
    return [{"model": name, "runtime": RUNTIMES[fmt], "form": variant,
             "shipped": variant == shipped(fmt),
             "p50_ms": round(float(np.median(t)), 3),
             "ratio_to_peer": round(float(np.median(t)) / peer, 3),
             "round_ratio_spread": [round(float(v), 3) for v in np.percentile(
                 np.array(t) / np.array(times["transformers"]), [10, 90])],
             "max_rel_diff_to_peer": diffs[variant], "size_bytes": sizes[variant]}
            for variant, t in times.items()]


def markdown(report: dict) -> str:
    lines = [f"Written by `{report['command']}`; {report['machine']}, {report['threads']} "
             "threads. Ratio: median of per-round means over the transformers peer's (p10-p90 "
             "of the per-round ratios in brackets); * = the form `mvdeploy export` ships for "
             "that runtime; max rel diff = largest |difference| to the peer's logits over the "
             "largest logit.", "",
             "| model | runtime | form | p50 ms | ours / peer | max rel diff |",
             "|---|---|---|---:|---:|---:|"]
    for r in report["rows"]:
        low, high = r["round_ratio_spread"]
        form = r["form"] + (" *" if r["shipped"] else "")
        lines.append(f"| {r['model']} | {r['runtime']} | {form} | {r['p50_ms']:.2f} | "
                     f"{r['ratio_to_peer']:.3f} ({low:.2f}-{high:.2f}) | "
                     f"{r['max_rel_diff_to_peer']:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilevit_xxs,mobilevit_xs,mobilevit_s")
    parser.add_argument("--formats", default="onnx,tflite,executorch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            weights = save_checkpoint(create_model(name), work / f"{name}.safetensors")
            for fmt in args.formats.split(","):
                rows += measure(name, fmt, weights, work, args.threads, args.rounds)
    report = {"command": "python benchmarks/graph_forms.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": platform.processor() or platform.machine(), "threads": args.threads,
        "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "graph_forms.json", json.dumps(report, indent=1).encode())
    write_atomic(args.out / "graph_forms.md", markdown(report).encode())
    print(markdown(report))


if __name__ == "__main__":
    main()

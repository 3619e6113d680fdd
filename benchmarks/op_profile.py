"""Where the time goes, per op type: onnxruntime's own profiler on three ONNX graphs of the same
weights, and the op histogram of the matching LiteRT (TFLite) files.

- plain: mvdeploy's graph before per-format graph forms (ml-cvnets' rank-4 fold, 3-D tokens,
  packed qkv, attention as MatMul/Softmax/MatMul);
- mvdeploy: what `mvdeploy export` writes today for the format (FormatSpec.graph_form, and for
  ONNX the com.microsoft.MultiHeadAttention rewrite);
- transformers: MobileViTForImageClassification exported plainly (patch A only: transformers
  has one patch size for all stages).

    python benchmarks/op_profile.py --models mobilevit_xxs --patches A,B --out benchmarks/results

ORT is profiled at 1 thread (op times then add up to the run); kernel time per run and its share
are the mean over --runs runs. The ai-edge-litert wheel has no op profiler (benchmark_model's
--enable_op_profiling is a separate binary, not installable here), so LiteRT gets op counts,
which show what each graph form removes. Timing ratios come from `mvdeploy bench --peer`.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from mvdeploy.backends import ArtifactMetadata, Job, QuantizeOptions, get_backend, spec
from mvdeploy.backends.capture import capture
from mvdeploy.bench.peer import transformers_model
from mvdeploy.data import Preprocessing
from mvdeploy.files import write_atomic
from mvdeploy.models import PLAIN_FORM, GraphForm, create_model
from mvdeploy.models.weights import save_checkpoint

RESOLUTION = 256


def export(fmt: str, name: str, patch: str, weights: Path, form: GraphForm | None,
           path: Path, attention: str | None = None) -> Path:
    """form None: the transformers peer, exported plainly; else mvdeploy's converter in that
    form (ONNX attention: `attention`, or standard for the plain form and fused otherwise)."""
    example = torch.rand(1, 3, RESOLUTION, RESOLUTION)
    if form is None:
        get_backend(fmt).plain_export(transformers_model(name, str(weights)), example, path)
        return path
    model = create_model(name, weights=str(weights), patch_sizes=patch, form=form)
    options = spec(fmt).options()
    if fmt == "onnx":
        options = type(options)(attention=attention or
                                ("standard" if form == PLAIN_FORM else "fused"))
    get_backend(fmt).convert(Job(
        captured=capture(model, example), path=path, options=options, recipe="fp32",
        quantize=QuantizeOptions(), calibration=None, preprocessing=Preprocessing(),
        metadata=ArtifactMetadata(), model=name, patch=patch, resolution=(RESOLUTION,) * 2))
    return path


def ort_profile(path: Path, runs: int) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name:
            np.random.default_rng(0).random((1, 3, RESOLUTION, RESOLUTION), np.float32)}
    for _ in range(5):  # warm-up runs are profiled too: dropped below by run index
        session.run(None, feed)
    for _ in range(runs):
        session.run(None, feed)
    events = json.loads(Path(session.end_profiling()).read_text())
    run_starts = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    first_timed = run_starts[5]
    per_op: Counter[str] = Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first_timed:
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values())
    return {"kernel_ms": round(total / runs / 1000, 3),
            "ops": {op: {"ms": round(us / runs / 1000, 3), "share": round(us / total, 4)}
                    for op, us in per_op.most_common()}}


def litert_ops(path: Path) -> dict:
    return get_backend("tflite").describe(path)["ops"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilevit_xxs")
    parser.add_argument("--patches", default="A,B")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            weights = save_checkpoint(create_model(name), work / f"{name}.safetensors")
            for patch in args.patches.split(","):
                graphs = {"plain": PLAIN_FORM}
                graphs.update({"mvdeploy": None, "transformers": None} if patch == "A"
                              else {"mvdeploy": None})
                for graph in graphs:
                    for fmt in ("onnx", "tflite"):
                        form = (PLAIN_FORM if graph == "plain" else None if graph == "transformers"
                                else GraphForm(**spec(fmt).graph_form))
                        path = work / f"{name}_{patch}_{graph}{spec(fmt).suffix}"
                        print(f"{name} {patch} {graph}: {fmt}", flush=True)
                        export(fmt, name, patch, weights, form, path)
                        row = {"model": name, "patch": patch, "graph": graph, "format": fmt}
                        if fmt == "onnx":
                            row["profile"] = ort_profile(path, args.runs)
                        else:
                            row["ops"] = litert_ops(path)
                        rows.append(row)
    report = {"command": "python benchmarks/op_profile.py " + " ".join(
        f"--{k} {v}" for k, v in vars(args).items() if k != "out"),
        "machine": platform.processor() or platform.machine(), "threads": 1,
        "resolution": RESOLUTION, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out / "op_profile.json", json.dumps(report, indent=1).encode())
    write_atomic(args.out / "op_profile.md", markdown(report).encode())
    print(markdown(report))


def _profile_cell(row: dict, op: str) -> str:
    entry = row["profile"]["ops"].get(op)
    return f"{entry['ms']:.3f} ({100 * entry['share']:.0f} %)" if entry else ""


def _first_seen(group: list[dict]) -> list[str]:
    """Op types by time in the first graph, then the ones only later graphs have."""
    return list(dict.fromkeys(op for r in group for op in r["profile"]["ops"]))


def _most_used(group: list[dict]) -> list[str]:
    return sorted({op for r in group for op in r["ops"]},
                  key=lambda op: (-max(r["ops"].get(op, 0) for r in group), op))


def markdown(report: dict) -> str:
    lines = [f"Written by `{report['command']}` (onnxruntime profiler, 1 thread, "
             f"{report['resolution']}x{report['resolution']}, batch 1, mvdeploy's seeded "
             "weights). Graphs: plain = mvdeploy before per-format graph forms; mvdeploy = "
             "today's export; transformers = its model exported plainly.", ""]
    for fmt, title, total, cell, order in (
            ("onnx", "onnxruntime, {} patch {}: kernel ms per run (share)",
             lambda r: f"**{r['profile']['kernel_ms']:.2f}**", _profile_cell, _first_seen),
            ("tflite", "LiteRT, {} patch {}: op counts",
             lambda r: f"**{sum(r['ops'].values())}**",
             lambda r, op: str(r["ops"].get(op, "")), _most_used)):
        rows = [r for r in report["rows"] if r["format"] == fmt]
        for key in dict.fromkeys((r["model"], r["patch"]) for r in rows):
            group = [r for r in rows if (r["model"], r["patch"]) == key]
            lines += [f"### {title.format(*key)}", "",
                      "| op | " + " | ".join(r["graph"] for r in group) + " |",
                      "|---|" + "---:|" * len(group),
                      "| **total** | " + " | ".join(total(r) for r in group) + " |"]
            lines += [f"| {op} | " + " | ".join(cell(r, op) for r in group) + " |"
                      for op in order(group)]
            lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

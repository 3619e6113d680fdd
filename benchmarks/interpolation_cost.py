"""What resizing costs when a patch does not divide a feature map (224x224, patch 2 at stride 32).

For each model x patch preset x resolution: eager PyTorch p50 latency (batch 1, fixed threads),
the share of operator time spent in bilinear resizing (torch.profiler, self CPU time), and the
MACs, so 224 can be compared with 256 where nothing is resized.

    python benchmarks/interpolation_cost.py --threads 2 --runs 50 --out benchmarks/results

This is a focused measurement for docs/model.md; the general harness is `mvdeploy bench`.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from mvdeploy.models import (
    create_model,
    format_patch_sizes,
    interpolated_stages,
    list_models,
    parse_patch_sizes,
    parse_resolution,
)
from mvdeploy.models.macs import count_macs


def p50_ms(model: torch.nn.Module, x: torch.Tensor, runs: int, warmup: int = 5) -> float:
    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def resize_share(model: torch.nn.Module, x: torch.Tensor, runs: int = 10) -> float:
    """Fraction of operator self time spent in bilinear upsampling."""
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            model(x)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    resize = sum(e.self_cpu_time_total for e in events if "upsample_bilinear" in e.key)
    return resize / total if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(list_models("v1")))
    parser.add_argument("--patch", action="append", help="preset or sizes; repeat (default A, B)")
    parser.add_argument("--resolutions", default="224,256")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for name in args.models.split(","):
        for spec in args.patch or ["A", "B"]:
            patches = parse_patch_sizes(spec)
            model = create_model(name, patch_sizes=patches)
            for res in args.resolutions.split(","):
                h, w = parse_resolution(res)
                x = torch.rand(1, 3, h, w)
                row = {
                    "model": name,
                    "patch": format_patch_sizes(patches),
                    "resolution": f"{h}x{w}",
                    "resized_strides": [8 * 2**i for i in interpolated_stages(patches, h, w)],
                    "gmacs": round(count_macs(model, h, w).gmacs, 3),
                    "p50_ms": round(p50_ms(model, x, args.runs), 2),
                    "resize_share": round(resize_share(model, x), 4),
                }
                row["resize_ms"] = round(row["p50_ms"] * row["resize_share"], 2)
                rows.append(row)
                print(json.dumps(row), flush=True)
    env = {"torch": torch.__version__, "threads": args.threads, "runs": args.runs,
           "cpu": platform.processor() or platform.machine(), "python": platform.python_version()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "interpolation_cost.json").write_text(json.dumps({"env": env, "rows": rows},
                                                                 indent=2))
    lines = ["| model | patch | input | resized at stride | GMACs | p50 ms | resize share | "
             "resize ms |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        strides = ",".join(map(str, r["resized_strides"])) or "-"
        lines.append(f"| {r['model']} | {r['patch']} | {r['resolution']} | {strides} | "
                     f"{r['gmacs']} | {r['p50_ms']} | {r['resize_share']:.1%} | {r['resize_ms']} |")
    (args.out / "interpolation_cost.md").write_text(
        f"Eager PyTorch {env['torch']}, batch 1, {args.threads} threads, {args.runs} runs "
        f"(p50), CPU {env['cpu']}.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

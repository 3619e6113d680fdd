"""The GPU study: MobileViT latency on a CUDA machine, through `mvdeploy bench`.

Two suites, each one `mvdeploy bench --suite` run (the harness every other study uses):
- benchmarks/gpu_study.toml: PyTorch eager fp32/fp16 and onnxruntime's CUDA provider;
- benchmarks/gpu_study_compiled.toml: torch.compile and onnxruntime's TensorRT provider, fp16;
each over XXS, XS, S x patch presets A (2,2,2) and B (8,4,2) at 256x256, batch 1 and 32.
Results go to benchmarks/results/gpu_study/<GPU name>/ and .../<GPU name>-compiled/.

    python benchmarks/gpu_study.py --plan        # what it would run, here, without a GPU
    python benchmarks/gpu_study.py --install     # on a CUDA machine: CUDA wheels, then the runs

--install puts in the CUDA build of the torch version installed here (from PyTorch's wheel
index, --torch-index) and onnxruntime-gpu of the onnxruntime version installed here, each only
when what is installed cannot use the GPU. TensorRT rows need TensorRT's libraries
(`pip install tensorrt-cu12`, or NVIDIA's packages); without them they are reported
unavailable with the reason, like any row that cannot run. Without a CUDA device the script
says so in one line and exits 1, having measured and written nothing.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = {"": HERE / "gpu_study.toml", "-compiled": HERE / "gpu_study_compiled.toml"}
OUT = HERE / "results" / "gpu_study"
TORCH_INDEX = "https://download.pytorch.org/whl/cu128"


def probe() -> dict:
    """What this environment's torch and onnxruntime can do, asked in a fresh interpreter so
    that wheels installed a moment ago are the ones seen."""
    code = ("import json, torch\n"
            "try:\n import onnxruntime as ort; providers = ort.get_available_providers()\n"
            "except ImportError:\n providers = []\n"
            "ok = torch.cuda.is_available()\n"
            "print(json.dumps({'torch': torch.__version__, 'cuda': ok, 'providers': providers,"
            " 'gpu': torch.cuda.get_device_name(0) if ok else None}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"gpu_study: cannot import torch here: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def pip(*args: str) -> None:
    print("+ pip " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def install(found: dict, torch_index: str) -> None:
    """CUDA wheels of the versions installed here, only where what is installed lacks CUDA."""
    if not found["cuda"] and "+cpu" in found["torch"]:
        release = found["torch"].split("+")[0]
        pip("install", "--force-reinstall", "--no-deps", f"torch=={release}",
            "--index-url", torch_index)
    if "CUDAExecutionProvider" not in found["providers"]:
        try:
            ort = version("onnxruntime")
        except PackageNotFoundError:
            ort = None
        if ort:
            pip("uninstall", "-y", "onnxruntime")  # the CPU and GPU wheels share a module
        pip("install", f"onnxruntime-gpu=={ort}" if ort else "onnxruntime-gpu")


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")


def commands(gpu: str, out: Path, extra: list[str]) -> list[list[str]]:
    return [[sys.executable, "-m", "mvdeploy.cli", "bench", "--suite", str(suite), "--out",
             str(out / (slug(gpu) + tail)), "--force", *extra]
            for tail, suite in SUITES.items()]


def plan() -> None:
    """The matrix each suite builds (no GPU needed): what would run, and how many worker runs."""
    from mvdeploy.bench.matrix import build_matrix, load_suite

    total = 0
    for suite in SUITES.values():
        values, timing = load_suite(suite)
        keys = ("models", "patches", "resolutions", "runtimes", "precisions", "threads",
                "batches", "target", "accelerators")
        matrix = build_matrix(**{k: values[k] for k in keys})
        runs = len(matrix.configs) * timing.repetitions
        total += runs
        print(f"{suite.name}: {len(matrix.configs)} configurations x {timing.repetitions} "
              f"rounds = {runs} worker runs")
        for cfg in matrix.configs:
            print(f"  {cfg.label}")
    print(f"in all: {total} worker runs")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plan", action="store_true", help="list what would run and stop")
    parser.add_argument("--install", action="store_true",
                        help="install the CUDA wheels first, where what is here lacks CUDA")
    parser.add_argument("--torch-index", default=TORCH_INDEX,
                        help=f"PyTorch wheel index for --install (default {TORCH_INDEX})")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--quick", action="store_true", help="a smoke run (bench --quick)")
    args = parser.parse_args(argv)
    if args.plan:
        plan()
        return 0
    began = time.perf_counter()
    found = probe()
    if args.install:
        install(found, args.torch_index)
        found = probe()
    if not found["cuda"]:
        print(f"gpu_study: no CUDA device here (torch {found['torch']}: "
              "torch.cuda.is_available() is False); run it on a CUDA machine, with --install "
              "for the CUDA wheels; nothing was measured", file=sys.stderr)
        return 1
    print(f"gpu_study: {found['gpu']}, torch {found['torch']}, onnxruntime providers "
          f"{', '.join(found['providers'])}", flush=True)
    codes = [subprocess.run(c).returncode
             for c in commands(found["gpu"], args.out, ["--quick"] if args.quick else [])]
    print(f"gpu_study: done in {time.perf_counter() - began:.0f} s; results in "
          f"{args.out / slug(found['gpu'])}[-compiled]", flush=True)
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())

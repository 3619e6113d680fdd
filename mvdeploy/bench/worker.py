"""Time one configuration in this process: `python -m mvdeploy.bench.worker SPEC.json`.

The runner starts one of these per configuration and round, so a crash or a leak stays here.
Exported artifacts are loaded through their format's runtime (`load` in the format's module),
which imports no torch, so load time and peak RSS are the runtime's; the one exception is a
runtime whose Python bindings need torch (ExecuTorch's), and there torch is imported before the
load timer starts. Inputs are real photos, preprocessed by the runner and converted to the
runtime's layout and dtype before timing starts: the timed call is inference alone.
The result (or the error) is written as JSON to spec["result"].
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mvdeploy.backends import BackendUnavailable
from mvdeploy.files import write_atomic

MAX_RUNS = 100_000  # a safety stop for min_seconds on very fast configurations


class Unavailable(Exception):
    """The runtime or accelerator asked for is not present here."""


Infer = Callable[[object], object]


def _pin(threads: int) -> list[int] | None:
    """Pin to the first `threads` CPUs this process may use (Linux), so runs do not migrate."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))[:threads]
    os.sched_setaffinity(0, cpus)
    return cpus


def _exported(spec: dict) -> tuple[Infer, Callable]:
    """An exported artifact, through its format's own runtime."""
    from mvdeploy.backends import get_backend, runtimes

    fmt = runtimes()[spec["runtime"]]
    runtime = next(r for r in fmt.runtimes if r.name == spec["runtime"])
    load = getattr(get_backend(fmt.name), runtime.loader)
    session = load(Path(spec["artifact"]), threads=spec["threads"],
                   accelerator=spec["accelerator"])
    return session.infer, session.prepare


def _torch(spec: dict) -> tuple[Infer, Callable]:
    import torch

    torch.set_num_threads(spec["threads"])
    device = "cuda" if spec["target"] == "cuda" else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("torch.cuda.is_available() is False")
    if spec["impl"] == "transformers":
        from mvdeploy.bench.peer import transformers_model

        model = transformers_model(spec["model"], spec["weights"])
    else:
        from mvdeploy.models import create_model

        model = create_model(spec["model"], patch_sizes=spec["patch"], weights=spec["weights"])
    dtype = torch.float16 if spec["precision"] == "fp16" else torch.float32
    model = model.eval().to(device=device, dtype=dtype)
    if spec["runtime"] == "torch-compile":
        model = torch.compile(model)  # compiled on the first call: part of first_ms

    def prepare(x: np.ndarray):
        return torch.from_numpy(x).to(device=device, dtype=dtype)

    def infer(x):
        with torch.inference_mode():
            out = model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return infer, prepare


def _loader(runtime: str) -> Callable[[dict], tuple[Infer, Callable]]:
    return _torch if runtime in ("torch", "torch-compile") else _exported


def _preload(runtime: str) -> None:
    """Import what a runtime's Python bindings need but the runtime itself does not (torch for
    ExecuTorch's pybindings), so the timed load is the runtime's own; for every other exported
    format, make torch unimportable, so a library that would import it optionally (coremltools
    does at import) runs without it, as on a device."""
    from mvdeploy.backends import runtimes

    fmt = runtimes().get(runtime)
    if fmt is None:  # eager or compiled PyTorch
        return
    if any(r.imports_torch for r in fmt.runtimes if r.name == runtime):
        import torch  # noqa: F401
    else:
        sys.modules.setdefault("torch", None)  # type: ignore[assignment]


def _peak_rss_mb() -> float:
    """This process's resident-set high-water mark. On Linux from /proc (VmHWM), because
    ru_maxrss keeps the pre-exec peak of the forked parent, i.e. the runner's memory."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes vs KiB


def measure(spec: dict) -> dict:
    """load -> first inference -> warm-up -> at least min_runs and min_seconds of timed runs."""
    cpus = _pin(spec["threads"]) if spec.get("pin", True) else None
    images = np.load(spec["inputs"])
    batch = spec["batch"]
    raw = [np.take(images, range(i, i + batch), axis=0, mode="wrap")
           for i in range(0, len(images), batch)]
    _preload(spec["runtime"])
    start = time.perf_counter()
    infer, prepare = _loader(spec["runtime"])(spec)
    load_ms = (time.perf_counter() - start) * 1e3
    feeds = [prepare(x) for x in raw]
    start = time.perf_counter()
    infer(feeds[0])
    first_ms = (time.perf_counter() - start) * 1e3
    for i in range(spec["warmup"]):
        infer(feeds[i % len(feeds)])
    samples: list[float] = []
    began = time.perf_counter()
    while (len(samples) < spec["min_runs"]
           or time.perf_counter() - began < spec["min_seconds"]) and len(samples) < MAX_RUNS:
        feed = feeds[len(samples) % len(feeds)]
        t0 = time.perf_counter_ns()
        infer(feed)
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return {"status": "ok", "load_ms": load_ms, "first_ms": first_ms, "samples_ms": samples,
            "peak_rss_mb": _peak_rss_mb(), "cpus": cpus,
            "torch_imported": sys.modules.get("torch") is not None}  # then RSS includes torch


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = measure(spec)
    except (Unavailable, BackendUnavailable) as exc:
        result = {"status": "unavailable", "error": str(exc)}
    except Exception as exc:  # reported per configuration; the run goes on
        first = str(exc).strip().splitlines()
        result = {"status": "failed",
                  "error": f"{type(exc).__name__}: {first[0][:300] if first else ''}",
                  "traceback": traceback.format_exc()[-4000:]}
    write_atomic(Path(spec["result"]), json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

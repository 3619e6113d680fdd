"""Time one configuration in this process: `python -m mvdeploy.bench.worker SPEC.json`.

The runner starts one of these per configuration and round, so a crash or a leak stays here.
Only the runtime under test is imported (no torch for onnxruntime / LiteRT), so load time and
peak RSS are the runtime's. Inputs are real photos, preprocessed by the runner and converted to
the runtime's layout and dtype before timing starts: the timed call is inference alone.
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


def _onnxruntime(spec: dict) -> tuple[Infer, Callable]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = spec["threads"]
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    wanted = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
              "tensorrt": "TensorrtExecutionProvider"}[spec["accelerator"]]
    if wanted not in ort.get_available_providers():
        raise Unavailable(f"onnxruntime here has no {wanted} (it has "
                          f"{', '.join(ort.get_available_providers())})")
    session = ort.InferenceSession(spec["artifact"], options, providers=[wanted])
    name = session.get_inputs()[0].name

    def prepare(x: np.ndarray) -> dict:
        return {name: np.ascontiguousarray(x, dtype=np.float32)}

    return (lambda feed: session.run(None, feed)), prepare


def _litert(spec: dict) -> tuple[Infer, Callable]:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # the legacy runtime, only as a fallback
        from tflite_runtime.interpreter import Interpreter

    interpreter = Interpreter(model_path=spec["artifact"], num_threads=spec["threads"])
    runner = interpreter.get_signature_runner()
    (name, details), = runner.get_input_details().items()
    nhwc = int(details["shape"][-1]) == 3
    scale, zero = details.get("quantization", (0.0, 0))
    dtype = details["dtype"]

    def prepare(x: np.ndarray) -> dict:
        if nhwc:
            x = x.transpose(0, 2, 3, 1)
        if scale:  # integer input: quantise with the tensor's own parameters, outside timing
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max)
        return {name: np.ascontiguousarray(x, dtype=dtype)}

    return (lambda feed: runner(**feed)), prepare


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


def _coreml(spec: dict) -> tuple[Infer, Callable]:
    if sys.platform != "darwin":
        raise Unavailable("Core ML predictions need macOS")
    import coremltools as ct

    from mvdeploy.backends.coreml import _to_image

    model = ct.models.MLModel(spec["artifact"],
                              compute_units=getattr(ct.ComputeUnit, spec["accelerator"]))
    description = model.get_spec().description
    image = description.input[0].type.WhichOneof("Type") == "imageType"
    name = description.input[0].name
    prep = json.loads(dict(description.metadata.userDefined).get("mvdeploy", "{}")).get(
        "preprocessing")

    def prepare(x: np.ndarray) -> dict:
        return {name: _to_image(x[0], prep) if image else x}

    return model.predict, prepare


LOADERS = {"onnxruntime": _onnxruntime, "litert": _litert, "torch": _torch,
           "torch-compile": _torch, "coreml": _coreml}


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
    start = time.perf_counter()
    infer, prepare = LOADERS[spec["runtime"]](spec)
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
            "peak_rss_mb": _peak_rss_mb(), "cpus": cpus}


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = measure(spec)
    except Unavailable as exc:
        result = {"status": "unavailable", "error": str(exc)}
    except Exception as exc:  # reported per configuration; the run goes on
        first = str(exc).strip().splitlines()
        result = {"status": "failed",
                  "error": f"{type(exc).__name__}: {first[0][:300] if first else ''}",
                  "traceback": traceback.format_exc()[-4000:]}
    tmp = Path(spec["result"] + ".partial")
    tmp.write_text(json.dumps(result))
    os.replace(tmp, spec["result"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

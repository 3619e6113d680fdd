"""Can a configuration run here? A reason when it cannot, so it is reported, never a crash."""

from __future__ import annotations

import functools
import importlib.util
import platform
import shutil

from mvdeploy.bench.android import AndroidOptions, unavailable_reason
from mvdeploy.bench.matrix import BenchConfig

_MODULES = {"onnxruntime": ("onnxruntime", "pip install -e '.[onnx]'"),
            "litert": ("ai_edge_litert", "pip install -e '.[tflite]'"),
            "coreml": ("coremltools", "pip install -e '.[coreml]'")}


@functools.cache
def _cuda_reason() -> str | None:
    import torch

    if not torch.cuda.is_available():
        build = torch.__version__
        return (f"no CUDA device: torch.cuda.is_available() is False (torch {build}"
                + (", a CPU-only build" if "+cpu" in build else "") + ")")
    return None


@functools.cache
def _ort_providers() -> tuple[str, ...]:
    import onnxruntime as ort

    return tuple(ort.get_available_providers())


def unavailable(cfg: BenchConfig, android: AndroidOptions | None = None) -> str | None:
    """Why `cfg` cannot run on this machine (None: it can)."""
    if cfg.runtime in _MODULES:
        module, fix = _MODULES[cfg.runtime]
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: {fix}"
    if cfg.impl == "transformers" and importlib.util.find_spec("transformers") is None:
        return "the peer baseline needs transformers: pip install -e '.[dev]'"
    if cfg.runtime == "torch-compile" and cfg.target == "cpu" and not (
            shutil.which("c++") or shutil.which("g++")):
        return "torch.compile on CPU needs a C++ compiler (c++ / g++ on PATH)"
    if cfg.target == "cuda":
        if cfg.runtime == "onnxruntime":
            wanted = {"cuda": "CUDAExecutionProvider",
                      "tensorrt": "TensorrtExecutionProvider"}[cfg.accelerator]
            if wanted not in _ort_providers():
                return (f"onnxruntime here has no {wanted} (it has {', '.join(_ort_providers())}"
                        "): install onnxruntime-gpu on a CUDA machine")
        return _cuda_reason()
    if cfg.target == "apple" and platform.system() != "Darwin":
        return f"Core ML predictions need macOS (this is {platform.system()})"
    if cfg.target == "android":
        return unavailable_reason(android or AndroidOptions())
    return None

"""Can a configuration run here? A reason when it cannot, so it is reported, never a crash."""

from __future__ import annotations

import functools
import importlib.util
import platform
import shutil

from mvdeploy.backends import spec
from mvdeploy.bench.android import AndroidOptions, unavailable_reason
from mvdeploy.bench.matrix import BenchConfig


@functools.cache
def _cuda_reason() -> str | None:
    import torch

    if not torch.cuda.is_available():
        build = torch.__version__
        return (f"no CUDA device: torch.cuda.is_available() is False (torch {build}"
                + (", a CPU-only build" if "+cpu" in build else "") + ")")
    return None


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent is missing
        return False


def _format_reason(cfg: BenchConfig) -> str | None:
    """The format's runtime: installed, able to run on this OS, with this accelerator."""
    fmt = spec(cfg.format)
    if not any(_installed(p.module) for p in fmt.run_needs):
        return (f"{fmt.run_needs[0].distribution} is not installed: "
                f"pip install -e '.[{fmt.extra}]'")
    runtime = next((r for r in fmt.runtimes if r.name == cfg.runtime), None)
    if runtime is not None and runtime.needs and not _installed(runtime.needs[0].module):
        package, extra = runtime.needs
        return f"{package.distribution} is not installed: pip install -e '.[{extra}]'"
    if cfg.target in ("cpu", "cuda"):
        return fmt.accelerator_unavailable(cfg.accelerator)
    if cfg.target == "apple":
        return fmt.cannot_run_here()
    return None


def unavailable(cfg: BenchConfig, android: AndroidOptions | None = None) -> str | None:
    """Why `cfg` cannot run on this machine (None: it can)."""
    if cfg.format is not None:
        reason = _format_reason(cfg)
        if reason:
            return reason
    if cfg.impl == "transformers" and importlib.util.find_spec("transformers") is None:
        return "the peer baseline needs transformers: pip install -e '.[dev]'"
    if cfg.runtime == "torch-compile" and cfg.target == "cpu" and not (
            shutil.which("c++") or shutil.which("g++")):
        return "torch.compile on CPU needs a C++ compiler (c++ / g++ on PATH)"
    if cfg.target == "cuda":
        return _cuda_reason()
    if cfg.target == "apple" and platform.system() != "Darwin":
        return f"predictions on the apple target need macOS (this is {platform.system()})"
    if cfg.target == "android":
        return unavailable_reason(android or AndroidOptions())
    return None

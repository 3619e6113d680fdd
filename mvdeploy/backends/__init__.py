"""Backend registry: name -> module, imported on first use so `import mvdeploy` stays light.

Every backend module offers the same small interface:

    SUFFIX: str                              artifact file name suffix
    check_installed() -> None                raise MissingDependencyError naming the extra
    export(captured, cfg, path, *, calibration=None) -> dict
                                             write the artifact; return facts for the manifest
    load(path, *, threads=None) -> Runner    a callable: NCHW float32 batch -> logits
    describe(path) -> dict                   inputs, outputs, op histogram, max rank

A new format is one module here plus one line in BACKENDS.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import numpy as np

from mvdeploy.errors import ConfigError, MissingDependencyError, MvdeployError

BACKENDS: dict[str, str] = {
    "torch": "mvdeploy.backends.torch",
    "onnx": "mvdeploy.backends.onnx",
    "tflite": "mvdeploy.backends.tflite",
    "coreml": "mvdeploy.backends.coreml",
}

Runner = Callable[[np.ndarray], np.ndarray]


class BackendUnavailable(MvdeployError):
    """The backend cannot run here (e.g. Core ML predictions off macOS)."""


def list_backends() -> list[str]:
    return list(BACKENDS)


def get_backend(name: str) -> ModuleType:
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return importlib.import_module(BACKENDS[name])


def require(module: str, package: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(package, extra, purpose) from None


def decode_record(metadata: dict) -> dict:
    """Formats that store metadata as strings hold mvdeploy's record as JSON: decode it, so
    every backend's describe() returns it as a dict under "mvdeploy"."""
    import json

    if isinstance(metadata.get("mvdeploy"), str):
        metadata = {**metadata, "mvdeploy": json.loads(metadata["mvdeploy"])}
    return metadata


def tensor_info(name: str, shape, dtype: str) -> dict:
    return {"name": name, "shape": [int(d) if d is not None else None for d in shape],
            "dtype": dtype}

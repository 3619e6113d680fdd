"""manifest.json beside each artifact: what it is, how to feed it, and how it was checked."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from mvdeploy import __version__

SCHEMA_VERSION = 1
LIBRARIES = ("torch", "numpy", "onnx", "onnxscript", "onnxruntime", "litert-torch",
             "ai-edge-litert", "coremltools")


def digest(path: Path) -> tuple[int, str]:
    """Size in bytes and SHA-256 of a file, or of a directory's files (sorted relative paths)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    sha = hashlib.sha256()
    size = 0
    for file in files:
        if path.is_dir():
            sha.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                sha.update(chunk)
        size += file.stat().st_size
    return size, sha.hexdigest()


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def build_manifest(*, fmt: str, artifact: Path, model_info: dict, config: dict,
                   preprocessing: dict, labels: list[str] | None, export_info: dict,
                   validation: dict, precision: str) -> dict[str, Any]:
    size, sha = digest(artifact)
    structure = validation.get("structure", {})
    return {
        "mvdeploy_manifest": SCHEMA_VERSION,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "format": fmt,
        "artifact": {"file": artifact.name, "size_bytes": size, "sha256": sha,
                     "precision": precision,
                     # against float32 weights: 4 bytes per parameter
                     "size_ratio_to_fp32": round(size / (4 * model_info["params"]), 3),
                     "inputs": structure.get("inputs", []),
                     "outputs": structure.get("outputs", []), **export_info},
        "model": model_info,
        "preprocessing": preprocessing,
        "labels": labels,
        "validated": validation["status"] == "passed",
        # the reference gave (nearly) one output for all inputs: the metrics prove little
        "degenerate": bool(validation.get("degenerate")),
        "validation": validation,
        "tool": {"mvdeploy": __version__, "python": platform.python_version(),
                 "platform": platform.platform(), "libraries": library_versions()},
        "config": config,
    }


def manifest_beside(artifact: Path) -> dict | None:
    """The manifest.json next to `artifact` when it describes that very file, else None."""
    try:
        manifest = json.loads((artifact.parent / "manifest.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("artifact", {}).get("file") != artifact.name:
        return None
    return manifest


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader never sees half a manifest."""
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)

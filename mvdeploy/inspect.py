"""What an artifact is: inputs, outputs, precision, size, ops, embedded metadata, manifest.

Reads any .onnx, .tflite, .mlpackage or .pt2 through its backend's `describe`, so the answer
comes from the file itself; the manifest beside it (if any) is shown as extra context.
"""

from __future__ import annotations

from pathlib import Path

from mvdeploy.backends import get_backend
from mvdeploy.errors import ArtifactError, MvdeployError
from mvdeploy.manifest import digest, manifest_beside
from mvdeploy.native_output import redirect_native_output

FORMATS = {".onnx": "onnx", ".tflite": "tflite", ".mlpackage": "coreml", ".pt2": "torch"}


def _precision(fmt: str, desc: dict, manifest: dict | None) -> str:
    if manifest:
        return manifest["artifact"]["precision"]
    types, ops = desc.get("tensor_types", {}), desc.get("ops", {})
    if ops.get("QuantizeLinear") or ops.get("quantize") or any(
            i.get("dtype") == "int8" for i in desc.get("inputs", [])):
        return "int8 (static)"
    if types.get("int8") or types.get("uint8") or ops.get("constexpr_affine_dequantize"):
        return "int8 weights"
    if ops.get("constexpr_lut_to_dense"):
        return "palettized"
    if types.get("float16") or ops.get("cast"):
        return "fp16"
    return "fp32"


def inspect_artifact(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ArtifactError(f"{path} is not a model artifact: expected .onnx, .tflite, "
                            ".mlpackage or .pt2")
    try:
        with redirect_native_output():
            desc = get_backend(fmt).describe(path)
    except MvdeployError:
        raise
    except Exception as exc:  # corrupt or foreign file: whatever the parser raised
        first = str(exc).strip().splitlines()
        raise ArtifactError(f"cannot read {path} as {fmt}: "
                            f"{(first[0] if first else type(exc).__name__)[:160]}") from None
    manifest = manifest_beside(path)
    size, sha = digest(path)
    return {"format": fmt, "file": str(path), "size_bytes": size, "sha256": sha,
            "precision": _precision(fmt, desc, manifest), **desc, "manifest": manifest}

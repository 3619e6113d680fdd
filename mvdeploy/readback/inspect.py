"""What an artifact is: inputs, outputs, precision, size, ops, embedded metadata, manifest.

Reads any artifact through its format's `describe` (the format comes from the file suffix), so
the answer comes from the file itself; the manifest beside it (if any) is extra context.
"""

from __future__ import annotations

from pathlib import Path

from mvdeploy.backends import format_for_suffix, get_backend, spec, specs
from mvdeploy.errors import ArtifactError, MvdeployError
from mvdeploy.native_output import redirect_native_output
from mvdeploy.pipeline.manifest import Manifest, digest, trusted_manifest


def _precision(fmt: str, desc: dict, manifest: Manifest | None) -> str:
    if manifest:
        return manifest.precision
    return spec(fmt).guess_precision(desc)


def inspect_artifact(path: str | Path) -> dict:
    path = Path(path).expanduser()
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    fmt = format_for_suffix(path.suffix)
    if fmt is None:
        suffixes = [s.suffix for s in specs()]
        raise ArtifactError(f"{path} is not a model artifact: expected "
                            f"{', '.join(suffixes[:-1])} or {suffixes[-1]}")
    try:
        with redirect_native_output():
            desc = get_backend(fmt).describe(path)
    except MvdeployError:
        raise
    except Exception as exc:  # corrupt or foreign file: whatever the parser raised
        first = str(exc).strip().splitlines()
        raise ArtifactError(f"cannot read {path} as {fmt}: "
                            f"{(first[0] if first else type(exc).__name__)[:160]}") from None
    if not desc.get("inputs"):
        raise ArtifactError(f"{path} has no inputs: it is empty or truncated, or not a model")
    size, sha = digest(path)
    manifest, note = trusted_manifest(path, sha)
    return {"format": fmt, "file": str(path), "size_bytes": size, "sha256": sha,
            "precision": _precision(fmt, desc, manifest), **desc,
            "manifest": manifest.to_dict() if manifest else None, "manifest_note": note}

"""manifest.json beside each artifact: what it is, how to feed it, and how it was checked."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import platform
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from mvdeploy.errors import ArtifactError
from mvdeploy.files import write_atomic
from mvdeploy.version import __version__

SCHEMA_VERSION = 1
CORE_LIBRARIES = ("torch", "numpy")


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
    from mvdeploy.backends import packages

    versions: dict[str, str | None] = {}
    for name in dict.fromkeys([*CORE_LIBRARIES, *(p.distribution for p, _ in packages())]):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclass(frozen=True)
class Manifest:
    """manifest.json as mvdeploy writes it. Read only through read_manifest / manifest_beside,
    which check it; `artifact` holds file, size_bytes, sha256, precision, inputs, outputs and
    what the format's converter reported."""

    mvdeploy_manifest: int
    created: str
    format: str
    artifact: dict[str, Any]
    model: dict[str, Any]
    preprocessing: dict[str, Any]
    labels: list[str] | None
    validated: bool
    degenerate: bool  # the reference gave (nearly) one output for all inputs
    validation: dict[str, Any]
    tool: dict[str, Any]
    config: dict[str, Any]

    @property
    def file(self) -> str:
        return self.artifact["file"]

    @property
    def precision(self) -> str:
        return self.artifact["precision"]

    @property
    def size_bytes(self) -> int:
        return self.artifact["size_bytes"]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: str = "manifest") -> Manifest:
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict):
            raise ArtifactError(f"{source} is not an mvdeploy manifest (not a JSON object)")
        missing = [n for n in names if n not in data]
        if missing or not isinstance(data["artifact"], dict) or "file" not in data["artifact"]:
            raise ArtifactError(f"{source} is not an mvdeploy manifest: it lacks "
                                f"{', '.join(missing) or 'artifact.file'}")
        return cls(**{n: data[n] for n in names})


def read_manifest(path: Path) -> Manifest:
    """The one reader of manifest.json files; a bad one is one line (ArtifactError)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read {path}: {exc}") from None
    return Manifest.from_dict(data, str(path))


def build_manifest(*, fmt: str, artifact: Path, model_info: dict, config: dict,
                   preprocessing: dict, labels: list[str] | None, export_info: dict,
                   validation: dict, precision: str) -> Manifest:
    size, sha = digest(artifact)
    structure = validation.get("structure", {})
    return Manifest(
        mvdeploy_manifest=SCHEMA_VERSION,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        format=fmt,
        artifact={"file": artifact.name, "size_bytes": size, "sha256": sha,
                     "precision": precision,
                     # against float32 weights: 4 bytes per parameter
                     "size_ratio_to_fp32": round(size / (4 * model_info["params"]), 3),
                     "inputs": structure.get("inputs", []),
                     "outputs": structure.get("outputs", []), **export_info},
        model=model_info,
        preprocessing=preprocessing,
        labels=labels,
        validated=validation["status"] == "passed",
        degenerate=bool(validation.get("degenerate")),
        validation=validation,
        tool={"mvdeploy": __version__, "python": platform.python_version(),
              "platform": platform.platform(), "libraries": library_versions()},
        config=config,
    )


def manifest_beside(artifact: Path) -> Manifest | None:
    """The manifest.json next to `artifact` when it describes that very file, else None."""
    return trusted_manifest(artifact)[0]


def trusted_manifest(artifact: Path, sha256: str | None = None
                     ) -> tuple[Manifest | None, str | None]:
    """(the manifest.json next to `artifact` if it describes that very file, its name and its
    SHA-256, else None; one line when one names the file but does not match its bytes). An
    edited or stale manifest would give wrong preprocessing, labels or precision with exit 0,
    so it is not trusted. `sha256`: the artifact's, when the caller has it already."""
    manifest = _named_in_manifest(artifact)
    if manifest is None or not artifact.exists():
        return None, None
    if manifest.artifact.get("sha256") == (sha256 or digest(artifact)[1]):
        return manifest, None
    return None, (f"{artifact.parent / 'manifest.json'} names {artifact.name} but its SHA-256 "
                  "differs (the file changed, or the manifest was edited or left from another "
                  "export): ignored; re-export to get a matching one")


def _named_in_manifest(artifact: Path) -> Manifest | None:
    try:
        manifest = read_manifest(artifact.parent / "manifest.json")
    except ArtifactError:
        return None
    return manifest if manifest.file == artifact.name else None


def write_json(path: Path, data: Any) -> None:
    """Write atomically: a reader never sees half a manifest."""
    write_atomic(path, json.dumps(data, indent=2, default=str) + "\n")

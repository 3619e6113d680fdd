"""App code for an exported artifact, written by the artifact's format (`snippet` in its
backend module, in the language its SPEC names).

Generated from the artifact's manifest (file name, tensor names, shapes, preprocessing), so
the names in the code are the names in the file; the tests compile nothing but check exactly
that against an exported artifact. The snippets in docs/apps.md come from here too.
"""

from __future__ import annotations

from pathlib import Path

from mvdeploy.backends import get_backend, specs
from mvdeploy.errors import ArtifactError
from mvdeploy.pipeline.manifest import Manifest, trusted_manifest


def load_manifest(artifact: str | Path) -> Manifest:
    path = Path(artifact).expanduser()
    manifest, mismatch = trusted_manifest(path)
    if mismatch:
        raise ArtifactError(f"{mismatch}: snippets are generated from it")
    if manifest is None:
        raise ArtifactError(f"no readable manifest.json for {path.name} beside it (missing, "
                            "unreadable, or describing another file): snippets are generated "
                            "from the manifest mvdeploy export writes")
    return manifest


def snippet(manifest: Manifest, client: str | None = None) -> tuple[str, str]:
    """(language, code) for the manifest's artifact; `client`: one of its snippet_clients.
    Each format writes its task's code (classify, or segment for segmentation)."""
    fmt = manifest.format
    batch = (manifest.artifact.get("inputs") or [{}])[0].get("shape", [1])[0]
    if isinstance(batch, int) and batch != 1:  # the snippets feed one photo
        raise ArtifactError(f"{manifest.artifact['file']} takes a batch of {batch}, and the "
                            "snippets feed one photo at a time: export with --batch 1")
    offered = [s for s in specs() if s.snippet_language]
    spec = next((s for s in offered if s.name == fmt), None)
    if spec is None:
        raise ArtifactError(
            "snippets exist for " + ", ".join(f"{s.title} ({s.snippet_language})" for s in offered)
            + f", not {fmt}; docs/export.md shows how to run it from Python")
    if client is None:
        return spec.snippet_language, get_backend(fmt).snippet(manifest.to_dict())
    if client not in spec.snippet_clients:
        raise ArtifactError(f"--client {client} is not offered for {spec.title}: choose from "
                            f"{', '.join(spec.snippet_clients) or '(none; leave --client out)'}")
    return spec.snippet_clients[client], get_backend(fmt).snippet(manifest.to_dict(), client)

"""Checkpoints by Hugging Face Hub id: `org/name` or `org/name@revision`.

Files come through huggingface_hub's standard cache (HF_HUB_CACHE / HF_HOME), so a model that
`transformers` or `hf download` fetched before is reused, and HF_HUB_OFFLINE=1 works from that
cache. Only the files a MobileViT checkpoint needs are fetched: config.json,
preprocessor_config.json and the weights (model.safetensors, else pytorch_model.bin).
"""

from __future__ import annotations

import re
from pathlib import Path

from mvdeploy.errors import CheckpointError, MissingDependencyError

# org/name[@revision]; a revision may be a branch, tag or commit hash (branches may hold "/")
_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<rev>[\w./-]+))?$")
_CONFIGS = ["config.json", "preprocessor_config.json"]
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def parse_hub_id(spec: str) -> tuple[str, str | None] | None:
    """('org/name', revision or None) when `spec` reads as a hub id, else None."""
    match = _HUB_ID.match(spec.strip())
    if not match or spec.endswith((".pt", ".pth", ".bin", ".safetensors")):
        return None
    return match["repo"], match["rev"]


def looks_like_hub_id(spec: str | Path) -> bool:
    """A hub id that is not also a local path (a local file or folder always wins)."""
    return isinstance(spec, str) and parse_hub_id(spec) is not None and not Path(spec).exists()


def download(spec: str) -> Path:
    """The local snapshot folder of hub id `spec`, downloading what is missing."""
    parsed = parse_hub_id(spec)
    if parsed is None:
        raise CheckpointError(f"{spec!r} is not a Hugging Face Hub id (org/name or org/name@rev)")
    repo, revision = parsed
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError:
        raise MissingDependencyError("huggingface_hub", "hub",
                                     f"loading {spec} from the Hugging Face Hub") from None
    try:
        folder = Path(huggingface_hub.snapshot_download(
            repo, revision=revision, allow_patterns=[*_CONFIGS, WEIGHT_FILES[0]]))
        if not any((folder / name).is_file() for name in WEIGHT_FILES):
            # older repos have only pytorch_model.bin; ask for it only then (not both)
            folder = Path(huggingface_hub.snapshot_download(
                repo, revision=revision, allow_patterns=[*_CONFIGS, WEIGHT_FILES[1]]))
    except errors.GatedRepoError:
        raise CheckpointError(f"{repo} is gated: accept its terms on huggingface.co and log in "
                              "with `hf auth login`") from None
    except errors.RepositoryNotFoundError:
        raise CheckpointError(f"no Hugging Face Hub repository {repo} (or it is private: log in "
                              "with `hf auth login`); MobileViT checkpoints are e.g. "
                              "apple/mobilevit-xx-small, timm/mobilevit_xxs.cvnets_in1k") from None
    except errors.RevisionNotFoundError:
        raise CheckpointError(f"{repo} has no revision {revision!r}: use a branch, tag or "
                              "commit of that repository") from None
    except errors.LocalEntryNotFoundError:
        rev = f"@{revision}" if revision else ""
        if huggingface_hub.constants.HF_HUB_OFFLINE:
            raise CheckpointError(
                f"{repo}{rev} is not in the Hugging Face cache "
                f"({huggingface_hub.constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE is set: run "
                f"`hf download {repo}` where the Hub is reachable, or unset HF_HUB_OFFLINE"
            ) from None
        raise CheckpointError(
            f"cannot reach the Hugging Face Hub and {repo}{rev} is not in the cache "
            f"({huggingface_hub.constants.HF_HUB_CACHE}): check the network, or run "
            f"`hf download {repo}` on a machine that has one and copy the cache"
        ) from None
    except errors.HfHubHTTPError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"the Hugging Face Hub refused {spec}: "
                              f"{first[0][:160] if first else type(exc).__name__}") from None
    except (errors.HFValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{spec}: {first[0][:160] if first else 'not a valid hub id'}"
                              ) from None
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointError(f"{spec}: the cached snapshot {folder} has no model.safetensors or "
                              f"pytorch_model.bin: run `hf download {repo}` to complete it")
    return folder

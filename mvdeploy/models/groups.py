"""Layer groups: the parts of a MobileViT that int8 can be switched off for, named from the
module paths torch.export and the ONNX exporter record for every op (mvdeploy's own module
names: stages, InvertedResidual, MobileViTBlock / MobileViTV2Block, TransformerLayer /
LinearTransformerLayer; v1 and v2 share the child names local_conv, to_tokens, norm1, attn)."""

from __future__ import annotations

import re
from collections.abc import Iterable


def _relative(path: str) -> str:
    """A module path below the MobileViT itself ("model.stages.2.1" -> "stages.2.1")."""
    match = re.search(r"(?:^|\.)model\.(.*)$", path)
    return match.group(1) if match else ""


def layer_group(stack: Iterable[tuple[str, str]]) -> str | None:
    """The layer group an op belongs to, from its module stack [(path, class name)], outermost
    first, as torch.export's nn_module_stack and the ONNX exporter's node metadata give it.

    Groups are what int8 can be switched off for: the stem, each MobileNetV2 block, a MobileViT
    block's local convs (`.local`), each transformer layer's attention (`.attn`, with its
    LayerNorm) and MLP (`.mlp`), a MobileViT block's fold and fusion (`.fusion`; in v2 the
    final norm, fold and 1x1 projection), `head_conv` (v1) and `classifier`; DeepLabV3 adds
    each ASPP branch (`aspp.convs.N`) and its projection (`aspp.fuse`).
    None: an op outside every group (the global pooling)."""
    entries = [(_relative(path), kind.rsplit(".", 1)[-1]) for path, kind in stack]
    entries = [(path, kind) for path, kind in entries if path]
    innermost = {kind: path for path, kind in entries}

    def child_of(parent: str) -> str:
        below = [p for p, _ in entries if p.startswith(parent + ".")]
        return below[0][len(parent) + 1:].split(".")[0] if below else ""

    layer = innermost.get("TransformerLayer") or innermost.get("LinearTransformerLayer")
    if layer:
        return f"{layer}.attn" if child_of(layer) in ("norm1", "attn") else f"{layer}.mlp"
    block = innermost.get("MobileViTBlock") or innermost.get("MobileViTV2Block")
    if block:
        return f"{block}.local" if child_of(block) in ("local_conv", "to_tokens") else (
            f"{block}.fusion")
    if "InvertedResidual" in innermost:
        return innermost["InvertedResidual"]
    top = entries[0][0].split(".")[0] if entries else ""
    if top == "aspp":  # DeepLabV3: each ASPP branch, and the projection that fuses them
        parts = entries[-1][0].split(".")
        return ".".join(parts[:3]) if len(parts) > 2 and parts[1] == "convs" else "aspp.fuse"
    return top if top in ("stem", "head_conv", "classifier") else None


def node_group(node) -> str | None:
    """layer_group of a torch.fx node (from its nn_module_stack)."""
    stack = node.meta.get("nn_module_stack") or {}
    return layer_group((path, kind if isinstance(kind, str) else kind.__qualname__)
                       for path, kind in stack.values())

"""Rewrite exported attention into onnxruntime's `com.microsoft.MultiHeadAttention`.

torch.onnx writes each attention as Reshape/Transpose of Q, K and V, MatMul, Div, Softmax,
MatMul, Transpose, Reshape. ORT fuses none of it on CPU (its transformers optimizer, with
model_type=vit, finds no attention here and makes the model slower), while its contrib
MultiHeadAttention takes Q, K and V as [B, N, d] straight from the qkv split and runs a
flash-attention CPU kernel: 36 of 48 transposes go, and XXS patch A is 5-8 % faster
(benchmarks/results/graph_forms.md). The op exists only in onnxruntime, so this is the form for
ORT CPU; `onnx.attention = "standard"` keeps plain ONNX for other runtimes.

Written by hand because no library does this rewrite for this graph; the pattern is matched
strictly (every intermediate used once, the expected permutations) and anything else is left
as it is.
"""

from __future__ import annotations

import numpy as np

MS_DOMAIN = "com.microsoft"


def _constant(graph, name: str) -> np.ndarray | None:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    return None


def _perm(node) -> list[int] | None:
    for attr in node.attribute:
        if attr.name == "perm":
            return list(attr.ints)
    return None


def fuse_attention(model, heads: int) -> int:
    """Replace every matched attention in `model` (an onnx ModelProto) in place; returns how
    many were replaced. Q·Kᵀ / sqrt(d_head), softmax over keys, times V, heads merged.
    `heads` comes from the model config: with a dynamic batch the reshapes' shapes are
    computed, not constants."""
    from onnx import helper, numpy_helper

    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    recorded = {  # shapes the exporter recorded; -1 where a dimension is symbolic
        v.name: [d.dim_value if d.HasField("dim_value") else -1
                 for d in v.type.tensor_type.shape.dim] for v in graph.value_info}

    def only_user(name: str, op: str):
        found = users.get(name, [])
        if len(found) != 1 or found[0].op_type != op or name in graph_outputs:
            return None
        return found[0]

    def made_by(name: str, op: str):
        node = producer.get(name)
        return node if node is not None and node.op_type == op else None

    def heads_input(transpose, perm: list[int]):
        """Transpose(perm) of Reshape([B, N, heads, dh]) of a [B, N, d] tensor."""
        if transpose is None or _perm(transpose) != perm:
            return None
        reshape = made_by(transpose.input[0], "Reshape")
        if reshape is None or only_user(reshape.output[0], "Transpose") is not transpose:
            return None
        shape = _constant(graph, reshape.input[1])
        if shape is None:  # a dynamic batch: the shape is computed; the recorded one says N
            shape = recorded.get(reshape.output[0])
        if shape is None or len(shape) != 4 or shape[2] != heads or shape[1] <= 0:
            return None
        # MultiHeadAttention wants [B, N, d]; tokens kept 2-D ([B*N, d]) are reshaped to it
        return reshape.input[0], [reshape, transpose], [-1, int(shape[1]), heads * int(shape[3])]

    removed: set[int] = set()
    fused = []
    extra_init: list = []
    gone: set[str] = set()  # outputs of removed nodes: their recorded shapes go too
    for softmax in [n for n in graph.node if n.op_type == "Softmax"]:
        scaled = made_by(softmax.input[0], "Div")
        scores = made_by(scaled.input[0], "MatMul") if scaled is not None else None
        mix = only_user(softmax.output[0], "MatMul")
        if scores is None or mix is None or mix.input[0] != softmax.output[0]:
            continue
        divisor = _constant(graph, scaled.input[1])
        if divisor is None or divisor.size != 1:
            continue
        q = heads_input(made_by(scores.input[0], "Transpose"), [0, 2, 1, 3])
        k = heads_input(made_by(scores.input[1], "Transpose"), [0, 2, 3, 1])
        v = heads_input(made_by(mix.input[1], "Transpose"), [0, 2, 1, 3])
        merge = only_user(mix.output[0], "Transpose")
        flat = only_user(merge.output[0], "Reshape") if merge is not None else None
        if None in (q, k, v, flat) or _perm(merge) != [0, 2, 1, 3]:
            continue
        if only_user(scores.output[0], "Div") is not scaled \
                or only_user(scaled.output[0], "Softmax") is not softmax:
            continue
        inputs, to_bnd = [], []
        for name, _, shape3 in (q, k, v):
            shape_name = f"{name}_as_bnd"
            extra_init.append(numpy_helper.from_array(np.array(shape3, np.int64), shape_name))
            to_bnd.append(helper.make_node("Reshape", [name, shape_name], [f"{name}_bnd"]))
            inputs.append(f"{name}_bnd")
        merged = f"{flat.output[0]}_mha"
        node = helper.make_node(
            "MultiHeadAttention", inputs, [merged],
            name=f"{softmax.name or 'attention'}_mha", domain=MS_DOMAIN,
            num_heads=heads, scale=float(1.0 / divisor.reshape(-1)[0]))
        # the merge reshape stays, fed by MultiHeadAttention's [B, N, d]: it gives the rank the
        # rest of the graph expects (3-D, or 2-D where tokens are kept flat)
        reshape_out = helper.make_node("Reshape", [merged, flat.input[1]], [flat.output[0]],
                                       name=flat.name)
        group = [*q[1], *k[1], *v[1], scores, scaled, softmax, mix, merge, flat]
        removed.update(id(n) for n in group)
        gone.update(o for n in group[:-1] for o in n.output)
        fused.append((flat, [*to_bnd, node, reshape_out]))
    if not fused:
        return 0
    replacement = {id(flat): new for flat, new in fused}
    nodes = [new for n in graph.node if id(n) not in removed or id(n) in replacement
             for new in replacement.get(id(n), [n])]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(extra_init)
    shapes = [v for v in graph.value_info if v.name not in gone]
    del graph.value_info[:]
    graph.value_info.extend(shapes)
    used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used]  # the dropped reshape shapes, scale
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return len(fused)

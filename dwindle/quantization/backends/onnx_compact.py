"""Shrink an ONNX file to what onnxruntime reads: no docs or metadata, short names, no
all-zero bias zero points. Bytes on disk are what quantization is judged by, and on a small
model the exporter's bookkeeping outweighs a layer's weights."""

from __future__ import annotations

from collections import Counter
from itertools import count
from typing import Any

__all__ = ["compact_onnx"]


def compact_onnx(proto: Any) -> Any:
    """Drop what the runtime never reads (docs, metadata, value_info, long names), in place.

    The exporter stores stack traces and module paths per node; on a small model they cost
    more bytes than a layer's weights, and bytes on disk are what this technique is about.
    """
    graph = proto.graph
    if any(a.g.node or a.graphs for n in graph.node for a in n.attribute):
        return proto  # subgraphs (If/Loop) keep their names: renaming them is not worth it
    proto.ClearField("doc_string")
    del proto.metadata_props[:]
    graph.ClearField("doc_string")
    del graph.metadata_props[:]  # the exporter's graph signature: 25 KB on a ResNet-56
    del graph.value_info[:]
    for value in [*graph.input, *graph.output]:
        del value.metadata_props[:]
        value.ClearField("doc_string")
    keep = {v.name for v in graph.input} | {v.name for v in graph.output} | {""}
    uses = Counter(
        name
        for name in [
            *(i.name for i in graph.initializer),
            *(x for node in graph.node for x in [*node.input, *node.output]),
        ]
        if name not in keep
    )
    # The most referenced names get the shortest base-62 names (empty string means "absent").
    free = (s for s in map(_base62, count()) if s not in keep)
    names = {name: next(free) for name, _ in uses.most_common()}

    def short(name: str) -> str:
        return names.get(name, name)

    for init in graph.initializer:
        init.name = short(init.name)
        init.ClearField("doc_string")
    for node in graph.node:
        node.ClearField("name")  # proto2: an empty string set still costs two bytes
        node.ClearField("doc_string")
        del node.metadata_props[:]
        node.input[:] = [short(i) for i in node.input]
        node.output[:] = [short(o) for o in node.output]
    _drop_zero_points(graph)
    used = {n.domain for n in graph.node} | {""}
    kept = [op for op in proto.opset_import if op.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return proto


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _base62(k: int) -> str:
    out = _DIGITS[k % 62]
    while k >= 62:
        k //= 62
        out = _DIGITS[k % 62] + out
    return out


def _drop_zero_points(graph: Any) -> None:
    """Remove the all-zero int32 zero points of quantized biases.

    The zero point is optional and defaults to 0; int32 biases store one per output channel
    for nothing (2 KB of a 440 KB LeNet-5). Weight zero points stay: onnxruntime's QDQ→QGemm
    fusion requires them.
    """
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        data, zp = inits.get(node.input[0]), inits.get(node.input[2])
        if data is None or zp is None or data.data_type != onnx.TensorProto.INT32:
            continue
        if not numpy_helper.to_array(zp).any():
            del node.input[2]
    referenced = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in referenced]
    del graph.initializer[:]
    graph.initializer.extend(kept)

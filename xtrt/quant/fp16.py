"""Strongly-typed FP16 export: everything outside the Q/DQ pairs in FP16, in the ONNX itself.

TensorRT 11 and TensorRT-RTX build every network strongly typed: a layer runs in the type its ONNX
tensors have, so whatever a Q/DQ model leaves in float32 (decode tail, Concat/Resize outside the
pairs, layers the fallback keeps float) runs in FP32.  :func:`convert_fp16` rewrites the float32
tensors of a Q/DQ model to float16, then (:func:`fold_qdq_casts`) writes the Q/DQ at opset 19 with
float16 scales: QuantizeLinear takes the float16 tensor and DequantizeLinear outputs float16, with
no Cast around them (what ModelOpt writes for ``--high_precision_dtype fp16``).  Below opset 19
QuantizeLinear takes only float32 and DequantizeLinear outputs the scale's float32, so the export
needs a ``Cast`` to float32 before each QuantizeLinear and a ``Cast`` to float16 after each
DequantizeLinear; TensorRT-RTX 1.7 then fuses the last INT8 GEMM's epilogue with the float32
graph-output tail, and a HardSwish + pooling block with its Q/DQ, into kernels running Float in and
out (measured on the corpus: benchmarks/corpus.md).  ``qdq_opset=13`` keeps that older form (for
builders whose parser stops before opset 19).  A scale FP16 cannot hold (outside its normal range
[2^-14, 65504]) keeps float32 and its Casts, as does any scale shared with a Q/DQ that cannot fold.
ONNX Runtime runs both forms on CPU; graph inputs and outputs keep their float32 type.

Nodes stay float32 when :func:`fp32_reasons` finds a reason on calibration data: an activation
whose magnitude exceeds :data:`FP16_SAFE` (FP16's largest value is 65504; the margin leaves room
for held-out data and for sums inside a layer), plugin nodes, and what the caller lists.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from xtrt.model.graph import producer_through_casts, toposort
from xtrt.quant.fp16_qdq import QDQ_FP16_OPSET, fold_casts

__all__ = ["FP16_SAFE", "QDQ_FP16_OPSET", "convert_fp16", "fold_qdq_casts", "fp32_reasons",
           "float_regions", "output_writers"]

FP16_SAFE = 8192.0
_FLOAT, _HALF = 1, 10          # onnx.TensorProto.FLOAT / FLOAT16
# inputs that must stay float32 whatever the node's precision (ONNX schemas)
_FP32_INPUTS = {("Resize", 2), ("Resize", 1), ("Upsample", 1)}
_ANY_TYPE_OPS = {"Shape", "Size", "QuantizeLinear", "DequantizeLinear"}


def _elem_types(model) -> dict[str, int]:
    import onnx

    try:
        inf = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inf = model
    out = {}
    for vi in list(inf.graph.input) + list(inf.graph.value_info) + list(inf.graph.output):
        if vi.type.HasField("tensor_type"):
            out[vi.name] = vi.type.tensor_type.elem_type
    for t in model.graph.initializer:
        out[t.name] = t.data_type
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    out[n.output[0]] = a.t.data_type
    return out


def fp32_reasons(model, amax: Mapping[str, float], *, plugin_nodes: Iterable[str] = (),
                 extra: Mapping[str, str] | None = None, safe: float = FP16_SAFE) -> dict[str, str]:
    """Node -> why it stays float32: its float output's largest |value| on calibration data
    (``amax``: tensor -> max |x|) exceeds ``safe``; plugin nodes; ``extra``."""
    out: dict[str, str] = {}
    for n in model.graph.node:
        big = [(o, amax[o]) for o in n.output if o in amax and amax[o] > safe]
        if big:
            o, v = max(big, key=lambda kv: kv[1])
            out[n.name] = (f"|{o}| reaches {v:.4g} on calibration data, beyond the FP16 safe "
                           f"range ({safe:g}; FP16 max 65504)")
    for name in plugin_nodes:
        out.setdefault(name, "plugin node (its kernels take float32)")
    for name, why in (extra or {}).items():
        out.setdefault(name, why)
    return out


def _node_precision(node, types, keep32: set[str]) -> int | None:
    """float16 / float32 for a node computing float outputs; None for others."""
    if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
        return None
    if not any(types.get(o) in (_FLOAT, _HALF) for o in node.output if o):
        return None
    return _FLOAT if node.name in keep32 or node.domain not in ("", "ai.onnx") else _HALF


def convert_fp16(model, keep_fp32: Mapping[str, str] | Sequence[str] = (), *,
                 qdq_opset: int = QDQ_FP16_OPSET):
    """A copy of the Q/DQ ``model`` with every float32 tensor outside Q/DQ in float16, except the
    outputs of the ``keep_fp32`` nodes; graph inputs/outputs keep their types.  ``qdq_opset`` 19:
    Q/DQ with float16 scales and no Casts around them (:func:`fold_qdq_casts`); 13: the model's
    opset, float32 scales, a Cast on each side."""
    import onnx
    from onnx import helper, numpy_helper

    keep32 = set(keep_fp32)
    types = _elem_types(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    # the dtype each float tensor has after conversion
    have: dict[str, int] = {}
    for vi in g.input:
        if types.get(vi.name) == _FLOAT:
            have[vi.name] = _FLOAT
    prec = {n.name: _node_precision(n, types, keep32) for n in g.node}
    for n in g.node:
        for o in n.output:
            if types.get(o) == _FLOAT:
                have[o] = prec[n.name] or _FLOAT     # DequantizeLinear outputs stay float32
    inits = {t.name: t for t in g.initializer}
    new_inits, casts = [], {}
    nodes = []

    def as_type(t: str, want: int) -> str:
        if t in inits and inits[t].data_type == _FLOAT:
            if want == _FLOAT:
                return t
            name = f"{t}_fp16"
            if name not in casts:
                arr = numpy_helper.to_array(inits[t]).astype(np.float16)
                new_inits.append(numpy_helper.from_array(arr, name))
                casts[name] = name
            return name
        if have.get(t, want) == want:
            return t
        name = f"{t}_{'fp16' if want == _HALF else 'fp32'}"
        if name not in casts:
            nodes.append(helper.make_node("Cast", [t], [name], name=f"{name}_Cast", to=want))
            casts[name] = name
        return name

    for n in list(g.node):
        p = prec[n.name]
        if n.op_type == "QuantizeLinear":
            n.input[0] = as_type(n.input[0], _FLOAT)
        elif p is not None:
            for i, t in enumerate(n.input):
                if not t or types.get(t) != _FLOAT:
                    continue
                n.input[i] = as_type(t, _FLOAT if (n.op_type, i) in _FP32_INPUTS else p)
            if p == _HALF:
                _retype_attrs(n)
        elif n.op_type not in _ANY_TYPE_OPS:          # float in, non-float out (NMS, ArgMax ...)
            for i, t in enumerate(n.input):
                if t and types.get(t) == _FLOAT:
                    n.input[i] = as_type(t, _FLOAT)
        nodes.append(n)
    _keep_output_types(g, nodes, types, have)
    del g.node[:]
    g.node.extend(toposort(nodes, {i.name for i in g.input} | set(inits) |
                           {t.name for t in new_inits}, what="the FP16 model"))
    used = {t for n in g.node for t in n.input}
    kept = [t for t in g.initializer if t.name in used] + new_inits
    del g.initializer[:]
    g.initializer.extend(kept)
    del g.value_info[:]
    if qdq_opset >= QDQ_FP16_OPSET:
        out, _ = fold_qdq_casts(out, qdq_opset)
    return out


def _keep_output_types(g, nodes: list, types: dict, have: dict) -> None:
    """Graph outputs keep float32: the producer writes ``<name>_fp16``, a Cast restores the name."""
    from onnx import helper

    for o in g.output:
        if types.get(o.name) != _FLOAT or have.get(o.name) != _HALF:
            continue
        inner = f"{o.name}_fp16"
        for n in nodes:
            for i, t in enumerate(n.input):
                if t == o.name:
                    n.input[i] = inner
            for i, t in enumerate(n.output):
                if t == o.name:
                    n.output[i] = inner
        nodes.append(helper.make_node("Cast", [inner], [o.name], name=f"{o.name}_Cast", to=_FLOAT))


def _retype_attrs(node) -> None:
    """Float32 literals that set a node's output type become float16 (Constant, Cast to float,
    ConstantOfShape)."""
    from onnx import numpy_helper

    for a in node.attribute:
        if node.op_type in ("Constant", "ConstantOfShape") and a.name == "value" \
                and a.t.data_type == _FLOAT:
            a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float16),
                                                 a.t.name))
        if node.op_type == "Cast" and a.name == "to" and a.i == _FLOAT:
            a.i = _HALF


def float_regions(model) -> dict[str, int]:
    """Counts of float32 / float16 compute nodes outside Q/DQ (what a strongly-typed build runs
    in FP32 / FP16)."""
    types = _elem_types(model)
    counts = {"fp32": 0, "fp16": 0}
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Cast", "Constant"):
            continue
        ts = {types.get(o) for o in n.output if o}
        if _FLOAT in ts:
            counts["fp32"] += 1
        elif _HALF in ts:
            counts["fp16"] += 1
    return counts


def output_writers(model) -> dict[str, str]:
    """Node -> reason for the float tail that writes a float32 graph output: the nodes every
    path from which leads to graph outputs without passing a Q/DQ pair or an INT8 layer (e.g. a
    classifier's bias Add and Softmax, the output Cast).  Graph outputs keep their types in the
    FP16 export, so a builder may fuse that tail into one float32 kernel."""
    from collections import defaultdict

    g = model.graph
    outs = {o.name for o in g.output if o.type.tensor_type.elem_type == _FLOAT}
    consumers = defaultdict(list)
    for n in g.node:
        for t in n.input:
            if t:
                consumers[t].append(n)
    producer = {o: n for n in g.node for o in n.output if o}
    tail: dict[str, str] = {}        # node -> the graph output it writes

    def from_dq(t: str) -> bool:          # through the FP16 export's Casts
        p = producer_through_casts(producer, t)
        return p is not None and p.op_type == "DequantizeLinear"

    def int8_layer(n) -> bool:             # Q/DQ, or a layer (or Cast) reading a DequantizeLinear
        return n.op_type in ("QuantizeLinear", "DequantizeLinear") or \
            bool(n.input) and from_dq(n.input[0])
    for n in reversed(list(toposort(list(g.node), {i.name for i in g.input} |
                                    {t.name for t in g.initializer}, what="the model"))):
        if int8_layer(n) or not any(o for o in n.output):
            continue
        reach = []
        for o in n.output:
            if not o:
                continue
            if o in outs:
                reach.append(o)
            users = consumers.get(o, [])
            if any(u.name not in tail for u in users) or not (users or o in outs):
                break
            reach += [tail[u.name] for u in users]
        else:
            if reach:
                tail[n.name] = reach[0]
    return {n: f"writes graph output {o} after the last INT8 layer; graph outputs keep their "
               "float32 type (graph inputs and outputs keep their types)"
            for n, o in tail.items()}


def fold_qdq_casts(model, opset: int = QDQ_FP16_OPSET) -> tuple[object, dict]:
    """``(model, info)``: the FP16 export ``model`` (a Cast on each side of its Q/DQ) at ``opset``
    (>= 19) with Q/DQ scales in float16 and those Casts gone where ONNX Runtime and TensorRT-RTX
    take it (:func:`xtrt.quant.fp16_qdq.fold_casts`; ``info["fp32_scales"]``: why -> scales)."""
    return fold_casts(model, _elem_types(model), opset)

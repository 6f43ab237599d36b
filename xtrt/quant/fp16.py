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

__all__ = ["FP16_SAFE", "QDQ_FP16_OPSET", "convert_fp16", "fold_qdq_casts", "fp32_reasons",
           "float_regions", "output_writers"]

FP16_SAFE = 8192.0
QDQ_FP16_OPSET = 19            # first opset with float16 QuantizeLinear input / DequantizeLinear scale
_FP16_NORMAL = (2.0 ** -14, 65504.0)
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


def _cast_to(node) -> int | None:
    return next((a.i for a in node.attribute if a.name == "to"), None)


# Q/DQ that keep a float32 scale and their Casts at opset 19, because ONNX Runtime's CPU graph
# optimizations mishandle float16 scales there (measured with onnxruntime 1.23 on the corpus).
# Its WeightBiasQuantization (basic level) rewrites the float bias of a Conv/ConvTranspose/Gemm
# reading two DequantizeLinears as round(bias / (x_scale * w_scale)) in the bias's type: in
# float16 that overflows (EfficientNet-Lite0: 13.3 dB -> -9.1 dB on one image).
_ORT_WEIGHT = ("weight DequantizeLinear of a Conv: ONNX Runtime's WeightBiasQuantization would "
               "quantize its bias in float16 from float16 scales, which overflows on real convs")
_ORT_BIAS = ("weight DequantizeLinear of a Gemm whose bias / (x_scale * w_scale) exceeds "
             "float16's 65504: ONNX Runtime's WeightBiasQuantization would overflow")
_ORT_CONCAT = ("Q/DQ of a Concat: ONNX Runtime's QLinearConcat fusion (extended level) takes "
               "float32 scales only and rejects the model")
_SHARED = "shares its type with a Q/DQ that reads or writes float32 (a graph input or FP32 node)"


def _gemm_bias_ok(gemm, a_scale, w_scale, inits) -> bool:
    """ONNX Runtime's bias quantization of ``gemm`` stays finite with float16 scales."""
    from onnx import numpy_helper

    if len(gemm.input) < 3 or gemm.input[2] not in inits:
        return True
    f16 = [numpy_helper.to_array(inits[t]).astype(np.float16).astype(np.float32)
           for t in (a_scale, w_scale, gemm.input[2])]
    bs = (f16[0] * f16[1]).astype(np.float16).astype(np.float32)
    return bool(np.all(bs > 0) and np.all(np.abs(f16[2]) / bs < 65504.0))


def _fold_plan(node, g: dict) -> tuple[list | str | None, str]:
    """How a Q/DQ of the FP16 export folds its Cast, and why not when it cannot (``""``: it
    reads or writes float32 by design).  A Q reads the float16 tensor its Cast(float16->float32)
    converts (returned: that tensor's name); a DQ drops the Casts to float16 that are its only
    readers (returned: those Casts)."""
    producer, consumers, types = g["producer"], g["consumers"], g["types"]
    if node.op_type == "QuantizeLinear":
        p = producer.get(node.input[0])
        if p is None or p.op_type != "Cast" or _cast_to(p) != _FLOAT \
                or types.get(p.input[0]) != _HALF:
            return None, ""
        src = producer_through_casts(producer, node.input[0])
        return (None, _ORT_CONCAT) if src is not None and src.op_type == "Concat" \
            else (p.input[0], "")
    users = consumers.get(node.output[0], [])
    if node.output[0] in g["outs"] or not users or any(
            u.op_type != "Cast" or _cast_to(u) != _HALF or u.output[0] in g["outs"]
            for u in users):
        return None, ""
    readers = [r for u in users for r in consumers.get(u.output[0], [])]
    if node.input[0] in g["inits"]:
        if any(r.op_type in ("Conv", "ConvTranspose") for r in readers):
            return None, _ORT_WEIGHT
        if any(r.name in g["bad_bias"] for r in readers):
            return None, _ORT_BIAS
    if any(r.op_type == "Concat" for r in readers):
        return None, _ORT_CONCAT
    return list(users), ""


def _scale_groups(g: dict, uses: dict) -> dict[str, str]:
    """Scale -> its group's root: the two operand scales of a Gemm/MatMul share their type
    (TensorRT-RTX's Myelin rejects an FP16-scaled activation times an FP32-scaled weight)."""
    root = {s: s for s in uses}

    def find(s):
        while root[s] != s:
            s = root[s]
        return s
    g["bad_bias"] = set()
    for n in g["nodes"]:
        if n.op_type not in ("Gemm", "MatMul") or len(n.input) < 2:
            continue
        a, w = (producer_through_casts(g["producer"], t) for t in n.input[:2])
        if a is None or w is None or a.op_type != "DequantizeLinear" \
                or w.op_type != "DequantizeLinear" or a.input[1] not in root \
                or w.input[1] not in root:
            continue
        root[find(w.input[1])] = find(a.input[1])
        if n.op_type == "Gemm" and not _gemm_bias_ok(n, a.input[1], w.input[1], g["inits"]):
            g["bad_bias"].add(n.name)
    return {s: find(s) for s in root}


def _split_gemm_dqs(graph) -> dict[str, str]:
    """Give each Gemm/MatMul after the first that reads one activation Q/DQ pair (through the
    DequantizeLinear's float16 Cast) its own QuantizeLinear, DequantizeLinear, Cast and scale
    copy, so each GEMM's operand scales can take their type apart (MTCNN ONet: three head Gemms
    read one PRelu, and one's bias keeps its scales float32; TensorRT-RTX wants one scale type
    per Q/DQ pair and per GEMM).  Returns clone scale -> original scale."""
    from collections import defaultdict

    from onnx import helper

    inits = {t.name: t for t in graph.initializer}
    consumers = defaultdict(list)
    for n in graph.node:
        for t in n.input:
            consumers[t].append(n)
    producer = {o: n for n in graph.node for o in n.output}
    clones, after = {}, defaultdict(list)
    for dq in graph.node:
        q = producer.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" \
                or dq.input[1] not in inits or len(consumers.get(q.output[0], [])) != 1:
            continue
        users = consumers.get(dq.output[0], [])
        if len(users) != 1 or users[0].op_type != "Cast" or _cast_to(users[0]) != _HALF:
            continue
        cast = users[0]
        for r in [r for r in consumers.get(cast.output[0], [])
                  if r.op_type in ("Gemm", "MatMul")][1:]:
            scale, out = f"{dq.input[1]}_{r.name}", f"{dq.output[0]}_{r.name}"
            t = inits[dq.input[1]].__class__()
            t.CopyFrom(inits[dq.input[1]])
            t.name = scale
            graph.initializer.append(t)
            pair = [helper.make_node("QuantizeLinear", [q.input[0], scale, *q.input[2:]],
                                     [f"{q.output[0]}_{r.name}"], name=f"{q.name}_{r.name}"),
                    helper.make_node("DequantizeLinear",
                                     [f"{q.output[0]}_{r.name}", scale, *dq.input[2:]],
                                     [out], name=f"{dq.name}_{r.name}")]
            pair[0].attribute.extend(q.attribute)
            pair[1].attribute.extend(dq.attribute)
            after[cast.name] += [*pair, helper.make_node("Cast", [out], [f"{out}_fp16"],
                                                         name=f"{out}_fp16_Cast", to=_HALF)]
            for i, x in enumerate(r.input):
                if x == cast.output[0]:
                    r.input[i] = f"{out}_fp16"
            clones[scale] = dq.input[1]
    if clones:
        nodes = [m for n in graph.node for m in [n, *after.get(n.name, [])]]
        del graph.node[:]
        graph.node.extend(nodes)
    return clones


def fold_qdq_casts(model, opset: int = QDQ_FP16_OPSET) -> tuple[object, dict]:
    """``(model, info)``: the FP16 export ``model`` (a Cast on each side of its Q/DQ) at ``opset``
    (>= 19) with Q/DQ scales in float16 and those Casts gone: QuantizeLinear reads the float16
    tensor, DequantizeLinear writes float16.  Scales fold by group (:func:`_scale_groups`): when
    FP16's normal range holds every value and every Q/DQ using them can fold (:func:`_fold_plan`;
    Conv weights and Concats keep float32 for ONNX Runtime); the others keep float32 and their
    Casts (``info["fp32_scales"]``: why -> scales).  When the opset cannot be upgraded,
    ``model`` comes back unchanged with ``info["why"]``."""
    from collections import defaultdict

    from onnx import numpy_helper

    from xtrt.errors import ModelError
    from xtrt.model.opset import convert_opset, model_opset

    try:
        out = convert_opset(model, max(opset, model_opset(model)))
    except ModelError as exc:
        return model, {"qdq_opset": model_opset(model), "folded_scales": 0, "why": str(exc)}
    clones = _split_gemm_dqs(out.graph)
    g = {"nodes": list(out.graph.node), "types": _elem_types(out),
         "inits": {t.name: t for t in out.graph.initializer},
         "producer": {o: n for n in out.graph.node for o in n.output if o},
         "consumers": defaultdict(list), "outs": {o.name for o in out.graph.output}}
    uses = defaultdict(list)
    for n in g["nodes"]:
        for t in n.input:
            if t:
                g["consumers"][t].append(n)
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1 \
                and n.input[1] in g["inits"] and g["inits"][n.input[1]].data_type == _FLOAT:
            uses[n.input[1]].append(n)
    groups = defaultdict(list)
    for scale, r in _scale_groups(g, uses).items():
        groups[r].append(scale)
    plans = {id(n): _fold_plan(n, g) for ns in uses.values() for n in ns}
    folded, kept, dead = 0, defaultdict(list), set()
    for scales in groups.values():
        got = [plans[id(n)] for s in scales for n in uses[s]]
        if all(p is None and not w for p, w in got):
            continue                                   # float32 by design: nothing to fold
        why = next((w for p, w in got if p is None and w), "")
        arrs = [numpy_helper.to_array(g["inits"][s]) for s in scales]
        if any(p is None for p, _ in got):
            kept[why or _SHARED].extend(scales)
        elif not all(a.size and _FP16_NORMAL[0] <= np.abs(a).min() and
                     np.abs(a).max() <= _FP16_NORMAL[1] for a in arrs):
            kept["values outside FP16's normal range [2^-14, 65504]"].extend(scales)
        else:
            for s, a in zip(scales, arrs):
                g["inits"][s].CopyFrom(numpy_helper.from_array(a.astype(np.float16), s))
                for n in uses[s]:
                    _apply_fold(n, plans[id(n)][0], g["consumers"], dead)
            folded += len(scales)
    _round_activation_scales(g, uses)
    _drop_unused_casts(out.graph, dead)
    return out, {"qdq_opset": model_opset(out), "folded_scales": folded,
                 "fp32_scales": dict(kept)}


def _round_activation_scales(g: dict, uses: dict) -> None:
    """Activation scales left float32 take float16's value (stored float32), so scales shared by
    value across Q/DQ of different types (a Concat's or a commuting op's inputs and output, a
    cloned Q/DQ pair) stay equal: xtrt.lint and TensorRT compare them.  Weight scales keep
    theirs (their int8 values were rounded with it)."""
    from onnx import numpy_helper

    for s, nodes in uses.items():
        t = g["inits"][s]
        if t.data_type != _FLOAT or any(n.input[0] in g["inits"] for n in nodes):
            continue
        a = numpy_helper.to_array(t)
        if a.size and _FP16_NORMAL[0] <= np.abs(a).min() and np.abs(a).max() <= _FP16_NORMAL[1]:
            t.CopyFrom(numpy_helper.from_array(a.astype(np.float16).astype(np.float32), s))


def _apply_fold(node, plan, consumers, dead: set) -> None:
    """Rewire one Q/DQ as :func:`_fold_plan` planned it."""
    if node.op_type == "QuantizeLinear":
        node.input[0] = plan
        return
    for cast in plan:
        for user in consumers.get(cast.output[0], []):
            for i, x in enumerate(user.input):
                if x == cast.output[0]:
                    user.input[i] = node.output[0]
        dead.add(id(cast))


def _drop_unused_casts(g, dead: set) -> None:
    """Remove the folded DequantizeLinear Casts (``dead``: ids) and Casts nobody reads any more
    (the float16->float32 Casts the folded QuantizeLinears read)."""
    keep = [n for n in g.node if id(n) not in dead]
    used = {t for n in keep for t in n.input} | {o.name for o in g.output}
    keep = [n for n in keep if n.op_type != "Cast" or any(o in used for o in n.output)]
    del g.node[:]
    g.node.extend(keep)
    del g.value_info[:]

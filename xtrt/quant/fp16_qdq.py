"""The FP16 export's Q/DQ at opset 19: float16 scales, no Casts around them (see
:mod:`xtrt.quant.fp16`, which calls :func:`fold_casts` through ``fold_qdq_casts``).

What keeps a float32 scale and its Casts, each measured (onnxruntime 1.23 CPU, TensorRT-RTX 1.7
AOT build for SM89, on the corpus and on tests/lint/tiny_models):
* a Q reading, or a DQ writing, float32 by design (a graph input, a node kept FP32), and every
  scale that shares its type with one (a Q/DQ pair, a GEMM's two operands: Myelin rejects a mix);
* Conv/ConvTranspose weights, and a Gemm's when its bias / (x_scale * w_scale) exceeds 65504:
  ONNX Runtime's WeightBiasQuantization (basic level) computes that quotient in the bias's type;
* the Q/DQ of a Concat: ONNX Runtime's QLinearConcat fusion takes float32 scales only;
* values outside FP16's normal range.
"""
from __future__ import annotations

import numpy as np

from xtrt.model.graph import producer_through_casts

__all__ = ["QDQ_FP16_OPSET", "fold_casts", "fp16_valued_scales"]

QDQ_FP16_OPSET = 19            # first opset: float16 QuantizeLinear input, DequantizeLinear scale
_FLOAT, _HALF = 1, 10          # onnx.TensorProto.FLOAT / FLOAT16
_FP16_NORMAL = (2.0 ** -14, 65504.0)


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


def fold_casts(model, types: dict, opset: int = QDQ_FP16_OPSET) -> tuple[object, dict]:
    """``(model, info)``: the FP16 export ``model`` (a Cast on each side of its Q/DQ; ``types``:
    tensor -> ONNX element type) at ``opset`` (>= 19) with Q/DQ scales in float16 and those
    Casts gone: QuantizeLinear reads the float16 tensor, DequantizeLinear writes float16.
    Scales fold by group (:func:`_scale_groups`): when FP16's normal range holds every value
    and every Q/DQ using them can fold (:func:`_fold_plan`); the others keep float32 and their
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
    g = {"nodes": list(out.graph.node), "types": types,
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


def fp16_valued_scales(model):
    """A copy of the Q/DQ ``model`` whose activation scales (float32, within FP16's normal
    range) take their float16 value: the scales the opset-19 FP16 export stores, so an FP32
    export compared with it differs by FP16 arithmetic alone (rounding a scale by up to 2^-12
    moves INT8 roundings; measured on PP-OCR cls, 256 images: -0.76 dB [-1.76, +0.21] with no
    FP16 arithmetic at all, benchmarks/fp16_drift.py)."""
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    uses: dict[str, list] = {}
    for n in out.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1 \
                and n.input[1] in inits and inits[n.input[1]].data_type == _FLOAT:
            uses.setdefault(n.input[1], []).append(n)
    _round_activation_scales({"inits": inits}, uses)
    return out

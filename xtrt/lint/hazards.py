"""TensorRT Q/DQ hazards beyond per-node structure: each check names the rule it breaks and the fix.

Checks (the ``check`` name of each :class:`~xtrt.lint.qdq.Finding`):

* ``scale_mismatch``: a Concat, or an op that commutes with Q/DQ (MaxPool, Resize nearest, ...),
  whose quantized inputs/outputs carry different scales (each mismatch is a requantize/reformat
  kernel), or a Concat mixing quantized and float inputs;
* ``quantized_output``: a graph output produced by QuantizeLinear/DequantizeLinear;
* ``q_without_dq``: a QuantizeLinear not read (only) by DequantizeLinear of the same scale;
* ``dq_into_float``: a DequantizeLinear feeding an op TensorRT runs in float (a standalone
  Int8->Float kernel instead of a fused INT8 layer);
* ``per_tensor_weight``: a weight quantized with one scale for many output channels;
* ``fp32_region``: float32 compute nodes outside Q/DQ in a graph meant for a strongly-typed build
  (one finding per connected region);
* ``small_channels``: an INT8 convolution with fewer than 8 input/output channels that are not a
  multiple of 4 (TensorRT pads them); info for the stem convolution reading the image.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from xtrt.model.graph import producer_through_casts
from xtrt.trt.rules import (COMMUTING_OP_TYPES, INT8_OP_TYPES, WEIGHTED_OP_TYPES, commutes,
                            padded_channels, weight_axis)

__all__ = ["RULES", "check_hazards"]

# check -> (the rule broken, the fix)
RULES = {
    "unquantized": ("TensorRT runs a Conv/Gemm/MatMul in INT8 only when its activation and weight "
                    "come through DequantizeLinear", "quantize both inputs, or declare the node "
                                                     "float (quant_cfg.json float_ops)"),
    "partial": ("an INT8 layer needs every input quantized", "add the missing Q/DQ"),
    "axis": ("per-channel weight scales run along the output-channel axis",
             "quantize the weight along its output channels (xtrt.trt.rules.weight_axis)"),
    "int32": ("TensorRT's ONNX parser takes only 8-bit (and FP8/FP4/INT4) DequantizeLinear inputs",
              "keep the bias float (ORT: QuantizeBias=False)"),
    "zero_point": ("TensorRT takes symmetric int8 Q/DQ only (zero point 0, int8)",
                   "use symmetric int8 quantization"),
    "scale": ("scales must be positive, finite constants", "recalibrate that tensor"),
    "no_qdq": ("an explicitly quantized model has Q/DQ nodes", "quantize the model (xtrt.quant)"),
    "scale_mismatch": ("TensorRT runs a Concat, or an op that commutes with Q/DQ, in INT8 only when "
                       "its inputs and outputs share one scale; each mismatch is a reformat",
                       "give the inputs and the output one scale (the largest amax of the group)"),
    "quantized_output": ("no Q/DQ on graph outputs (the consumer of an output is the application, "
                         "which reads float)", "remove the Q/DQ pair in front of the output"),
    "q_without_dq": ("every QuantizeLinear is read by a DequantizeLinear of the same scale and "
                     "zero point", "pair the QuantizeLinear with a matching DequantizeLinear"),
    "dq_into_float": ("a DequantizeLinear should feed an op TensorRT runs in INT8 (weighted layers, "
                      "pools, Concat, commuting ops, residual Add)",
                      "remove that Q/DQ pair, or quantize the op's consumer instead"),
    "per_tensor_weight": ("TensorRT quantizes weights per output channel (per-tensor weight scales "
                          "lose the small channels)", "quantize the weight per output channel"),
    "fp32_region": ("a strongly-typed build (TensorRT 11, TensorRT-RTX) runs float32 tensors in "
                    "FP32", "export the float part in FP16 (export.float_precision: fp16) or "
                            "declare why it stays FP32"),
    "small_channels": ("TensorRT's INT8 kernels pad channels to a multiple of 4 (or more)",
                       "expected for an image input; elsewhere widen the layer or keep it float"),
}


def _scalar(g, name: str):
    v = g.consts.get(name)
    if v is None or v.size != 1:
        return None
    return float(np.asarray(v).reshape(-1)[0])


def _same(a: float, b: float) -> bool:
    if not (np.isfinite(a) and np.isfinite(b)):
        return True            # the scale check reports non-finite scales
    return abs(a - b) <= 1e-6 * max(abs(a), abs(b))


def _consumers(g) -> dict:
    """tensor -> [(node, input index)], looking through Cast nodes (the FP16 export's
    DQ -> Cast -> layer and Cast -> Q, which TensorRT fuses)."""
    direct = defaultdict(list)
    for n in g.nodes:
        for i, t in enumerate(n.input):
            if t:
                direct[t].append((n, i))
    out = defaultdict(list)
    for t in list(direct):
        stack = list(direct[t])
        while stack:
            n, i = stack.pop(0)
            if n.op_type == "Cast":
                stack.extend(direct.get(n.output[0], []))
            else:
                out[t].append((n, i))
    return out


def _producer(g, t: str):
    """The producer of ``t``, looking through Cast nodes."""
    return producer_through_casts(g.producer, t)


def _scale_mismatch(g, cons, F) -> list:
    found = []
    for node in g.nodes:
        is_cat = node.op_type == "Concat"
        if not (is_cat or commutes(node, g.consts.get)):
            continue
        data = [t for t in node.input if t and not g.is_constant(t)]
        data = data if is_cat else data[:1]
        ins = []
        for t in data:
            p = _producer(g, t)
            ins.append(_scalar(g, p.input[1]) if p is not None and p.op_type == "DequantizeLinear"
                       and len(p.input) > 1 else None)
        outs = [_scalar(g, c.input[1]) for o in node.output for c, i in cons.get(o, [])
                if c.op_type == "QuantizeLinear" and i == 0 and len(c.input) > 1]
        known = [s for s in ins + outs if s is not None]
        if not known:
            continue
        distinct: list[float] = []
        for s in known:
            if not any(_same(s, d) for d in distinct):
                distinct.append(s)
        floats = sum(1 for s in ins if s is None) if is_cat and any(s is not None for s in ins) else 0
        if len(distinct) > 1 or floats:
            what = f"{len(distinct)} different scales ({', '.join(f'{s:.4g}' for s in distinct)})" \
                if len(distinct) > 1 else ""
            if floats:
                what += ("; " if what else "") + f"{floats} of {len(ins)} inputs not quantized"
            found.append(F("error", g.label(node), f"{node.op_type} {g.label(node)}: {what} "
                           "across its inputs and output", "scale_mismatch"))
    return found


def _outputs_and_pairs(g, cons, outputs, F) -> list:
    found = []
    for o in outputs:
        p = _producer(g, o)
        if p is not None and p.op_type in ("QuantizeLinear", "DequantizeLinear"):
            found.append(F("error", g.label(p), f"graph output {o} is produced by {p.op_type} "
                           f"{g.label(p)}", "quantized_output"))
    for node in g.nodes:
        if node.op_type != "QuantizeLinear":
            continue
        readers = cons.get(node.output[0], [])
        s = _scalar(g, node.input[1]) if len(node.input) > 1 else None
        bad = [c for c, _ in readers if c.op_type != "DequantizeLinear" or (
            s is not None and len(c.input) > 1 and _scalar(g, c.input[1]) is not None
            and not _same(s, _scalar(g, c.input[1])))]
        if not readers or bad:
            why = "nothing reads it" if not readers else \
                f"read by {', '.join(g.label(c) for c in bad)} (not a DequantizeLinear of its scale)"
            found.append(F("error", g.label(node), f"QuantizeLinear {g.label(node)} has no "
                           f"matching DequantizeLinear: {why}", "q_without_dq"))
    return found


_ACT_OK = set(INT8_OP_TYPES) | set(COMMUTING_OP_TYPES) | {"Concat", "Add", "QuantizeLinear"}
_WEIGHT_OK = set(WEIGHTED_OP_TYPES) | {"Identity", "Reshape", "Transpose", "Flatten", "Squeeze",
                                       "Unsqueeze"}


def _dq_consumers(g, cons, F) -> list:
    found = []
    for node in g.nodes:
        if node.op_type != "DequantizeLinear":
            continue
        weight = node.input[0] in g.consts
        ok = _WEIGHT_OK if weight else _ACT_OK
        for c, i in cons.get(node.output[0], []):
            if c.domain not in ("", "ai.onnx"):
                continue
            if c.op_type not in ok or (c.op_type in COMMUTING_OP_TYPES and not weight
                                       and not commutes(c, g.consts.get)):
                found.append(F("warning", g.label(node), f"DequantizeLinear {g.label(node)} feeds "
                               f"{c.op_type} {g.label(c)}, which TensorRT runs in float",
                               "dq_into_float"))
        if weight:
            s = g.consts.get(node.input[1]) if len(node.input) > 1 else None
            w = g.consts[node.input[0]]
            users = [c for c, _ in cons.get(node.output[0], []) if c.op_type in WEIGHTED_OP_TYPES]
            axes = [weight_axis(c, w.ndim, 1) for c in users]
            many = any(a is None or w.shape[a] > 1 for a in axes)   # one output channel: fine
            if s is not None and s.size == 1 and w.ndim >= 2 and users and many:
                found.append(F("warning", g.label(node), f"weight {node.input[0]} "
                               f"{list(w.shape)} has one scale for all output channels",
                               "per_tensor_weight"))
    return found


def _small_channels(g, inputs, F) -> list:
    found = []
    for node in g.nodes:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 2:
            continue
        dq_x, dq_w = g.dq_through(node.input[0], False), g.dq_through(node.input[1], True)
        if dq_x is None or dq_w is None or dq_w.input[0] not in g.consts:
            continue
        small = padded_channels(node, g.consts[dq_w.input[0]].shape)
        if not small:
            continue
        q = g.producer.get(dq_x.input[0])
        stem = q is not None and q.op_type == "QuantizeLinear" and q.input[0] in inputs
        found.append(F("info" if stem else "warning", g.label(node),
                       f"INT8 {node.op_type} {g.label(node)} has {' and '.join(small)}: "
                       f"TensorRT pads them to a multiple of 4"
                       + (" (the image input: expected)" if stem else ""), "small_channels"))
    return found


def _fp32_regions(g, cons, declared: set, F) -> list:
    from onnx import TensorProto

    skip = {"QuantizeLinear", "DequantizeLinear", "Cast", "Constant", "Shape", "Size"}
    fp32 = []
    for node in g.nodes:
        if node.op_type in skip or node.domain not in ("", "ai.onnx"):
            continue
        if not any(g.elem_type.get(o) == TensorProto.FLOAT for o in node.output if o):
            continue
        if node.op_type in INT8_OP_TYPES and g.dq_through(node.input[0], False) is not None:
            continue                      # an INT8 layer: its output type is the epilogue's
        fp32.append(node)
    names = {n.name for n in fp32}
    parent = {n.name: n.name for n in fp32}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a
    for n in fp32:
        for o in n.output:
            for c, _ in cons.get(o, []):
                if c.name in names:
                    parent[find(c.name)] = find(n.name)
    regions = defaultdict(list)
    for n in fp32:
        regions[find(n.name)].append(g.label(n))
    found = []
    for members in regions.values():
        sev = "info" if all(m in declared for m in members) else "warning"
        shown = ", ".join(members[:4]) + (f", ... ({len(members)} nodes)" if len(members) > 4 else "")
        found.append(F(sev, members[0], f"FP32 region of {len(members)} node(s) outside Q/DQ: "
                       f"{shown}" + (" (declared FP32)" if sev == "info" else ""), "fp32_region"))
    return found


def check_hazards(g, model, finding_cls, *, strongly_typed: bool | None = None,
                  declared_fp32=()) -> list:
    """The hazard findings for the :class:`xtrt.lint.qdq._Graph` ``g`` of ``model``.

    ``strongly_typed``: check for FP32 regions (None: when the model has any float16 tensor)."""
    from onnx import TensorProto

    cons = _consumers(g)
    outputs = [o.name for o in model.graph.output]
    inputs = {i.name for i in model.graph.input}
    found = _scale_mismatch(g, cons, finding_cls)
    found += _outputs_and_pairs(g, cons, outputs, finding_cls)
    found += _dq_consumers(g, cons, finding_cls)
    found += _small_channels(g, inputs, finding_cls)
    if strongly_typed is None:
        strongly_typed = any(t == TensorProto.FLOAT16 for t in g.elem_type.values())
    if strongly_typed:
        found += _fp32_regions(g, cons, set(declared_fp32), finding_cls)
    return found

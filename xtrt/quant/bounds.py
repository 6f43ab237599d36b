"""Sound upper bounds on |x| for the float tensors of a Q/DQ model, from its graph alone.

The FP16 export keeps a node in FP32 when its output reaches beyond :data:`xtrt.quant.fp16.FP16_SAFE`
on calibration data.  Measuring that means running the model with every float tensor as an
output (on CUDA: copying every activation to the host), once per fallback trial.  Most tensors
need no measurement: an activation behind a Q/DQ pair is at most ``128 x scale``, a convolution
of it at most ``sum |w| x that + |b|`` per output channel, a Sigmoid at most 1.  This module
propagates such bounds through the graph (interval arithmetic on magnitudes, in float64);
a tensor whose bound stays below the safe range cannot be kept FP32 by that rule, so it need
not be measured, and the measured keep-list is the same.  Unknown ops give no bound (inf).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

__all__ = ["MARGIN", "magnitude_bounds", "provably_below"]

MARGIN = 1.01        # float32 rounding of sums of a few thousand terms is far below 1 %
_INF = math.inf
_SAME = {"Relu", "Identity", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Split",
         "Slice", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean",
         "ReduceMax", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Abs", "Neg", "Dropout",
         "HardSwish", "Gather", "Cast"}
_UNIT = {"Sigmoid", "Tanh", "Softmax", "HardSigmoid", "Softsign"}


def _const_values(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    vals = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    vals[n.output[0]] = numpy_helper.to_array(a.t)
    return vals


def _amax(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    return float(np.max(np.abs(v))) if v.size else 0.0


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _dequantized(node, vals) -> np.ndarray | None:
    """A DequantizeLinear's output when its inputs are constants (the weights), in float64."""
    if not all(i in vals for i in node.input if i):
        return None
    x = vals[node.input[0]].astype(np.float64)
    s = vals[node.input[1]].astype(np.float64)
    zp = vals[node.input[2]].astype(np.float64) if len(node.input) > 2 and node.input[2] else 0.0
    if s.ndim == 1 and x.ndim > 1:
        shape = [1] * x.ndim
        shape[int(_attr(node, "axis", 1))] = -1
        s = s.reshape(shape)
        zp = zp.reshape(shape) if np.ndim(zp) == 1 else zp
    return (x - zp) * s


def _dq_bound(node, vals) -> float:
    """|DequantizeLinear| from the integer range of its input and its scale / zero point."""
    s = vals.get(node.input[1])
    if s is None:
        return _INF
    zp = vals.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    dt = zp.dtype if zp is not None else np.dtype(np.uint8)   # ONNX: no zero point -> uint8
    if not np.issubdtype(dt, np.integer):
        return _INF
    info = np.iinfo(dt)
    z = np.asarray(zp if zp is not None else 0, np.float64)
    reach = np.maximum(np.abs(info.min - z), np.abs(info.max - z))
    return float(np.max(reach * np.abs(np.asarray(s, np.float64))))


def _conv_bound(node, b, arrays) -> float:
    w = arrays(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.ndim < 2:
        return _INF
    per_oc = np.abs(w).reshape(w.shape[0], -1).sum(axis=1) * b(node.input[0])
    if len(node.input) > 2 and node.input[2]:
        bias = arrays(node.input[2])
        if bias is None:
            return _INF
        per_oc = per_oc + np.abs(bias.reshape(-1))
    return float(np.max(per_oc)) if per_oc.size else 0.0


def _simplex_conv_bound(node, arrays) -> float:
    """|Conv| of a probability vector over its input channels (a Softmax over axis 1: p >= 0,
    sum 1 at every position; zero padding only lowers the sums): at each kernel position the
    channel sum is a convex combination, at most max_ic |w| (sum p <= 1 suffices); per output channel
    sum over kernel positions of max_ic |w| + |b|.  YOLOv8's DFL: 15 where sum |w| gives 120."""
    w = arrays(node.input[1]) if len(node.input) > 1 else None
    if w is None or w.ndim < 3:
        return _INF
    per_oc = np.abs(w).max(axis=1).reshape(w.shape[0], -1).sum(axis=1)
    if len(node.input) > 2 and node.input[2]:
        bias = arrays(node.input[2])
        if bias is None:
            return _INF
        per_oc = per_oc + np.abs(bias.reshape(-1))
    return float(np.max(per_oc)) if per_oc.size else 0.0


def _gemm_bound(node, b, arrays) -> float:
    w = arrays(node.input[1])
    if w is None or w.ndim != 2:
        return _INF
    if node.op_type == "Gemm" and _attr(node, "transB", 0):
        w = w.T
    if node.op_type == "Gemm" and _attr(node, "transA", 0):
        return _INF
    alpha = abs(float(_attr(node, "alpha", 1.0))) if node.op_type == "Gemm" else 1.0
    col = np.abs(w).sum(axis=0) * b(node.input[0]) * alpha
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        c = arrays(node.input[2])
        if c is None:
            return _INF
        col = col + abs(float(_attr(node, "beta", 1.0))) * _amax(c)
    return float(np.max(col)) if col.size else 0.0


def _node_bound(node, b: Callable[[str], float], arrays, vals) -> float:
    op, ins = node.op_type, [i for i in node.input if i]
    if op == "DequantizeLinear":
        w = arrays(node.output[0])
        return _amax(w) if w is not None else _dq_bound(node, vals)
    if op in _SAME:
        return b(node.input[0]) if ins else _INF
    if op in _UNIT:
        return 1.0
    if op == "Conv":
        return _conv_bound(node, b, arrays)
    if op in ("Gemm", "MatMul"):
        return _gemm_bound(node, b, arrays)
    if op in ("Concat", "Max", "Min", "Where"):
        return max(b(i) for i in (ins[1:] if op == "Where" else ins))
    if op in ("Add", "Sub", "Sum"):
        return sum(b(i) for i in ins)
    if op == "Mul":
        return math.prod(b(i) for i in ins)
    if op == "LeakyRelu":
        return b(ins[0]) * max(1.0, abs(float(_attr(node, "alpha", 0.01))))
    if op == "Resize" and _attr(node, "mode", b"nearest") in (b"nearest", b"linear", "nearest",
                                                              "linear"):
        return b(ins[0])
    if op == "Clip":      # inside [lo, hi]; a missing limit leaves that side to the input
        given = [i for i in node.input[1:3] if i]
        if not all(i in vals for i in given):
            return _INF
        lim = [_amax(vals[i]) for i in given]
        return max(lim) if len(lim) == 2 else max([b(ins[0]), *lim])
    if op == "Pad":       # constant mode adds its value; edge / reflect repeat the input's
        value = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if value is not None and value not in vals:
            return _INF
        return max(b(ins[0]), _amax(vals[value]) if value is not None else 0.0)
    if op == "Div" and len(ins) == 2 and ins[1] in vals:
        d = np.abs(np.asarray(vals[ins[1]], np.float64))
        return b(ins[0]) / float(d.min()) if d.size and d.min() > 0 else _INF
    return _INF


def magnitude_bounds(model, inputs: dict[str, float] | None = None) -> dict[str, float]:
    """Tensor -> an upper bound on max |x| over any input (inf where none is known); graph inputs
    are unbounded unless ``inputs`` gives their max |x| (the batches a measurement would run),
    constants exact, the rest by :func:`_node_bound` in graph order."""
    vals = _const_values(model)
    bound: dict[str, float] = {k: _amax(v) if np.issubdtype(v.dtype, np.number) else _INF
                               for k, v in vals.items()}
    bound.update({k: float(v) for k, v in (inputs or {}).items() if k not in vals})
    dense: dict[str, np.ndarray | None] = {}

    def arrays(name: str):
        """A weight's float values: a constant, or a DequantizeLinear of constants."""
        if name in vals:
            return np.asarray(vals[name], np.float64)
        return dense.get(name)

    def b(name: str) -> float:
        return bound.get(name, _INF)

    simplex: set[str] = set()       # Softmax over axis 1: a probability vector per position
    for node in model.graph.node:
        if node.op_type == "Constant":
            continue
        if node.op_type == "DequantizeLinear":
            dense[node.output[0]] = _dequantized(node, vals)
        if node.op_type == "Softmax" and _attr(node, "axis", -1) == 1:
            simplex.add(node.output[0])
        v = _node_bound(node, b, arrays, vals)
        if node.op_type == "Conv" and node.input[0] in simplex and int(_attr(node, "group", 1)) == 1:
            v = min(v, _simplex_conv_bound(node, arrays))
        for o in node.output:
            if o:
                bound[o] = v if not math.isnan(v) else _INF
    return bound


def provably_below(model, safe: float, inputs: dict[str, float] | None = None) -> set[str]:
    """Float tensors whose magnitude bound (with :data:`MARGIN`) stays at or below ``safe``
    (``inputs``: see :func:`magnitude_bounds`)."""
    return {k for k, v in magnitude_bounds(model, inputs).items() if v * MARGIN <= safe}

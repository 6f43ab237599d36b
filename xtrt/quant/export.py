"""Write what placement decided: the Q/DQ model and the TensorRT side files.

* ``quantized.onnx``: QuantizeLinear/DequantizeLinear (symmetric INT8, zero point 0) in front of
  each placed activation input; weights stored as INT8 initializers + per-output-channel
  DequantizeLinear; biases left float (TensorRT's parser rejects an int32 bias DequantizeLinear).
  Written into the prepared graph, so graph inputs/outputs keep their names and order, a dynamic
  batch stays dynamic and plugin nodes keep their attributes.
* ``quant_cfg.json``: per-tensor scales, the ops that run in INT8, the resolved config, versions.
* dynamic-range JSON (implicit-quantization users) and a TensorRT calibration cache
  (``TRT-<ver>-EntropyCalibration2`` + ``tensor: <big-endian float32 hex scale>`` per line).
"""
from __future__ import annotations

import logging
import struct
from collections import defaultdict
from typing import Iterable

import numpy as np

from xtrt.errors import QuantizationError
from xtrt.trt.rules import QMAX, weight_axis, weight_scale

__all__ = ["QUANT_CFG_SCHEMA_VERSION", "TRT_CACHE_VERSION", "export_qdq", "tensor_scales", "plan_for",
           "calibration_cache_text", "parse_calibration_cache", "dynamic_ranges", "quant_cfg"]

log = logging.getLogger(__name__)

QUANT_CFG_SCHEMA_VERSION = 1
TRT_CACHE_VERSION = "8601"  # the header number TensorRT 8.6 writes; the line format is unchanged in 10.x
def plan_for(model, placement):
    """The tensor-level plan of ``placement`` on ``model`` (rebuilt: placement lists change after
    calibration and in fallback trials); also stored as ``placement.tensors``."""
    from xtrt.quant.tensor_plan import build_tensor_plan

    plan = build_tensor_plan(model, placement)
    placement.tensors = plan
    return plan


def tensor_scales(model, cal, placement) -> dict[str, float]:
    """Activation tensor -> scale of every tensor the export reads through Q/DQ (the group's
    shared scale; what the side files describe)."""
    from xtrt.quant.tensor_plan import group_scales

    return group_scales(plan_for(model, placement), cal.act_scales)


def _weight_dq(t: str, w: np.ndarray, axis, got, helper, numpy_helper):
    """INT8 initializer, scale, zero point and the DequantizeLinear node of weight ``t``."""
    scale = got[0] if got is not None and axis is not None and got[1] == axis and \
        got[0].size == w.shape[axis] else weight_scale(w, axis)
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    # int8 storage range; max|w|/127 never rounds past 127, AdaRound may round one step down to -128
    q = np.clip(np.rint(w / scale.reshape(shape)), -QMAX - 1, QMAX).astype(np.int8)
    qname, sname, zname = f"{t}_int8", f"{t}_scale", f"{t}_zero_point"
    inits = [numpy_helper.from_array(q, qname),
             numpy_helper.from_array(scale.astype(np.float32), sname),
             numpy_helper.from_array(np.zeros(scale.shape, np.int8), zname)]
    kw = {"axis": axis} if axis is not None else {}
    node = helper.make_node("DequantizeLinear", [qname, sname, zname], [f"{t}_dequantized"],
                            name=f"{t}_DequantizeLinear", **kw)
    return inits, node


def _corrected_biases(g, inits: dict, cal, place: set, numpy_helper) -> list:
    """Biases (input 2 of placed nodes) that a pass (bias correction, LSQ) moved: a new float
    initializer ``<bias>_corrected`` each, the node rewired to it; biases stay float."""
    biases = getattr(cal, "biases", None) or {}
    bias_for: dict[str, str] = {}
    out = []
    for node in g.node:
        if node.name not in place or len(node.input) < 3 or node.input[2] not in inits:
            continue
        t = node.input[2]
        b = biases.get(t)
        if b is not None and t not in bias_for:
            old = numpy_helper.to_array(inits[t])
            bias_for[t] = t
            if old.shape == b.shape and not np.array_equal(old, b):
                bias_for[t] = f"{t}_corrected"
                out.append(numpy_helper.from_array(b.astype(old.dtype), bias_for[t]))
        if t in bias_for:
            node.input[2] = bias_for[t]
    return out


def _missing_scale_error(missing: list[tuple[str, str, str]]) -> QuantizationError:
    """One line for placed inputs without a calibrated scale: names every node (name and op
    type) up to three, why, and the config line that keeps them float."""
    nodes = list(dict.fromkeys((n, op) for n, op, _ in missing))
    name, op, tensor = missing[0]
    shown = ", ".join(f"{n!r} ({o})" for n, o in nodes[:3]) + \
        (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
    return QuantizationError(
        f"cannot quantize node {shown}: calibration gave no scale for {len(missing)} placed "
        f"input(s), e.g. tensor {tensor!r} of node {name!r} ({op})",
        f"keep it float with quantization.exclude_nodes: [{', '.join(n for n, _ in nodes)}] in "
        "the config, and report the model to xtrt")


def export_qdq(model, cal, placement, *, only_placed: bool = False):
    """Return a copy of the prepared ``model`` with Q/DQ written per ``placement``'s tensor plan
    (:mod:`xtrt.quant.tensor_plan`): one Q/DQ pair per site tensor at its group's shared scale,
    INT8 weights with per-output-channel DequantizeLinear, float biases.

    ``only_placed``: rewire only the inputs of ``placement.quantize`` nodes (the layer-wise
    analysis switches exactly those), not the Concat/commuting/residual sites.

    Raises QuantizationError if a placed node has no calibrated scale for its activation input.
    """
    import onnx
    from onnx import helper, numpy_helper

    from xtrt.quant.tensor_plan import group_scales

    plan = plan_for(model, placement)
    scales = group_scales(plan, cal.act_scales)
    place = set(placement.quantize)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    by_name = {n.name: n for n in g.node}
    new_inits: list = []
    pending: dict[str, list] = defaultdict(list)   # consumer node name -> Q/DQ nodes to emit first
    missing = [(n, by_name[n].op_type, t) for t, rs in plan.sites.items() if t not in scales
               for n, i in rs if n in place]
    if missing:
        raise _missing_scale_error(missing)
    for t, spec in plan.weights.items():
        w = cal.weights.get(t)
        if w is None:
            w = numpy_helper.to_array(inits[t]).astype(np.float32)
        w_inits, dq = _weight_dq(t, w, spec.axis, cal.weight_scales.get((spec.node, spec.index)),
                                 helper, numpy_helper)
        new_inits += w_inits
        readers = [(n.name, i) for n in g.node for i, x in enumerate(n.input) if x == t
                   and n.name in place]
        pending[readers[0][0]].append(dq)
        for n, i in readers:
            by_name[n].input[i] = dq.output[0]
    new_inits += _corrected_biases(g, inits, cal, place, numpy_helper)
    for t, readers in plan.sites.items():
        readers = [r for r in readers if r[0] in place] if only_placed else readers
        if not readers or t not in scales:
            continue
        sname, zname = f"{t}_act_scale", f"{t}_act_zero_point"
        new_inits += [numpy_helper.from_array(np.asarray(scales[t], np.float32), sname),
                      numpy_helper.from_array(np.asarray(0, np.int8), zname)]
        qn = helper.make_node("QuantizeLinear", [t, sname, zname], [f"{t}_quantized"],
                              name=f"{t}_QuantizeLinear")
        dqn = helper.make_node("DequantizeLinear", [f"{t}_quantized", sname, zname],
                               [f"{t}_dequantized"], name=f"{t}_DequantizeLinear")
        pending[readers[0][0]].extend([qn, dqn])
        for n, i in readers:
            by_name[n].input[i] = dqn.output[0]
    nodes = []
    for node in g.node:
        nodes.extend(pending.get(node.name, []))
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    still_used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if not (i.name in plan.weights and i.name not in still_used)]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    del g.value_info[:]
    return out


def dynamic_ranges(scales: dict[str, float]) -> dict[str, float]:
    """Tensor -> symmetric dynamic range (amax = scale * 127), as ITensor.set_dynamic_range takes."""
    return {t: float(s) * QMAX for t, s in scales.items()}


def calibration_cache_text(scales: dict[str, float], version: str = TRT_CACHE_VERSION) -> str:
    """TensorRT calibration cache: header, then ``name: <big-endian float32 scale as hex>``."""
    lines = [f"TRT-{version}-EntropyCalibration2"]
    for name, s in scales.items():
        lines.append(f"{name}: {struct.pack('>f', float(s)).hex()}")
    return "\n".join(lines) + "\n"


def parse_calibration_cache(text: str) -> tuple[str, dict[str, float]]:
    """Inverse of :func:`calibration_cache_text` (header, name -> scale)."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise ValueError("not a TensorRT calibration cache (no TRT- header)")
    out = {}
    for ln in lines[1:]:
        name, _, hexval = ln.rpartition(": ")
        out[name] = struct.unpack(">f", bytes.fromhex(hexval.strip()))[0]
    return lines[0], out


def quant_cfg(scales: dict[str, float], placement, cal, *, config: dict, versions: dict,
              input_name: str, input_shape: Iterable[int], dynamic_batch: bool) -> dict:
    """The ``quant_cfg.json`` document."""
    return {
        "schema_version": QUANT_CFG_SCHEMA_VERSION,
        "format": "TensorRT explicit quantization (Q/DQ), symmetric INT8, per-channel weights",
        "versions": versions,
        "input": {"name": input_name, "calibration_shape": list(input_shape),
                  "dynamic_batch": dynamic_batch},
        "int8_ops": list(placement.quantize),
        "float_ops": dict(placement.keep_float),
        "decode_tail": list(placement.decode_tail),
        "activations": {t: {"scale": s, "amax": s * QMAX, "zero_point": 0}
                        for t, s in scales.items()},
        "weights": {f"{node}:{i}": {"channels": int(v[0].size), "axis": int(v[1]),
                                    "scale_min": float(v[0].min()), "scale_max": float(v[0].max())}
                    for (node, i), v in cal.weight_scales.items() if node in set(placement.quantize)},
        # the tensor-level plan: scale groups (shared scale = max of the members' amax), weight
        # axes as exported, precision per node with the reason
        "tensor_plan": placement.tensors.as_dict(scales) if placement.tensors is not None else None,
        "side_files": "dynamic_range.json and calibration.cache serve TensorRT <= 10 (implicit "
                      "quantization); TensorRT 11 and TensorRT-RTX read only quantized.onnx",
        "config": config,
    }

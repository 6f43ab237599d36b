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

__all__ = ["QUANT_CFG_SCHEMA_VERSION", "TRT_CACHE_VERSION", "export_qdq", "tensor_scales",
           "calibration_cache_text", "parse_calibration_cache", "dynamic_ranges", "quant_cfg"]

log = logging.getLogger(__name__)

QUANT_CFG_SCHEMA_VERSION = 1
TRT_CACHE_VERSION = "8601"  # the header number TensorRT 8.6 writes; the line format is unchanged in 10.x
QMAX = 127.0


def _output_channel_axis(node, weight_rank: int) -> int:
    from onnx import helper

    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        trans_b = next((helper.get_attribute_value(a) for a in node.attribute
                        if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "MatMul":
        return weight_rank - 1
    return 0


def _weight_scale(w: np.ndarray, axis: int) -> np.ndarray:
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red) if red else np.abs(w)
    return np.maximum(amax / QMAX, 1e-12).astype(np.float32)


def tensor_scales(model, cal, placement) -> dict[str, float]:
    """Activation tensor name -> scale, for the placed nodes (what the side files describe)."""
    by_name = {n.name: n for n in model.graph.node}
    out: dict[str, float] = {}
    for node_name in placement.quantize:
        node = by_name.get(node_name)
        if node is None:
            continue
        for i, t in enumerate(node.input):
            s = cal.act_scales.get((node_name, i))
            if s is not None and t:
                out.setdefault(t, float(s))
    return out


def _weight_dq(node, i: int, t: str, init, cal, new_inits: list, emit: list) -> str:
    """INT8 weight ``t`` (input ``i`` of ``node``) with a per-output-channel DequantizeLinear
    appended to ``emit``; returns the dequantized tensor's name."""
    from onnx import helper, numpy_helper

    w = cal.weights.get(t)
    if w is None:
        w = numpy_helper.to_array(init).astype(np.float32)
    axis = _output_channel_axis(node, w.ndim)
    got = cal.weight_scales.get((node.name, i))
    scale = got[0] if got is not None and got[1] == axis and \
        got[0].size == w.shape[axis] else _weight_scale(w, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -128, 127).astype(np.int8)
    qname, sname, zname = f"{t}_int8", f"{t}_scale", f"{t}_zero_point"
    new_inits.append(numpy_helper.from_array(q, qname))
    new_inits.append(numpy_helper.from_array(scale.astype(np.float32), sname))
    new_inits.append(numpy_helper.from_array(np.zeros(scale.size, np.int8), zname))
    emit.append(helper.make_node("DequantizeLinear", [qname, sname, zname], [f"{t}_dequantized"],
                                 name=f"{t}_DequantizeLinear", axis=axis))
    return f"{t}_dequantized"


def export_qdq(model, cal, placement):
    """Return a copy of the prepared ``model`` with Q/DQ written per ``placement``.

    Raises QuantizationError if a placed node has no calibrated scale for its activation input.
    """
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    place = set(placement.quantize)
    new_inits: list = []
    qdq_for_tensor: dict[tuple[str, float], str] = {}
    dq_for_weight: dict[str, str] = {}
    bias_for: dict[str, str] = {}      # bias initializer -> the name the export uses
    pending: dict[str, list] = defaultdict(list)   # consumer node name -> Q/DQ nodes to emit first
    missing = []

    def scalar(name, value, dtype):
        new_inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    for node in g.node:
        if node.name not in place:
            continue
        for i, t in enumerate(list(node.input)):
            if not t:
                continue
            if t in inits and (node.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")) and i == 1:
                if t not in dq_for_weight:
                    dq_for_weight[t] = _weight_dq(node, i, t, inits[t], cal, new_inits,
                                                  pending[node.name])
                node.input[i] = dq_for_weight[t]
                continue
            if t in inits:  # biases and other constants stay float
                b = getattr(cal, "biases", {}).get(t) if i == 2 else None
                if b is not None and t not in bias_for:   # a pass (bias correction, LSQ) moved it
                    old = numpy_helper.to_array(inits[t])
                    bias_for[t] = t
                    if old.shape == b.shape and not np.array_equal(old, b):
                        bias_for[t] = f"{t}_corrected"
                        new_inits.append(numpy_helper.from_array(b.astype(old.dtype), bias_for[t]))
                if t in bias_for:
                    node.input[i] = bias_for[t]
                continue
            s = cal.act_scales.get((node.name, i))
            if s is None:
                missing.append((node.name, node.op_type, t))
                continue
            key = (t, float(s))
            if key not in qdq_for_tensor:
                k = sum(1 for kk in qdq_for_tensor if kk[0] == t)
                suffix = f"_{k}" if k else ""
                sname = scalar(f"{t}_act_scale{suffix}", s, np.float32)
                zname = scalar(f"{t}_act_zero_point{suffix}", 0, np.int8)
                qn = helper.make_node("QuantizeLinear", [t, sname, zname], [f"{t}_quantized{suffix}"],
                                      name=f"{t}_QuantizeLinear{suffix}")
                dqn = helper.make_node("DequantizeLinear", [f"{t}_quantized{suffix}", sname, zname],
                                       [f"{t}_dequantized{suffix}"],
                                       name=f"{t}_DequantizeLinear{suffix}")
                pending[node.name].extend([qn, dqn])
                qdq_for_tensor[key] = f"{t}_dequantized{suffix}"
            node.input[i] = qdq_for_tensor[key]
    if missing:
        raise _missing_scale_error(missing)
    nodes = []
    for node in g.node:
        nodes.extend(pending.get(node.name, []))
        nodes.append(node)
    del g.node[:]
    g.node.extend(nodes)
    used_weights = set(dq_for_weight)
    still_used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if not (i.name in used_weights and i.name not in still_used)]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    del g.value_info[:]
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
        "config": config,
    }

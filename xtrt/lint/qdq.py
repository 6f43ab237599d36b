"""Structural checks on a Q/DQ (explicitly quantized) ONNX model, as TensorRT reads it.

Pure functions over an ``onnx.ModelProto``: nothing is run.  :func:`lint_qdq` returns a list of
:class:`Finding` (severity ``error`` / ``warning`` / ``info``):

* every Conv / ConvTranspose / Gemm / MatMul reads its activation input and its weight through a
  DequantizeLinear ("input X of node Y is not quantized but should be"): half-quantized nodes are
  errors; nodes left wholly in float are warnings (errors with ``strict=True``), or info when the
  caller declared them float on purpose (``float_nodes``, e.g. ``quant_cfg.json``'s ``float_ops``);
* no DequantizeLinear of an int32 tensor (a quantized bias: TensorRT's ONNX parser rejects it);
* zero points are 0 and int8 (symmetric INT8, the only integer Q/DQ TensorRT takes);
* a per-channel weight DequantizeLinear quantizes along the output-channel axis;
* scales are positive and finite.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from xtrt.model.graph import from_constants
from xtrt.trt.rules import WEIGHTED_OP_TYPES, attr as _attr, weight_axis as _rule_axis

__all__ = ["Finding", "COMPUTE_OPS", "lint_qdq", "errors", "kept_float", "summarize",
           "hazard_counts"]

COMPUTE_OPS = WEIGHTED_OP_TYPES
SEVERITIES = ("error", "warning", "info")
# ops TensorRT looks through between a weight's DequantizeLinear and its consumer
_PASS_THROUGH = {"Identity", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze"}


@dataclass(frozen=True)
class Finding:
    """One lint result: ``severity`` is error / warning / info; ``node`` names the ONNX node."""

    severity: str
    node: str
    message: str
    check: str = ""
    rule: str = ""
    fix: str = ""

    def __str__(self) -> str:
        extra = (f" [rule: {self.rule}]" if self.rule else "") + \
            (f" (fix: {self.fix})" if self.fix else "")
        return f"{self.severity.upper():7s} {self.node}: {self.message}{extra}"


class _Graph:
    def __init__(self, model) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.nodes = list(g.node)
        self.producer = {o: n for n in g.node for o in n.output if o}
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
        self.elem_type: dict[str, int] = {}
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            if vi.type.HasField("tensor_type"):
                self.elem_type[vi.name] = vi.type.tensor_type.elem_type
        for t in g.initializer:
            self.elem_type[t.name] = t.data_type

    def label(self, node) -> str:
        return node.name or f"<{node.op_type} -> {node.output[0] if node.output else '?'}>"

    def dq_through(self, name: str, allow_pass: bool):
        """The DequantizeLinear that ``name`` comes from (directly or via shape-only ops)."""
        seen = 0
        while name in self.producer and seen < 8:
            node = self.producer[name]
            if node.op_type == "DequantizeLinear":
                return node
            # a Cast (the FP16 export's DQ -> Cast -> layer) is fused by TensorRT
            if node.op_type != "Cast" and (not allow_pass or node.op_type not in _PASS_THROUGH):
                return None
            name, seen = node.input[0], seen + 1
        return None

    def is_constant(self, name: str) -> bool:
        """True when ``name`` is computed from initializers/Constants only."""
        return from_constants(name, self.producer, self.consts.__contains__)

    def tensor_dtype(self, name: str):
        if name in self.consts:
            return self.consts[name].dtype
        if name in self.elem_type:
            from onnx import helper

            try:
                return np.dtype(helper.tensor_dtype_to_np_dtype(self.elem_type[name]))
            except Exception:  # float8 and friends have no numpy type
                return None
        node = self.producer.get(name)
        if node is not None and node.op_type == "QuantizeLinear":
            if len(node.input) > 2 and node.input[2] in self.consts:
                return self.consts[node.input[2]].dtype
            return np.dtype(np.uint8)  # ONNX default without zero point
        return None


def _check_compute(g: _Graph, node, float_nodes: set[str], strict: bool,
                   kept: dict[str, str] | None = None) -> list[Finding]:
    label = g.label(node)
    op = node.op_type
    inputs = [i for i in node.input[:2] if i]
    roles = []
    for k, name in enumerate(inputs):
        is_weight = g.is_constant(name) if op == "MatMul" else k == 1
        roles.append((name, "weight" if is_weight else "activation"))
    quantized = {name: g.dq_through(name, allow_pass=(role == "weight")) is not None
                 for name, role in roles}
    if not any(quantized.values()):
        if kept and node.name in kept:   # the exporter's own record (xtrt.trt.kept_float)
            return [Finding("info", label, f"{op} {label} kept float by the exporter: "
                            f"{kept[node.name]}", "kept_float")]
        if label in float_nodes or node.name in float_nodes:
            return [Finding("info", label, f"{op} kept in float as declared", "float")]
        sev = "error" if strict else "warning"
        name, _ = roles[0]
        return [Finding(sev, label, f"input {name} of node {label} is not quantized but should be "
                        f"({op} has no DequantizeLinear on any input: TensorRT runs it in float)",
                        "unquantized")]
    out = []
    for name, role in roles:
        if not quantized[name]:
            out.append(Finding("error", label, f"input {name} ({role}) of node {label} is not "
                               f"quantized but should be (the other input is: TensorRT cannot "
                               f"run this {op} in INT8)", "partial"))
    # per-channel weight axis
    for name, role in roles:
        if role != "weight" or not quantized[name]:
            continue
        dq = g.dq_through(name, allow_pass=True)
        scale = g.consts.get(dq.input[1]) if len(dq.input) > 1 else None
        if scale is None or scale.size <= 1:
            continue
        data = g.consts.get(dq.input[0])
        if data is None:
            q = g.producer.get(dq.input[0])
            data = g.consts.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
        if data is None or g.producer.get(name) is not dq:
            continue  # shape unknown, or reshaped on the way: cannot map axes reliably
        rank = data.ndim
        want = _rule_axis(node, rank, list(node.input).index(name))
        axis = int(_attr(dq, "axis", 1))
        axis = axis + rank if axis < 0 else axis
        if want is not None and axis != want:
            out.append(Finding("error", label, f"weight {name} of node {label} is quantized per "
                               f"channel along axis {axis}, but its output channels are axis "
                               f"{want} ({dq.name or 'DequantizeLinear'})", "axis"))
        elif rank and 0 <= axis < rank and data.shape[axis] != scale.size:
            out.append(Finding("error", label, f"weight {name} of node {label} has {scale.size} "
                               f"scales for {data.shape[axis]} channels on axis {axis}", "axis"))
    return out


def _check_qdq_node(g: _Graph, node) -> list[Finding]:
    label = g.label(node)
    out = []
    op = node.op_type
    if op == "DequantizeLinear":
        dt = g.tensor_dtype(node.input[0])
        if dt is not None and dt == np.int32:
            out.append(Finding("error", label, f"DequantizeLinear of int32 tensor {node.input[0]} "
                               "(a quantized bias): TensorRT's ONNX parser rejects it; keep the "
                               "bias in float", "int32"))
    scale_name = node.input[1] if len(node.input) > 1 else ""
    scale = g.consts.get(scale_name)
    if scale is None:
        out.append(Finding("info", label, f"scale {scale_name} is computed at run time; not checked",
                           "scale"))
    else:
        s = scale.astype(np.float64)
        if not np.all(np.isfinite(s)):
            out.append(Finding("error", label, f"scale {scale_name} has non-finite values", "scale"))
        elif np.any(s <= 0):
            out.append(Finding("error", label, f"scale {scale_name} has values <= 0 "
                               f"(min {s.min():.3g})", "scale"))
    zp_name = node.input[2] if len(node.input) > 2 else ""
    if op == "DequantizeLinear" and g.tensor_dtype(node.input[0]) == np.int32:
        return out  # the int32 error says it all
    if not zp_name:
        if op == "QuantizeLinear" and _attr(node, "output_dtype") is None:
            out.append(Finding("error", label, "QuantizeLinear without zero point produces uint8 "
                               "(ONNX default); TensorRT needs int8: add an int8 zero point of 0",
                               "zero_point"))
        return out
    zp = g.consts.get(zp_name)
    if zp is None:
        out.append(Finding("error", label, f"zero point {zp_name} is not a constant", "zero_point"))
        return out
    if zp.dtype != np.int8:
        out.append(Finding("error", label, f"zero point {zp_name} is {zp.dtype}, not int8 "
                           "(TensorRT takes symmetric int8 Q/DQ only)", "zero_point"))
    if np.any(zp.astype(np.int64) != 0):
        out.append(Finding("error", label, f"zero point {zp_name} is not 0 (asymmetric "
                           "quantization; TensorRT needs symmetric)", "zero_point"))
    return out


def lint_qdq(model, *, float_nodes: Iterable[str] = (), strict: bool = False,
             strongly_typed: bool | None = None) -> list[Finding]:
    """Check a Q/DQ ONNX model's structure; see the module docstring.

    Args:
        model: an ``onnx.ModelProto`` (or a path to one).
        float_nodes: names of compute nodes that are float on purpose (reported as info).
            The model's own record (:mod:`xtrt.trt.kept_float` metadata, written by
            xtrt.quant) is read too: those nodes are ``kept_float`` findings (info, counted by
            :func:`kept_float`, never a hazard).
        strict: report a compute node with no quantized input as an error, not a warning.
        strongly_typed: report FP32 regions outside Q/DQ (None: when the model has float16
            tensors, i.e. it was exported for a strongly-typed build).

    Returns:
        Findings ordered errors first, then warnings, then info (graph order within each).
    """
    if not hasattr(model, "graph"):
        from xtrt.model.load import load_model

        model = load_model(model)
    import onnx

    try:    # tensor types for the FP32-region check
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # plugin nodes or external data: the declared types are used
        pass
    from xtrt.trt.kept_float import read_kept_float

    g = _Graph(model)
    kept = read_kept_float(model)
    floats = set(float_nodes)
    found: list[Finding] = []
    has_qdq = False
    for node in g.nodes:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            has_qdq = True
            found += _check_qdq_node(g, node)
        elif node.op_type in COMPUTE_OPS:
            found += _check_compute(g, node, floats, strict, kept)
    if has_qdq:
        from xtrt.lint.hazards import check_hazards

        found += check_hazards(g, model, Finding, strongly_typed=strongly_typed,
                               declared_fp32=floats | set(kept))
    else:  # one finding, not one per layer; a model with no Q/DQ never passes
        n = sum(1 for node in g.nodes if node.op_type in COMPUTE_OPS)
        found = [Finding("error", "<graph>",
                         f"the model has no QuantizeLinear/DequantizeLinear nodes: it is not "
                         f"explicitly quantized ({n} Conv/ConvTranspose/Gemm/MatMul nodes in float)",
                         "no_qdq")]
    from dataclasses import replace

    from xtrt.lint.hazards import RULES

    found = [replace(f, rule=RULES[f.check][0], fix=RULES[f.check][1])
             if f.check in RULES and f.severity != "info" and not f.rule else f for f in found]
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(found, key=lambda f: order.get(f.severity, 9))  # stable: graph order kept


def hazard_counts(findings: Sequence[Finding]) -> dict[str, int]:
    """Errors and warnings per check (the hazards), in first-seen order."""
    out: dict[str, int] = {}
    for f in findings:
        if f.severity in ("error", "warning"):
            out[f.check or "other"] = out.get(f.check or "other", 0) + 1
    return out


def kept_float(findings: Sequence[Finding]) -> list[Finding]:
    """The layers the model's exporter recorded as kept float on purpose (not hazards)."""
    return [f for f in findings if f.check == "kept_float"]


def errors(findings: Sequence[Finding]) -> list[Finding]:
    """The findings of severity ``error``."""
    return [f for f in findings if f.severity == "error"]


def summarize(findings: Sequence[Finding]) -> dict[str, int]:
    """Counts per severity."""
    return {s: sum(1 for f in findings if f.severity == s) for s in SEVERITIES}

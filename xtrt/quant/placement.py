"""Where Q/DQ goes (TensorRT explicit quantization rules).  Placement decides, export writes.

Rules:
* Q/DQ in front of the activation and weight inputs of Conv, ConvTranspose, Gemm, MatMul and of
  AveragePool/GlobalAveragePool: the layers TensorRT runs in INT8.  Activations (ReLU, SiLU,
  Sigmoid) fuse into the convolution; biases stay float.
* Plugin nodes and everything after them stay float.
* A detection *decode tail* stays float: every node downstream of a reshape that flattens a
  spatial feature map (H*W > 1) into anchors, from which no heavy weighted layer is reachable.
  That is where YOLO heads concatenate box coordinates (0..640) with class scores (0..1); one INT8
  scale there zeroes every score.  Found from the graph alone, no model names.
* A Conv/ConvTranspose whose channels TensorRT pads in INT8 (fewer than 8, not a multiple of 4;
  :func:`xtrt.trt.rules.padded_channels`) stays float, the stem reading the image aside.
* User exclusions by exact node name, /regex/, or op type, checked against the graph.
* ``Placement.tensors``: the tensor-level plan (scale groups, weight axes, precision per node
  with the reason) by TensorRT's placement and fusion rules, :mod:`xtrt.quant.tensor_plan`.
"""
from __future__ import annotations

import difflib
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from xtrt.errors import ConfigError
from xtrt.quant.tensor_plan import TensorPlan, build_tensor_plan
from xtrt.trt.rules import INT8_OP_TYPES, WEIGHTED_OP_TYPES

__all__ = ["QUANTIZABLE_OP_TYPES", "Placement", "plan_placement", "find_decode_tail",
           "resolve_exclusions"]

log = logging.getLogger(__name__)

QUANTIZABLE_OP_TYPES = INT8_OP_TYPES
_WEIGHTED = WEIGHTED_OP_TYPES
HEAVY_WEIGHT_ELEMENTS = 1024  # a DFL "integral" conv has 16; real layers have thousands


@dataclass
class Placement:
    """The plan: which nodes get Q/DQ on their inputs, which stay float and why."""

    quantize: list[str] = field(default_factory=list)
    keep_float: dict[str, str] = field(default_factory=dict)   # node -> reason
    decode_tail: list[str] = field(default_factory=list)
    # the tensor-level plan (xtrt.quant.tensor_plan) for the lists above; export rebuilds it
    tensors: Optional[TensorPlan] = None

    def as_dict(self) -> dict:
        out = {"quantize": list(self.quantize), "keep_float": dict(self.keep_float),
               "decode_tail": list(self.decode_tail)}
        if self.tensors is not None:
            out["tensors"] = self.tensors.as_dict()
        return out


def _graph_maps(model):
    producers = {}
    consumers = defaultdict(list)
    for n in model.graph.node:
        for o in n.output:
            producers[o] = n
        for i in n.input:
            if i:
                consumers[i].append(n)
    return producers, consumers


def _shapes(model) -> dict[str, list]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # plugin nodes: inference stops there, which is fine
        inferred = model
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + \
            list(inferred.graph.output):
        dims = []
        for d in vi.type.tensor_type.shape.dim:
            dims.append(int(d.dim_value) if d.HasField("dim_value") else None)
        shapes[vi.name] = dims
    return shapes


def _weight_elements(node, inits: dict) -> int:
    if node.op_type not in _WEIGHTED or len(node.input) < 2:
        return 0
    w = inits.get(node.input[1])
    return int(np.prod(w.dims)) if w is not None else HEAVY_WEIGHT_ELEMENTS + 1


def find_decode_tail(model) -> list[str]:
    """Names of the nodes forming a detection decode tail (see module docstring)."""
    producers, consumers = _graph_maps(model)
    inits = {i.name: i for i in model.graph.initializer}
    shapes = _shapes(model)
    nodes = list(model.graph.node)

    # nodes from which a heavy weighted layer is reachable (reverse topological sweep)
    reaches_heavy: dict[str, bool] = {}
    for n in reversed(nodes):
        heavy = _weight_elements(n, inits) > HEAVY_WEIGHT_ELEMENTS
        for o in n.output:
            for c in consumers.get(o, []):
                heavy = heavy or reaches_heavy.get(c.name, False)
        reaches_heavy[n.name] = heavy

    starts = []
    for n in nodes:
        if n.op_type not in ("Reshape", "Flatten") or not n.input:
            continue
        src = shapes.get(n.input[0])
        dst = shapes.get(n.output[0])
        if not src or len(src) < 4 or dst is None:
            continue
        h, w = src[-2], src[-1]
        if h and w and h * w > 1 and len(dst) < len(src) and not reaches_heavy[n.name]:
            starts.append(n)
    seen = set()
    stack = list(starts)
    while stack:
        n = stack.pop()
        if n.name in seen or reaches_heavy.get(n.name):
            continue
        seen.add(n.name)
        for o in n.output:
            stack.extend(consumers.get(o, []))
    # keep graph order
    return [n.name for n in nodes if n.name in seen]


def _is_regex(pattern: str) -> bool:
    return len(pattern) > 1 and pattern.startswith("/") and pattern.endswith("/") or \
        any(c in pattern for c in "*+?[]()|^$\\")


def resolve_exclusions(model, names: Sequence[str], op_types: Sequence[str]) -> dict[str, str]:
    """Map the user's exclusions onto node names; unknown names/types are ConfigErrors."""
    all_names = [n.name for n in model.graph.node]
    all_types = sorted({n.op_type for n in model.graph.node})
    out: dict[str, str] = {}
    for pat in names:
        if _is_regex(pat):
            rx = pat[1:-1] if pat.startswith("/") and pat.endswith("/") else pat
            try:
                compiled = re.compile(rx)
            except re.error as exc:
                raise ConfigError(f"quantization.exclude_nodes: {pat!r} is not a valid regex ({exc})",
                                  "fix the pattern, or write an exact node name") from exc
            hits = [n for n in all_names if compiled.search(n)]
            if not hits:
                raise ConfigError(f"quantization.exclude_nodes: regex {pat!r} matches no node",
                                  "check the node names (e.g. with netron) or the pattern")
            for h in hits:
                out[h] = f"excluded by config ({pat})"
        else:
            if pat not in all_names:
                close = difflib.get_close_matches(pat, all_names, n=1, cutoff=0.6)
                raise ConfigError(f"quantization.exclude_nodes: no node named {pat!r}",
                                  f"did you mean '{close[0]}'?" if close else
                                  "use an exact node name or a /regex/")
            out[pat] = "excluded by config"
    for t in op_types:
        if t not in all_types:
            close = difflib.get_close_matches(t, all_types, n=1, cutoff=0.5)
            raise ConfigError(f"quantization.exclude_op_types: the model has no {t!r} op",
                              f"did you mean '{close[0]}'?" if close else
                              f"op types in this model: {', '.join(all_types)}")
        for n in model.graph.node:
            if n.op_type == t:
                out[n.name] = f"excluded by config (op type {t})"
    return out


def _padded_convs(model) -> dict[str, str]:
    """Conv/ConvTranspose -> reason, for those whose channels TensorRT pads in INT8
    (xtrt.trt.rules.padded_channels): a 6-channel squeeze-excitation conv or a 1-channel output
    conv would run padded INT8 kernels (lint's small_channels hazard); kept float instead (FP16 in
    the FP16 export). Whether INT8 would still be faster there is not measured (no TensorRT here).
    The stem reading a graph input (3 image channels) stays INT8."""
    from xtrt.trt.rules import padded_channels

    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    inputs = {i.name for i in model.graph.input}
    out = {}
    for n in model.graph.node:
        if n.op_type in ("Conv", "ConvTranspose") and len(n.input) > 1 and \
                n.input[1] in inits and n.input[0] not in inputs:
            small = padded_channels(n, inits[n.input[1]])
            if small:
                out[n.name] = (f"{' and '.join(small)}: TensorRT pads INT8 channels to a multiple "
                               f"of 4; kept in float rather than padded (lint: small_channels)")
    return out


def plan_placement(model, *, exclude_nodes: Sequence[str] = (), exclude_op_types: Sequence[str] = (),
                   keep_decode_fp32: bool = True, plugin_tail: Sequence[str] = ()) -> Placement:
    """Decide which nodes of the prepared ``model`` get Q/DQ on their inputs."""
    plan = Placement()
    keep = dict(resolve_exclusions(model, exclude_nodes, exclude_op_types))
    for name in plugin_tail:
        keep.setdefault(name, "plugin tail (runs as a TensorRT plugin in float)")
    if keep_decode_fp32:
        plan.decode_tail = find_decode_tail(model)
        for name in plan.decode_tail:
            keep.setdefault(name, "detection decode tail (box coordinates and scores)")
    keep.update({k: v for k, v in _padded_convs(model).items() if k not in keep})
    for n in model.graph.node:
        if n.op_type not in QUANTIZABLE_OP_TYPES:
            continue
        if n.name in keep:
            plan.keep_float[n.name] = keep[n.name]
        else:
            plan.quantize.append(n.name)
    for name, why in keep.items():
        plan.keep_float.setdefault(name, why)
    plan.tensors = build_tensor_plan(model, plan)
    return plan

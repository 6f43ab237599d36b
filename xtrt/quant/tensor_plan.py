"""The tensor-level Q/DQ plan: which tensors TensorRT should read through Q/DQ, with which shared
scale, and in which precision each node then runs.  Built from a node-level
:class:`~xtrt.quant.placement.Placement` by TensorRT's placement and fusion rules
(:mod:`xtrt.trt.rules`):

1. every activation input of a placed INT8 op (Conv/ConvTranspose/Gemm/MatMul/pools) is a *site*
   (read through Q/DQ); its weight is quantized per output channel along the rule's axis;
2. a residual Add whose one input comes from a placed convolution (through the activations
   TensorRT fuses into its epilogue) gets its *other* input quantized, so TensorRT can fuse the
   Add into that convolution;
3. a Concat, or an op that commutes with Q/DQ (MaxPool, Resize nearest, Slice, Reshape, Transpose,
   Split, Pad constant 0, Flatten, Squeeze/Unsqueeze), whose every output is read only through
   Q/DQ runs in INT8: its inputs become sites of the *same scale group* as its outputs (one scale
   for a Concat's inputs and output; a scale carried unchanged across commuting ops);
4. graph outputs are never replaced by a DequantizeLinear output (consumers are rewired, the
   tensor itself stays float), and ops TensorRT cannot run in INT8 get no Q/DQ of their own.

The shared scale of a group is the largest calibrated scale of its members (max of the amax).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Optional

from xtrt.model.graph import from_constants
from xtrt.trt.rules import (FUSIBLE_ACTIVATIONS, INT8_OP_TYPES, QMAX, WEIGHTED_OP_TYPES, commutes,
                            weight_axis, weight_input)

__all__ = ["WeightSpec", "TensorPlan", "build_tensor_plan", "group_scales"]


@dataclass(frozen=True)
class WeightSpec:
    """A weight initializer quantized per output channel: its consumer, input index and axis."""

    node: str
    index: int
    axis: Optional[int]


@dataclass
class TensorPlan:
    """Q/DQ over tensors.

    Attributes:
        sites: activation tensor -> the ``(node, input index)`` pairs that read it through its
            one Q/DQ pair (graph order).
        groups: site tensor -> scale group id (0, 1, ... in graph order); a group shares one scale.
        weights: weight initializer -> :class:`WeightSpec`.
        precision: node -> ``(precision, reason)``; precision is ``int8`` or ``float``.
    """

    sites: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    groups: dict[str, int] = field(default_factory=dict)
    weights: dict[str, WeightSpec] = field(default_factory=dict)
    precision: dict[str, tuple[str, str]] = field(default_factory=dict)

    def members(self) -> dict[int, list[str]]:
        """Group id -> its tensors."""
        out: dict[int, list[str]] = defaultdict(list)
        for t, g in self.groups.items():
            out[g].append(t)
        return dict(out)

    def as_dict(self, scales: Optional[dict[str, float]] = None) -> dict:
        """JSON-ready: groups (tensors, scale, amax), weights (node, axis), precision."""
        groups = {}
        for g, ts in self.members().items():
            row: dict = {"tensors": ts}
            if scales and ts[0] in scales:
                row["scale"] = scales[ts[0]]
                row["amax"] = scales[ts[0]] * QMAX
            groups[str(g)] = row
        return {"groups": groups,
                "weights": {w: {"node": s.node, "input": s.index, "axis": s.axis}
                            for w, s in self.weights.items()},
                "precision": {n: {"precision": p, "reason": r}
                              for n, (p, r) in self.precision.items()}}


class _Union:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, a: str) -> str:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra


class _G:
    def __init__(self, model) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.nodes = list(g.node)
        self.index = {n.name: i for i, n in enumerate(self.nodes)}
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.consumers: dict[str, list[tuple[object, int]]] = defaultdict(list)
        for n in self.nodes:
            for i, t in enumerate(n.input):
                if t:
                    self.consumers[t].append((n, i))
        self.inits = {t.name: t for t in g.initializer}
        self.values = {}
        for n in self.nodes:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.values[n.output[0]] = numpy_helper.to_array(a.t)
        self.outputs = {o.name for o in g.output}

    def const(self, name: str):
        from onnx import numpy_helper

        if name in self.inits:
            return numpy_helper.to_array(self.inits[name])
        return self.values.get(name)

    def is_const(self, name: str) -> bool:
        return from_constants(name, self.producer,
                              lambda t: t in self.inits or t in self.values)


def _conv_behind(g: _G, tensor: str, placed: set[str]):
    """The placed weighted node whose epilogue produces ``tensor`` (through fusible activations,
    SiLU's Sigmoid+Mul included), or None."""
    for _ in range(4):
        node = g.producer.get(tensor)
        if node is None:
            return None
        if node.op_type in WEIGHTED_OP_TYPES:
            return node if node.name in placed and tensor not in g.outputs else None
        if node.op_type not in FUSIBLE_ACTIVATIONS:
            return None
        if node.op_type == "Mul":      # SiLU: Mul(x, Sigmoid(x))
            ins = [i for i in node.input if i]
            sig = [i for i in ins if g.producer.get(i) is not None
                   and g.producer[i].op_type == "Sigmoid"]
            rest = [i for i in ins if i not in sig]
            if len(sig) != 1 or len(rest) != 1 or g.producer[sig[0]].input[0] != rest[0]:
                return None
            tensor = rest[0]
        else:
            tensor = node.input[0]
    return None


def _residual_sites(g: _G, placed: set[str], keep: set[str], add_site, plan: TensorPlan) -> None:
    for node in g.nodes:
        if node.op_type != "Add" or node.name in keep or node.domain not in ("", "ai.onnx"):
            continue
        ins = list(node.input)
        if len(ins) != 2 or any(not t or g.is_const(t) for t in ins):
            continue
        convs = [_conv_behind(g, t, placed) for t in ins]
        if not any(convs):
            continue
        # TensorRT fuses the Add into one convolution: the later one when both qualify
        fused = max((k for k in (0, 1) if convs[k] is not None),
                    key=lambda k: g.index[convs[k].name])
        other = 1 - fused
        add_site(ins[other], node.name, other)
        plan.precision[node.name] = ("int8", f"residual Add fused into the epilogue of "
                                             f"{convs[fused].name} (its other input is quantized)")


def _propagate(g: _G, keep: set[str], plan: TensorPlan, add_site, uf: _Union) -> None:
    """Concat and commuting ops whose outputs are read only through Q/DQ run in INT8."""
    def read_only_quantized(t: str) -> bool:
        want = {(n.name, i) for n, i in g.consumers.get(t, [])}
        return bool(want) and t not in g.outputs and want <= set(plan.sites.get(t, []))

    changed = True
    while changed:
        changed = False
        for node in reversed(g.nodes):
            if node.name in keep or node.name in plan.precision or \
                    node.domain not in ("", "ai.onnx"):
                continue
            is_concat = node.op_type == "Concat"
            if not (is_concat or commutes(node, g.const)):
                continue
            outs = [o for o in node.output if o]
            if not outs or not all(read_only_quantized(o) for o in outs):
                continue
            data = [(i, t) for i, t in enumerate(node.input) if t and not g.is_const(t)]
            if not is_concat:
                data = data[:1]
            if not data:
                continue
            for i, t in data:
                add_site(t, node.name, i)
                for o in outs:
                    uf.union(o, t)
            plan.precision[node.name] = ("int8", "Concat in INT8: its inputs and output share one "
                                         "scale" if is_concat else
                                         "commutes with Q/DQ: carries its input's scale")
            changed = True


def build_tensor_plan(model, placement) -> TensorPlan:
    """The tensor-level plan for ``placement`` on the prepared ``model`` (see module docstring)."""
    g = _G(model)
    placed = set(placement.quantize)
    keep = set(placement.keep_float)
    plan = TensorPlan()
    uf = _Union()

    def add_site(t: str, node: str, i: int) -> None:
        lst = plan.sites.setdefault(t, [])
        if (node, i) not in lst:
            lst.append((node, i))
        uf.find(t)

    for node in g.nodes:
        if node.name not in placed or node.op_type not in INT8_OP_TYPES:
            continue
        widx = weight_input(node, g.is_const) if node.op_type in WEIGHTED_OP_TYPES else None
        for i, t in enumerate(node.input):
            if not t:
                continue
            if i == widx and t in g.inits:
                rank = len(g.inits[t].dims)
                plan.weights.setdefault(t, WeightSpec(node.name, i, weight_axis(node, rank, i)))
            elif not g.is_const(t):
                add_site(t, node.name, i)
        plan.precision[node.name] = ("int8", "TensorRT INT8 kernel: inputs (and weight) through "
                                             "DequantizeLinear")
    _residual_sites(g, placed, keep, add_site, plan)
    _propagate(g, keep, plan, add_site, uf)
    order = {n.name: k for k, n in enumerate(g.nodes)}
    for t in plan.sites:
        plan.sites[t].sort(key=lambda s: (order.get(s[0], 0), s[1]))
    roots: dict[str, int] = {}
    for node in g.nodes:                       # group ids in graph order
        for t in node.input:
            if t in plan.sites and t not in plan.groups:
                plan.groups[t] = roots.setdefault(uf.find(t), len(roots))
    for node in g.nodes:
        if node.name in plan.precision:
            continue
        if node.name in placement.keep_float:
            plan.precision[node.name] = ("float", placement.keep_float[node.name])
        elif node.op_type in INT8_OP_TYPES:
            plan.precision[node.name] = ("float", "not placed")
        else:
            plan.precision[node.name] = ("float", f"{node.op_type} outside the Q/DQ pairs "
                                                  "(TensorRT runs it in float, or fuses it)")
    return plan


def group_scales(plan: TensorPlan, act_scales: dict[tuple[str, int], float]) -> dict[str, float]:
    """Site tensor -> its group's scale: the largest calibrated scale over the group's members
    (a member's calibrated scale: the largest over its consumers in ``act_scales``).  Tensors of
    a group with no calibrated member are left out."""
    own: dict[str, float] = {}
    for t, readers in plan.sites.items():
        vals = [float(act_scales[r]) for r in readers if r in act_scales]
        if vals:
            own[t] = max(vals)
    best: dict[int, float] = {}
    for t, gid in plan.groups.items():
        if t in own:
            best[gid] = max(best.get(gid, 0.0), own[t])
    return {t: best[gid] for t, gid in plan.groups.items() if gid in best}

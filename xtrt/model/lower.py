"""Rewrite ops that do not exist at opset 13 (PPQ 0.6.6's limit) into opset-13 ops.

Each rule replaces one node by a few standard nodes computing the same function (the caller
proves the prepared model equal to the original on ONNX Runtime):

* ``HardSwish`` (14):           ``x * HardSigmoid(x, alpha=1/6, beta=0.5)``
* ``Mish`` (18):                ``x * Tanh(Softplus(x))``
* ``Gelu`` (20):                ``0.5 x (1 + Erf(x / sqrt 2))``, or the ``tanh`` approximation
* ``LayerNormalization`` (17):  ReduceMean / Sub / Mul / Sqrt / Div, then scale and bias
* ``GroupNormalization`` (18, 21): the same over ``[N, G, -1]``, per-channel (21) or per-group
  (18) scale and bias
* ``CastLike`` (15):            ``Cast(to=<dtype of the second input>)``

Every other op newer than 13 has no rule; the opset-13 check (xtrt.model.opset) then names it
in one error line.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from xtrt.errors import ModelError

__all__ = ["LOWERINGS", "lower_new_ops", "explicit_conv_transpose_pads"]


class _Emitter:
    """Collects the replacement nodes and constants of one rewritten node."""

    def __init__(self, node, used: set[str], opset: int = 13):
        self.node = node
        self.opset = opset
        self.nodes: list = []
        self.inits: list = []
        self._used = used

    def _name(self, what: str) -> str:
        base = f"{self.node.name or self.node.op_type}/{what}"
        name, i = base, 0
        while name in self._used:
            i += 1
            name = f"{base}_{i}"
        self._used.add(name)
        return name

    def const(self, value, dtype=np.float32) -> str:
        from onnx import numpy_helper

        name = self._name("const")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, inputs, out: str | None = None, **attrs) -> str:
        from onnx import helper

        name = self._name(op_type)
        out = out or name + "_out"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=name, **attrs))
        return out


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            value = helper.get_attribute_value(a)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _hardswish(e: _Emitter, info) -> None:
    x, y = e.node.input[0], e.node.output[0]
    e.op("Mul", [x, e.op("HardSigmoid", [x], alpha=1.0 / 6.0, beta=0.5)], y)


def _mish(e: _Emitter, info) -> None:
    x, y = e.node.input[0], e.node.output[0]
    e.op("Mul", [x, e.op("Tanh", [e.op("Softplus", [x])])], y)


def _gelu(e: _Emitter, info) -> None:
    x, y = e.node.input[0], e.node.output[0]
    if _attr(e.node, "approximate", "none") == "tanh":
        cube = e.op("Mul", [e.op("Mul", [x, x]), x])
        inner = e.op("Add", [x, e.op("Mul", [cube, e.const(0.044715)])])
        t = e.op("Tanh", [e.op("Mul", [inner, e.const(math.sqrt(2.0 / math.pi))])])
    else:
        t = e.op("Erf", [e.op("Div", [x, e.const(math.sqrt(2.0))])])
    half_x = e.op("Mul", [x, e.const(0.5)])
    e.op("Mul", [half_x, e.op("Add", [t, e.const(1.0)])], y)


def _mean(e: _Emitter, x: str, axes: list[int]) -> str:
    """ReduceMean as the model's opset spells it (axes an input from 18, an attribute before),
    so the rewritten graph is valid at its own opset; the opset-13 pass moves the axes later."""
    if e.opset >= 18:
        return e.op("ReduceMean", [x, e.const(axes, np.int64)], keepdims=1)
    return e.op("ReduceMean", [x], axes=axes, keepdims=1)


def _normalise(e: _Emitter, x: str, axes: list[int], eps: float) -> tuple[str, str, str]:
    """(normalised x, mean, std) over ``axes`` (keepdims)."""
    mean = _mean(e, x, axes)
    d = e.op("Sub", [x, mean])
    var = _mean(e, e.op("Mul", [d, d]), axes)
    std = e.op("Sqrt", [e.op("Add", [var, e.const(eps)])])
    return e.op("Div", [d, std]), mean, std


def _rank(e: _Emitter, info, tensor: str) -> int:
    rank = info.get(tensor)
    if rank is None:
        raise ModelError(f"cannot lower node {e.node.name!r} ({e.node.op_type}) to opset 13: the "
                         f"rank of its input {tensor!r} is unknown",
                         "give the model static input dims (input.shape) or re-export at opset 13")
    return rank


def _layernorm(e: _Emitter, info) -> None:
    n = e.node
    x = n.input[0]
    axis = int(_attr(n, "axis", -1))
    axes = list(range(axis, 0)) if axis < 0 else list(range(axis, _rank(e, info, x)))
    y, mean, std = _normalise(e, x, axes, float(_attr(n, "epsilon", 1e-5)))
    scaled = e.op("Mul", [y, n.input[1]], None if len(n.input) > 2 and n.input[2] else n.output[0])
    if len(n.input) > 2 and n.input[2]:
        e.op("Add", [scaled, n.input[2]], n.output[0])
    if len(n.output) > 1 and n.output[1]:
        e.op("Identity", [mean], n.output[1])
    if len(n.output) > 2 and n.output[2]:
        e.op("Reciprocal", [std], n.output[2])


def _groupnorm(e: _Emitter, info) -> None:
    n = e.node
    x, scale, bias = n.input[0], n.input[1], n.input[2]
    groups = int(_attr(n, "num_groups"))
    rank = _rank(e, info, x)
    grouped = e.op("Reshape", [x, e.const([0, groups, -1], np.int64)])
    y, _, _ = _normalise(e, grouped, [2], float(_attr(n, "epsilon", 1e-5)))
    if e.opset < 21:  # opset 18: scale/bias have one value per group
        shape = e.const([groups, 1], np.int64)
        y = e.op("Add", [e.op("Mul", [y, e.op("Reshape", [scale, shape])]),
                         e.op("Reshape", [bias, shape])])
        e.op("Reshape", [y, e.op("Shape", [x])], n.output[0])
        return
    y = e.op("Reshape", [y, e.op("Shape", [x])])
    shape = e.const([-1] + [1] * (rank - 2), np.int64)
    e.op("Add", [e.op("Mul", [y, e.op("Reshape", [scale, shape])]),
                 e.op("Reshape", [bias, shape])], n.output[0])


def _castlike(e: _Emitter, info) -> None:
    n = e.node
    dtype = info.get(("dtype", n.input[1]))
    if not dtype:
        raise ModelError(f"cannot lower node {n.name!r} (CastLike) to opset 13: the dtype of its "
                         f"input {n.input[1]!r} is unknown", "re-export the model at opset 13")
    e.op("Cast", [n.input[0]], n.output[0], to=int(dtype))


LOWERINGS: dict[str, Callable] = {
    "HardSwish": _hardswish, "Mish": _mish, "Gelu": _gelu, "LayerNormalization": _layernorm,
    "GroupNormalization": _groupnorm, "CastLike": _castlike,
}


def _tensor_info(model, opset: int) -> dict:
    """tensor -> rank, ("dtype", tensor) -> elem type, ("opset",) -> the model's opset."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        inferred = model
    info: dict = {("opset",): opset}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            info[vi.name] = len(tt.shape.dim)
        if tt.elem_type:
            info[("dtype", vi.name)] = tt.elem_type
    for init in inferred.graph.initializer:
        info[init.name] = len(init.dims)
        info[("dtype", init.name)] = init.data_type
    return info


def lower_new_ops(model, opset: int) -> tuple[object, list[str]]:
    """Rewrite every op of :data:`LOWERINGS` in ``model`` (in place); returns (model, notes).

    ``opset`` is the model's default-domain opset (GroupNormalization's scale layout depends on
    it).  Ops at opset 13 and ops of other domains are left alone."""
    nodes = list(model.graph.node)
    if not any(n.domain in ("", "ai.onnx") and n.op_type in LOWERINGS for n in nodes):
        return model, []
    info = _tensor_info(model, opset)
    used = {n.name for n in nodes} | {i.name for i in model.graph.initializer}
    counts: dict[str, int] = {}
    new_nodes = []
    for node in nodes:
        if node.domain not in ("", "ai.onnx") or node.op_type not in LOWERINGS:
            new_nodes.append(node)
            continue
        e = _Emitter(node, used, opset)
        LOWERINGS[node.op_type](e, info)
        new_nodes.extend(e.nodes)
        model.graph.initializer.extend(e.inits)
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    notes = [f"lowered {k} x{v} to opset-13 ops" for k, v in counts.items()]
    return model, notes


def explicit_conv_transpose_pads(model) -> list[str]:
    """Give every ConvTranspose without ``pads`` (and without ``auto_pad``) explicit zero pads,
    in place: PPQ 0.6.6's ConvTranspose forward crashes on the attribute's default."""
    from onnx import helper

    fixed = []
    for n in model.graph.node:
        if n.op_type != "ConvTranspose" or n.domain not in ("", "ai.onnx"):
            continue
        names = {a.name for a in n.attribute}
        if "pads" in names or _attr(n, "auto_pad", "NOTSET") != "NOTSET":
            continue
        kernel = _attr(n, "kernel_shape")
        if kernel is None:
            continue  # PPQ takes the rank from kernel_shape; without it the default is moot
        n.attribute.append(helper.make_attribute("pads", [0] * (2 * len(kernel))))
        fixed.append(n.name)
    return [f"ConvTranspose {', '.join(map(repr, fixed))}: explicit zero pads"] if fixed else []

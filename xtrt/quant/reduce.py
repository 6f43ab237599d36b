"""Statistics computed inside the ONNX graph, so only scalars leave the session.

The analysis compares tensors of two models (the FP32 body and its Q/DQ export) on the same
input.  Fetching every layer's output of both as graph outputs copies them to the host (on CUDA:
gigabytes of device-to-host traffic at YOLOv8n 640 batch 8) and reduces them in numpy there.
:func:`paired_model` puts both graphs in one model over the same inputs (the second one's names
prefixed) and appends reduction nodes, so one session and one forward per batch give the sums:

- :func:`pair_sums`: per tensor pair ``(a, b)``, ``sum a*b``, ``sum a*a``, ``sum b*b``,
  ``sum (a-b)^2`` in float64 (the casts are in the graph; the same float64 sums the host took);
- :func:`min_max`: per tensor, its min and max (exact in any order);
- :func:`square_sums`: float64 sums of squares, or of squared differences (output noise).
"""
from __future__ import annotations

from typing import Sequence

__all__ = ["PAIR_SUMS", "min_max", "pair_sums", "paired_model", "square_sums"]

#: The four sums :func:`pair_sums` writes per pair, in this order.
PAIR_SUMS = ("dot", "aa", "bb", "err")


def paired_model(first, second, prefix: str = "xtrt_q/"):
    """One model running ``first`` and ``second`` (same graph inputs, by name) side by side:
    ``second``'s nodes, initializers and intermediate tensors get ``prefix``; no graph outputs
    (add them with :func:`pair_sums` / :func:`min_max`).  Opsets: ``first``'s."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(first)
    g = m.graph
    del g.output[:]
    del g.value_info[:]
    shared = {i.name for i in first.graph.input}
    inits = {t.name for t in first.graph.initializer}
    shared -= inits

    def rename(name: str) -> str:
        return name if not name or name in shared else prefix + name

    for t in second.graph.initializer:
        c = g.initializer.add()
        c.CopyFrom(t)
        c.name = rename(t.name)
    for n in second.graph.node:
        c = g.node.add()
        c.CopyFrom(n)
        c.name = prefix + n.name if n.name else ""
        c.input[:] = [rename(t) for t in n.input]
        c.output[:] = [rename(t) for t in n.output]
    have = {(o.domain, o.version) for o in m.opset_import}
    for o in second.opset_import:
        if (o.domain, o.version) not in have and all(x.domain != o.domain for x in m.opset_import):
            m.opset_import.add().CopyFrom(o)
    return m


def _out(model, name: str) -> None:
    from onnx import helper

    model.graph.output.append(helper.make_empty_tensor_value_info(name))


def pair_sums(model, pairs: Sequence[tuple[str, str]], tag: str = "xtrt_sum") -> list[list[str]]:
    """Append to ``model`` (in place) the float64 sums of :data:`PAIR_SUMS` for each
    ``(a, b)`` tensor pair; returns, per pair, the four scalar output names."""
    from onnx import TensorProto, helper

    nodes, names = [], []
    for i, (a, b) in enumerate(pairs):
        p = f"{tag}{i}_"
        da, db, diff = p + "a64", p + "b64", p + "diff"
        nodes += [helper.make_node("Cast", [a], [da], name=p + "cast_a", to=TensorProto.DOUBLE),
                  helper.make_node("Cast", [b], [db], name=p + "cast_b", to=TensorProto.DOUBLE),
                  helper.make_node("Sub", [da, db], [diff], name=p + "sub")]
        outs = []
        for what, (x, y) in zip(PAIR_SUMS, ((da, db), (da, da), (db, db), (diff, diff))):
            prod, s = p + what + "_prod", p + what
            nodes += [helper.make_node("Mul", [x, y], [prod], name=prod),
                      helper.make_node("ReduceSum", [prod], [s], name=s, keepdims=0)]
            outs.append(s)
        names.append(outs)
    model.graph.node.extend(nodes)
    for outs in names:
        for s in outs:
            _out(model, s)
    return names


def min_max(model, tensors: Sequence[str], tag: str = "xtrt_mm") -> list[tuple[str, str]]:
    """Append to ``model`` (in place) ReduceMin / ReduceMax over each of ``tensors``; returns,
    per tensor, the (min, max) scalar output names."""
    from onnx import helper

    names = []
    for i, t in enumerate(tensors):
        lo, hi = f"{tag}{i}_min", f"{tag}{i}_max"
        model.graph.node.extend([helper.make_node("ReduceMin", [t], [lo], name=lo, keepdims=0),
                                 helper.make_node("ReduceMax", [t], [hi], name=hi, keepdims=0)])
        _out(model, lo)
        _out(model, hi)
        names.append((lo, hi))
    return names


def square_sums(model, pairs: Sequence[tuple[str, str | None]], tag: str = "xtrt_sq") -> list[str]:
    """Append to ``model`` (in place), per ``(a, b)``, the float64 ``sum (a-b)^2`` (``b`` None:
    ``sum a^2``); returns the scalar output names."""
    from onnx import TensorProto, helper

    names = []
    for i, (a, b) in enumerate(pairs):
        p = f"{tag}{i}_"
        x = p + "a64"
        nodes = [helper.make_node("Cast", [a], [x], name=p + "cast_a", to=TensorProto.DOUBLE)]
        if b is not None:
            nodes += [helper.make_node("Cast", [b], [p + "b64"], name=p + "cast_b",
                                       to=TensorProto.DOUBLE),
                      helper.make_node("Sub", [x, p + "b64"], [p + "diff"], name=p + "sub")]
            x = p + "diff"
        nodes += [helper.make_node("Mul", [x, x], [p + "sq"], name=p + "sq"),
                  helper.make_node("ReduceSum", [p + "sq"], [p + "sum"], name=p + "sum",
                                   keepdims=0)]
        model.graph.node.extend(nodes)
        _out(model, p + "sum")
        names.append(p + "sum")
    return names

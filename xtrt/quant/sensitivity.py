"""Layer-wise sensitivity on ONNX Runtime: the output error with only one layer in INT8.

PPQ's ``layerwise_error_analyse`` re-runs its torch executor over the whole graph for every layer
and batch (38.7 s for YOLOv8n's 63 layers on 2 cores).  Here one ONNX Runtime session holds every
placed layer's Q/DQ behind a scalar switch input: ``x' = x + m * (DQ(Q(x)) - x)`` for activations and
the same for weights.  All switches at 0 is the FP32 model; switch ``L`` alone is "only L in INT8".
One session, one forward per layer and batch, at ONNX Runtime's speed, on exactly the Q/DQ
semantics that are exported.  The measure is PPQ's: noise power / signal power of the graph outputs.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

__all__ = ["switchable_model", "layerwise_sensitivity"]

log = logging.getLogger(__name__)


def switchable_model(model, cal, placement):
    """``(model, {node: switch input name})``: ``model`` with every placed layer's Q/DQ behind a
    float scalar input (plugin tails are cut off: the body is measured)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from xtrt.model.split import find_plugin_nodes, split_model
    from xtrt.quant.export import export_qdq

    q = export_qdq(model, cal, placement)
    if find_plugin_nodes(q):
        q = split_model(q).body
    g = q.graph
    by_out = {o: n for n in g.node for o in n.output}
    switches: dict[str, str] = {}
    new_nodes = []
    extra_inputs = []
    placed = set(placement.quantize)
    for node in g.node:
        if node.name in placed:
            sw = f"xtrt_switch_{len(switches)}"
            switches[node.name] = sw
            extra_inputs.append(helper.make_tensor_value_info(sw, TensorProto.FLOAT, []))
            for i, t in enumerate(list(node.input)):
                dq = by_out.get(t)
                if dq is None or dq.op_type != "DequantizeLinear":
                    continue
                # the float value the Q/DQ pair (or the INT8 weight) replaces
                if dq.input[0] in {init.name for init in g.initializer}:   # weight: int8 init
                    base = t[:-len("_dequantized")] if t.endswith("_dequantized") else None
                    if base is None:
                        continue
                    fl = f"{base}_float"
                    w = cal.weights.get(base)
                    if w is None:
                        continue
                    g.initializer.append(numpy_helper.from_array(w.astype(np.float32), fl))
                else:                                                     # activation Q/DQ
                    qn = by_out.get(dq.input[0])
                    if qn is None or qn.op_type != "QuantizeLinear":
                        continue
                    fl = qn.input[0]
                diff, mixed = f"{t}_{sw}_diff", f"{t}_{sw}_mixed"
                new_nodes += [
                    helper.make_node("Sub", [t, fl], [f"{diff}"], name=f"{diff}_Sub"),
                    helper.make_node("Mul", [diff, sw], [f"{diff}_m"], name=f"{diff}_Mul"),
                    helper.make_node("Add", [fl, f"{diff}_m"], [mixed], name=f"{mixed}_Add"),
                ]
                node.input[i] = mixed
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(_toposort(new_nodes, {i.name for i in g.input} |
                            {i.name for i in g.initializer} | {e.name for e in extra_inputs}))
    g.input.extend(extra_inputs)
    del g.value_info[:]
    onnx.checker.check_model(q)
    return q, switches


def _toposort(nodes, available: set) -> list:
    avail = set(available)
    pending = list(nodes)
    out = []
    while pending:
        rest = []
        for n in pending:
            if all((not i) or i in avail for i in n.input):
                out.append(n)
                avail.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError("cycle while ordering the switchable model")
        pending = rest
    return out


def layerwise_sensitivity(model, cal, placement, batches: Sequence[dict[str, np.ndarray]], *,
                          device: str = "cpu", layers: Sequence[str] | None = None,
                          progress: str | None = None) -> dict[str, float]:
    """Noise/signal of the graph outputs with only that layer in INT8, per placed layer."""
    from xtrt.runtime.session import make_session

    sm, switches = switchable_model(model, cal, placement)
    sess = make_session(sm, device)
    names = [o.name for o in sess.get_outputs()]
    todo = [n for n in (layers or placement.quantize) if n in switches]
    off = {sw: np.zeros((), np.float32) for sw in switches.values()}
    refs = [sess.run(names, {**b, **off}) for b in batches]
    signal = sum(float(sum(np.sum(np.square(o.astype(np.float64))) for o in r)) for r in refs)
    it = todo
    if progress:
        from tqdm import tqdm
        it = tqdm(todo, desc=progress, unit="layer", leave=False)
    out: dict[str, float] = {}
    for layer in it:
        feeds_sw = dict(off)
        feeds_sw[switches[layer]] = np.ones((), np.float32)
        noise = 0.0
        for b, ref in zip(batches, refs):
            got = sess.run(names, {**b, **feeds_sw})
            noise += float(sum(np.sum(np.square(g.astype(np.float64) - r.astype(np.float64)))
                               for g, r in zip(got, ref)))
        out[layer] = noise / max(signal, 1e-30)
    return out

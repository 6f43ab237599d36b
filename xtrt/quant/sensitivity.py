"""Layer-wise sensitivity on ONNX Runtime: the output error with only one layer in INT8.

PPQ's ``layerwise_error_analyse`` re-runs its torch executor over the whole graph for every layer
and batch (38.7 s for YOLOv8n's 63 layers on 2 cores).  Here one ONNX Runtime session holds every
placed layer's Q/DQ behind a scalar switch input: ``x' = Where(m, DQ(Q(x)), x)`` for activations and
the same for weights.  All switches at 0 is the FP32 model; switch ``L`` alone is "only L in INT8".
One session, one forward per layer and batch, at ONNX Runtime's speed, on exactly the Q/DQ
semantics that are exported.  The measure is PPQ's: noise power / signal power of the graph outputs.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from xtrt.model.graph import toposort
from xtrt.quant.reuse import session_options
from xtrt.trt.rules import QMAX, weight_axis

__all__ = ["switchable_model", "layerwise_sensitivity", "FloatGain"]

log = logging.getLogger(__name__)


def switchable_model(model, cal, placement):
    """``(model, {node: switch input name})``: ``model`` with every placed layer's Q/DQ behind a
    float scalar input (plugin tails are cut off: the body is measured)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from xtrt.model.split import runnable_body
    from xtrt.quant.export import export_qdq

    q = runnable_body(export_qdq(model, cal, placement, only_placed=True))
    g = q.graph
    source = {n.name: n for n in model.graph.node}
    by_out = {o: n for n in g.node for o in n.output}
    switches: dict[str, str] = {}
    new_nodes = []
    extra_inputs = []
    placed = set(placement.quantize)
    cast_done: set[str] = set()
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
                    src = source.get(node.name)
                    if src is None or i >= len(src.input):
                        continue
                    base = src.input[i]                 # the float weight the export replaced
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
                # Where, not x + m * (DQ - x): the INT8 value exactly (a rounding of the sum
                # would move values across the next quantizer's steps when layers are chained)
                mixed, on = f"{t}_{sw}_mixed", f"{sw}_on"
                if on not in cast_done:
                    cast_done.add(on)
                    new_nodes.append(helper.make_node("Cast", [sw], [on], name=f"{on}_Cast",
                                                      to=TensorProto.BOOL))
                new_nodes.append(helper.make_node("Where", [on, t, fl], [mixed],
                                                  name=f"{mixed}_Where"))
                node.input[i] = mixed
        new_nodes.append(node)
    del g.node[:]
    g.node.extend(toposort(new_nodes, {i.name for i in g.input} |
                           {i.name for i in g.initializer} | {e.name for e in extra_inputs},
                           what="the switchable model"))
    g.input.extend(extra_inputs)
    del g.value_info[:]
    onnx.checker.check_model(q)
    return q, switches


def layerwise_sensitivity(model, cal, placement, batches: Sequence[dict[str, np.ndarray]], *,
                          device: str = "cpu", layers: Sequence[str] | None = None,
                          progress: str | None = None, segments: int = 8) -> dict[str, float]:
    """Noise/signal of the graph outputs with only that layer in INT8, per placed layer.

    Everything upstream of a layer is the same as in FP32, so it is computed once: one FP32 run
    caches the tensors that cross into each of ``segments`` suffixes of the graph (cut in front
    of equal shares of the layers), and each layer's run starts at its segment's cut, in a
    suffix model that carries Q/DQ switches for that segment's layers only.  The cached tensors
    and the FP32 outputs stay where the session left them (ONNX Runtime values on ``device``,
    bound, not copied back and forth), and each suffix reduces its own output noise in the graph
    (float64 sums of squared differences): a forward returns one scalar per output.
    """
    from xtrt.model.split import runnable_body
    from xtrt.quant.placement import Placement

    body = runnable_body(model)
    nodes = list(body.graph.node)
    index = {n.name: i for i, n in enumerate(nodes)}
    placed = set(placement.quantize)
    todo = sorted({n for n in (layers or placement.quantize) if n in index and n in placed},
                  key=index.__getitem__)
    if not todo:
        return {}
    k = max(1, min(int(segments), len(todo)))
    groups = [[str(x) for x in g] for g in np.array_split(np.array(todo, dtype=object), k) if len(g)]
    cuts = [index[g[0]] for g in groups]
    inits = {i.name for i in body.graph.initializer}
    out_names = [o.name for o in body.graph.output]
    crossing = [_crossing(nodes, p, inits) for p in cuts]
    cache, signal = _fp32_cache(body, crossing, batches, device)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc=progress, unit="layer", leave=False)
    out: dict[str, float] = {}
    for group, p, cross in zip(groups, cuts, crossing):
        suffix = _suffix_model(body, p, cross, cache[0], out_names)
        sub = Placement(quantize=list(group), keep_float=dict(placement.keep_float))
        sm, switches = switchable_model(suffix, cal, sub)
        run = _noise_runner(sm, out_names, switches, device)
        for layer in group:
            noise = sum(run(vals, layer, cross) for vals in cache)
            out[layer] = noise / max(signal, 1e-30)
            if bar is not None:
                bar.update(1)
        del run
    if bar is not None:
        bar.close()
    return out


def _ort_device(device: str) -> str:
    return "cuda" if device == "cuda" else "cpu"


def _fp32_cache(body, crossing, batches, device: str):
    """``(cache, signal)``: per batch, the FP32 values of every crossing tensor and graph output
    (ONNX Runtime values on the device; graph inputs placed there too) and the float64 signal
    power of the graph outputs over all batches (reduced in the graph)."""
    import onnxruntime as ort

    from xtrt.model.split import with_outputs
    from xtrt.quant.reduce import square_sums
    from xtrt.runtime.session import make_session

    inits = {i.name for i in body.graph.initializer}
    graph_inputs = [i.name for i in body.graph.input if i.name not in inits]
    out_names = [o.name for o in body.graph.output]
    wanted = list(dict.fromkeys(t for c in crossing for t in c if t not in graph_inputs))
    kept = list(dict.fromkeys(out_names + wanted))
    m = with_outputs(body, kept)
    sig = square_sums(m, [(o, None) for o in out_names], tag="xtrt_signal")
    sess = make_session(m, device, **session_options(device))
    dev = _ort_device(device)
    cache, signal = [], 0.0
    for b in batches:
        binding = sess.io_binding()
        for name in graph_inputs:
            binding.bind_cpu_input(name, np.ascontiguousarray(b[name]))
        for name in kept:
            binding.bind_output(name, dev)
        for name in sig:
            binding.bind_output(name, "cpu")
        sess.run_with_iobinding(binding)
        got = binding.get_outputs()
        vals = dict(zip(kept, got[:len(kept)]))
        signal += float(sum(float(v.numpy()) for v in got[len(kept):]))
        vals.update({n: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(b[n]), dev, 0)
                     for n in graph_inputs})
        cache.append(vals)
    return cache, signal


def _noise_runner(sm, out_names: Sequence[str], switches: dict[str, str], device: str):
    """``run(vals, layer, cross)``: the float64 output noise of the switchable suffix ``sm`` with
    only ``layer`` switched to INT8, from the cached values ``vals`` (crossing tensors and the
    FP32 outputs), reduced in the graph."""
    from xtrt.quant.reduce import square_sums
    from xtrt.runtime.session import make_session

    produced = [o.name for o in sm.graph.output]
    refs = {o: f"xtrt_ref_{out_names.index(o)}" for o in produced}
    for vi in list(sm.graph.output):             # each FP32 reference: an input of its type
        ref = sm.graph.input.add()
        ref.CopyFrom(vi)
        ref.name = refs[vi.name]
    del sm.graph.output[:]
    noise = square_sums(sm, [(o, refs[o]) for o in produced], tag="xtrt_noise")
    sess = make_session(sm, device, **session_options(device))
    on, off = np.ones((), np.float32), np.zeros((), np.float32)

    def run(vals, layer: str, cross) -> float:
        binding = sess.io_binding()
        for t in cross:
            binding.bind_ortvalue_input(t, vals[t])
        for o, r in refs.items():
            binding.bind_ortvalue_input(r, vals[o])
        for n, sw in switches.items():
            binding.bind_cpu_input(sw, on if n == layer else off)
        for name in noise:
            binding.bind_output(name, "cpu")
        sess.run_with_iobinding(binding)
        return float(sum(float(v.numpy()) for v in binding.get_outputs()))
    return run


def _crossing(nodes, p: int, inits: set) -> list[str]:
    """Tensors that nodes[p:] read but nodes[p:] do not produce (graph inputs included)."""
    produced = {o for n in nodes[p:] for o in n.output}
    return list(dict.fromkeys(t for n in nodes[p:] for t in n.input
                              if t and t not in inits and t not in produced))


def _suffix_model(body, p: int, cross: Sequence[str], sample: dict, out_names: Sequence[str]):
    """nodes[p:] of ``body`` as a model whose inputs are the crossing tensors (``sample``: their
    values, arrays or ONNX Runtime values, for the element types and ranks)."""
    import onnx
    from onnx import helper

    m = onnx.ModelProto()
    m.CopyFrom(body)
    g = m.graph
    kept = list(g.node)[p:]
    produced = {o for n in kept for o in n.output}
    used = {t for n in kept for t in n.input}
    del g.node[:]
    g.node.extend(kept)
    del g.input[:]
    for t in cross:
        v = sample[t]
        if hasattr(v, "element_type"):                   # an onnxruntime.OrtValue
            elem, ndim = v.element_type(), len(v.shape())
        else:
            arr = np.asarray(v)
            elem, ndim = helper.np_dtype_to_tensor_dtype(arr.dtype), arr.ndim
        dims = [f"{t}_d{i}" for i in range(ndim)]     # any batch: symbolic dims
        g.input.append(helper.make_tensor_value_info(t, elem, dims))
    outs = [o for o in g.output if o.name in produced]
    del g.output[:]
    g.output.extend(outs)
    keep_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    del g.value_info[:]
    return m


def layer_statistics(model, cal, placement, batches: Sequence[dict[str, np.ndarray]], *,
                     device: str = "cpu") -> dict[str, dict]:
    """Per placed layer, on ONNX Runtime over ``batches``: the cosine similarity and noise/signal
    of the layer's output in the exported all-INT8 model against FP32 (error accumulated through
    the graph, as deployed), the FP32 range of its activation input against the calibrated clip
    (127 x scale), and the range of its weights with the spread of the per-channel maxima.

    One session runs both models side by side and returns only scalars: the float64 sums and the
    ranges are reduced in the graph (:mod:`xtrt.quant.reduce`), not copied out and reduced in
    numpy.  The reductions also keep ONNX Runtime's level-1 Q/DQ rewrites off the measured tensors,
    so the INT8 side is the Q/DQ semantics as written (what optimization 'disable' computes)."""
    from onnx import numpy_helper

    from xtrt.model.split import runnable_body
    from xtrt.quant.export import export_qdq
    from xtrt.quant.reduce import min_max, pair_sums, paired_model
    from xtrt.runtime.session import make_session

    body = runnable_body(model)
    by_name = {n.name: n for n in body.graph.node}
    layers = [n for n in placement.quantize if n in by_name and by_name[n].output]
    inits = {i.name: i for i in body.graph.initializer}
    outs = list(dict.fromkeys(by_name[n].output[0] for n in layers))
    ins = list(dict.fromkeys(by_name[n].input[0] for n in layers if by_name[n].input[0] not in inits))
    # one session: the FP32 body and its all-INT8 export side by side, reduced in the graph
    q_pre = "xtrt_q/"
    both = paired_model(body, export_qdq(body, cal, placement), q_pre)
    sums = pair_sums(both, [(t, q_pre + t) for t in outs])
    ranges = min_max(both, ins)
    sess = make_session(both, device, **session_options(device))
    names = [n for group in sums for n in group] + [n for mm in ranges for n in mm]
    acc = {t: np.zeros(4) for t in outs}                       # dot, |fp|^2, |q|^2, |fp-q|^2
    rng = {t: [np.inf, -np.inf] for t in ins}
    for feeds in batches:
        got = dict(zip(names, sess.run(names, feeds)))
        for t, group in zip(outs, sums):
            acc[t] += [float(got[n]) for n in group]
        for t, (lo, hi) in zip(ins, ranges):
            rng[t][0] = min(rng[t][0], float(got[lo]))
            rng[t][1] = max(rng[t][1], float(got[hi]))
    del sess
    res: dict[str, dict] = {}
    for name in layers:
        node = by_name[name]
        dot, ff, qq, err = acc[node.output[0]]
        row = {"cosine": float(dot / np.sqrt(ff * qq)) if ff > 0 and qq > 0 else None,
               "noise_ratio_ort": float(err / ff) if ff > 0 else None}
        lo, hi = rng.get(node.input[0], (np.inf, -np.inf))
        if np.isfinite(lo):
            row["act_min"], row["act_max"] = lo, hi
        s = cal.act_scales.get((name, 0))
        if s is not None:
            row["act_clip"] = float(QMAX * s)
        if len(node.input) > 1 and node.input[1] in inits:
            w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
            row["weight_min"], row["weight_max"] = float(w.min()), float(w.max())
            axis = weight_axis(node, w.ndim, 1)
            if w.ndim >= 2 and axis is not None:
                amax = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1)
                med = float(np.median(amax))
                row["weight_channel_spread"] = float(amax.max() / med) if med > 0 else None
        res[name] = row
    return res


class FloatGain:
    """Output noise of the all-INT8 model with chosen layers back in float, on ONNX Runtime.

    One session over the whole body with every placed layer's Q/DQ behind a switch
    (:func:`switchable_model`): switch 1 = that layer in INT8, 0 = float.  The noise is the mean,
    over the graph outputs, of noise power / signal power against FP32 (all switches 0), summed
    over ``batches``: each output counts alike, so a detector's class scores weigh as much as its
    box coordinates (whose pixel-sized values would drown them in a summed ratio)."""

    def __init__(self, model, cal, placement, batches: Sequence[dict[str, np.ndarray]], *,
                 device: str = "cpu", optimization: str = "auto"):
        from xtrt.model.split import runnable_body
        from xtrt.runtime.session import make_session

        sm, self.switches = switchable_model(runnable_body(model), cal, placement)
        self.sess = make_session(sm, device, optimization=optimization,
                                 **session_options(device))
        self.out = [o.name for o in self.sess.get_outputs()]
        self.batches = list(batches)
        self.forwards = 0
        self.refs = [self._run(b, set(self.switches)) for b in self.batches]
        self.signal = [sum(float(np.sum(np.square(r[i]))) for r in self.refs)
                       for i in range(len(self.out))]

    def _run(self, feeds, floats) -> list[np.ndarray]:
        sw = {s: np.array(0.0 if n in floats else 1.0, np.float32)
              for n, s in self.switches.items()}
        self.forwards += 1
        return [o.astype(np.float64) for o in self.sess.run(self.out, {**feeds, **sw})]

    def noise(self, floats) -> float:
        """Mean output noise/signal with ``floats`` in float, every other placed layer INT8."""
        floats = set(floats)
        err = [0.0] * len(self.out)
        for b, ref in zip(self.batches, self.refs):
            for i, (g, r) in enumerate(zip(self._run(b, floats), ref)):
                err[i] += float(np.sum(np.square(g - r)))
        return float(np.mean([e / max(s, 1e-30) for e, s in zip(err, self.signal)]))

    def float_alone(self, layers: Sequence[str] | None = None) -> dict[str, float]:
        """Per layer: the output noise with only that layer in float (all others INT8)."""
        return {n: self.noise([n]) for n in (layers or list(self.switches))}

    def greedy_order(self, *, steps: int, candidates: int,
                     alone: dict[str, float] | None = None) -> tuple[list[str], list[float]]:
        """Forward selection: ``steps`` times, of the ``candidates`` layers that did best so far,
        the one whose move to float (with the layers already chosen) lowers the noise most joins
        the float set (re-ranked each step); the rest follow in float-alone order.  Returns the
        order and the noise after each chosen step."""
        score = dict(alone if alone is not None else self.float_alone())
        order: list[str] = []
        path: list[float] = []
        for _ in range(min(steps, len(score))):
            left = sorted((n for n in score if n not in order), key=score.__getitem__)
            for n in left[:max(1, candidates)]:
                score[n] = self.noise(order + [n])
            best = min(left[:max(1, candidates)], key=score.__getitem__)
            order.append(best)
            path.append(score[best])
        order += sorted((n for n in score if n not in order), key=score.__getitem__)
        return order, path

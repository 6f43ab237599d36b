"""xtrt's fast PPQ path (graph built once and copied, PPQ's scale rules vectorised, no cache
flushes) against PPQ's own path: the same configs, scales and simulation, bit for bit."""
import gc

import numpy as np
import pytest
import torch

from tests.models import make_models as mm
from xtrt.backend import ppq as B
from xtrt.backend.ppq import _graph, _scales
from xtrt.model.prepare import prepare_model
from xtrt.quant.observe import FAST_METHODS, collect_statistics

MODELS = ["se_block", "avgpool_conv", "residual_add", "concat_branches", "gemm_transb0",
          "matmul_const", "conv_transpose", "grouped_depthwise"]


def _batches(n=3, seed=0, shape=(2, 3, mm.HW, mm.HW)):
    rng = np.random.default_rng(seed)
    return [{"input": (rng.normal(size=shape) * rng.uniform(0.5, 3)).astype(np.float32)}
            for _ in range(n)]


def _prepared(name):
    return prepare_model(mm.MODELS[name](), [2, 3, mm.HW, mm.HW])


def _stats(pm, batches):
    from xtrt.quant.calibrate import placed_activations
    from xtrt.quant.placement import plan_placement

    placement = plan_placement(pm.model, plugin_tail=pm.tail_nodes)
    tensors = placed_activations(pm.model, placement)
    return collect_statistics(pm.body, tensors, lambda: iter(batches), FAST_METHODS)


def _configs(graph):
    """Every quantization config of the graph, in graph order, as comparable plain values."""
    out, index = [], {}
    ops = [op for op in graph.operations.values() if getattr(op, "config", None) is not None]
    for op in ops:
        for k, (qc, var) in enumerate(op.config_with_variable):
            index[id(qc)] = (op.name, k)
    for op in ops:
        for k, (qc, var) in enumerate(op.config_with_variable):
            out.append((op.name, k, var.name, op.platform.name, qc.state.name,
                        None if qc.scale is None else qc.scale.detach().cpu().numpy().tobytes(),
                        None if qc.offset is None else qc.offset.detach().cpu().numpy().tobytes(),
                        index.get(id(qc.dominated_by))))
    return out


def _calibrate(pm, batches, stats, method, **kw):
    st = stats[method]
    return B.calibrate(pm.model, batches[:1], method=method, progress=False,
                       act_ranges=st.get("ranges"), act_hists=st.get("hists"), **kw)


@pytest.mark.parametrize("name", MODELS)
def test_fast_path_equals_ppqs_own_path(name):
    """Every config (state, scale, offset, owner), every exported scale and PPQ's INT8 simulation
    are the same on the fast path as with PPQ's quantizer and per-tensor observers."""
    pm = _prepared(name)
    batches = _batches()
    stats = _stats(pm, batches)
    _graph.release()
    for method in FAST_METHODS:
        ref = _calibrate(pm, batches, stats, method, reference=True)
        fast = _calibrate(pm, batches, stats, method)
        assert _configs(fast.graph) == _configs(ref.graph), method
        assert fast.act_scales == ref.act_scales and fast.quantized_ops == ref.quantized_ops
        assert fast.weight_scales.keys() == ref.weight_scales.keys()
        for k, (s, axis) in ref.weight_scales.items():
            np.testing.assert_array_equal(fast.weight_scales[k][0], s)
            assert fast.weight_scales[k][1] == axis
        for a, b in zip(B.simulate(ref, batches[1]), B.simulate(fast, batches[1])):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["se_block", "gemm_transb1", "matmul_const", "conv_transpose"])
def test_weight_pass_gives_ppqs_parameter_scales_bit_for_bit(name):
    """Before xtrt's TensorRT weight rule: the vectorised pass and PPQ's ParameterQuantizePass
    (dummy forward, a Python minmax per channel) leave the same configs."""
    pm = _prepared(name)
    sample = torch.from_numpy(_batches(1)[0]["input"][:1])
    ref = _graph.build(pm.model, sample, device="cpu", fp32_ops=[], progress=False,
                       reference=True)
    _graph.release()
    fast = _graph.build(pm.model, sample, device="cpu", fp32_ops=[], progress=False)
    weights = [c for c in _configs(ref) if c[4] == "ACTIVATED"]
    assert weights, "the model has weight configs"
    assert _configs(fast) == _configs(ref)


def _random_hists(n, bins, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        kind = i % 4
        if kind == 0:     # half-normal |x|, as a ReLU-less activation
            x = np.abs(rng.normal(size=200_000)) ** rng.uniform(0.5, 2)
        elif kind == 1:   # heavy tail
            x = rng.pareto(rng.uniform(1.5, 4), size=200_000)
        elif kind == 2:   # mostly zeros (after ReLU) with a bump
            x = np.concatenate([np.zeros(150_000), rng.gamma(2, 1, size=50_000)])
        else:             # a few outliers far away
            x = np.concatenate([rng.exponential(size=200_000), rng.uniform(50, 100, size=20)])
        h, _ = np.histogram(x, bins=bins, range=(0, x.max()))
        out.append((h.astype(np.int64), float(x.max()) / bins))
    return out


@pytest.mark.parametrize("method,bins", [("kl", 4096), ("mse", 2048)])
def test_batched_histogram_search_picks_ppqs_scale(method, bins):
    """The batched kl / mse clip search returns exactly the scale of PPQ's observer, tensor by
    tensor (kl's near-ties go to PPQ's own function)."""
    pm = _prepared("se_block")
    cal = _calibrate(pm, _batches(), _stats(pm, _batches()), "minmax")
    var, qc, _ = next(_scales.activation_configs(cal.graph))
    items = [(h, w, qc, var) for h, w in _random_hists(24, bins)]
    want = _scales.ppq_hist_scales(method, items)
    got = _scales.hist_scales(method, items)
    assert [float(s) for s, _ in got] == [float(s) for s, _ in want]
    assert len({float(s) for s, _ in want}) > 8      # the histograms really differ


def test_graph_is_built_once_and_each_call_owns_its_copy(monkeypatch):
    pm = _prepared("se_block")
    batches = _batches()
    stats = _stats(pm, batches)
    _graph.release()
    parses = []
    load = _graph._load_graph
    monkeypatch.setattr(_graph, "_load_graph", lambda *a, **k: parses.append(1) or load(*a, **k))
    first = _calibrate(pm, batches, stats, "percentile")
    second = _calibrate(pm, batches, stats, "percentile")
    assert len(parses) == 1
    assert _configs(first.graph) == _configs(second.graph)
    # the copies share nothing: a scale set on one leaves the other (and the kept graph) as it was
    var, qc, _ = next(_scales.activation_configs(first.graph))
    var2, qc2, _ = next(_scales.activation_configs(second.graph))
    assert qc is not qc2 and qc != qc2 and var is not var2
    qc.dominated_by.scale = qc.dominated_by.scale * 2
    assert float(qc2.dominated_by.scale) * 2 == float(qc.dominated_by.scale)
    w1 = [v for v in first.graph.variables.values() if v.is_parameter][0]
    w2 = second.graph.variables[w1.name]
    assert w1.value is not w2.value and torch.equal(w1.value, w2.value)
    third = _calibrate(pm, batches, stats, "percentile")
    assert _configs(third.graph) == _configs(second.graph)
    # a changed model is a new graph
    pm.model.graph.initializer[0].raw_data = np.zeros(
        len(pm.model.graph.initializer[0].raw_data) // 4, np.float32).tobytes()
    _calibrate(pm, batches, stats, "percentile")
    assert len(parses) == 2


def test_ppq_cache_flushes_are_skipped(monkeypatch):
    """PPQ's @empty_ppq_cache collects garbage before every decorated call; the fast path does
    not (PPQ's own path does, which the count shows)."""
    pm = _prepared("se_block")
    batches = _batches()
    stats = _stats(pm, batches)
    calls = []
    real = gc.collect
    monkeypatch.setattr(gc, "collect", lambda *a: calls.append(1) or real(*a))
    _graph.release()
    _calibrate(pm, batches, stats, "minmax")
    assert calls == []
    _calibrate(pm, batches, stats, "minmax", reference=True)
    assert len(calls) >= 2

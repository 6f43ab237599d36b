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


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """PPQ's per-tensor kl search in the reference runs op by op: one thread (see kl_best_bins)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


# xtrt's scale rule before the fast path (xtrt/backend/ppq.py at 43bfee2), verbatim: PPQ's
# observers one tensor at a time
def _apply_stats(graph, method: str, ranges: dict, hists: dict, reapply: bool = False) -> None:
    """Activate every activation quant config from statistics collected on ONNX Runtime, with
    PPQ's own rules: ``minmax_to_scale_offset`` for ranges, the kl / mse observer's
    ``hist_to_scale_offset`` for histograms.

    The scale is set on the dominant config (``dominated_by``), once, from the statistics of the
    tensor its consumers read; overlapped configs then share it, as PPQ intends."""
    import torch
    from ppq.core import QuantizationStates
    from ppq.quantization.observer.range import (TorchHistObserver, TorchMSEObserver,
                                                 minmax_to_scale_offset)

    observer_cls = {"kl": TorchHistObserver, "mse": TorchMSEObserver}.get(method)
    missing: list[str] = []
    done: set[int] = set()
    for var, qc, op in _scales.activation_configs(graph):
        root = qc.dominated_by
        if id(root) in done:
            continue
        if root.state != QuantizationStates.INITIAL and not (
                reapply and root.state == QuantizationStates.ACTIVATED):
            continue
        if observer_cls is not None and var.name in hists:
            hist, width = hists[var.name]
            obs = observer_cls(watch_on=var, quant_cfg=root)
            scale, offset = obs.hist_to_scale_offset(
                histogram=torch.from_numpy(hist.astype(np.int64)), hist_bins=len(hist),
                hist_scale=float(width), config=root)
        elif var.name in ranges:
            lo, hi = ranges[var.name]
            scale, offset = minmax_to_scale_offset(float(lo), float(hi), root)
        else:
            missing.append(f"{op.name} ({op.type}) input {var.name!r}")
            continue
        root.scale = torch.tensor(scale, dtype=torch.float32)
        root.offset = torch.tensor(offset, dtype=torch.float32)
        root.state = QuantizationStates.ACTIVATED
        done.add(id(root))
    if missing:
        raise AssertionError(
            f"no calibration statistics for {len(missing)} quantized input(s), e.g. node "
            f"{missing[0]}: ONNX Runtime did not report that tensor",
            "report the model to xtrt; meanwhile exclude the node with "
            f"quantization.exclude_nodes: [{missing[0].split(' ')[0]}]")



def _old_graph(pm, batches):
    """PPQ's graph as xtrt built it at 43bfee2: PPQ's own quantizer (its ParameterQuantizePass,
    its cache flushes); no activation scale yet (the same for every method)."""
    sample = torch.from_numpy(batches[0]["input"][:1])
    return _graph.build(pm.model, sample, device="cpu", fp32_ops=[], progress=False,
                        reference=True)


def _old_path(graph, stats, method):
    """The rest of the calibration of xtrt at 43bfee2 on a copy of ``graph``: the old per-tensor
    scale rules, xtrt's weight rule."""
    from xtrt.backend.ppq._result import CalibrationResult

    st = stats[method]
    graph = _graph._fresh_copy(graph)
    _apply_stats(graph, method, st.get("ranges") or {}, st.get("hists") or {})
    B._weight_scales(graph)
    res = CalibrationResult(graph=graph)
    B._collect_scales(res)
    return res


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
    old = _old_graph(pm, batches)
    for method in [m for m in FAST_METHODS if m != "entropy"]:   # PPQ's own methods
        ref = _old_path(old, stats, method)
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


def _entropy_clip_plainly(hist, start=128, levels=128):
    """TensorRT's entropy calibration written out one candidate at a time (the loop of NVIDIA's
    pytorch-quantization ``_compute_amax_entropy``), numpy per candidate."""
    b = hist.astype(np.float64).copy()
    b[0] = b[1]
    kls = []
    for i in range(start, len(b) + 1):
        d = np.digitize(np.arange(i), np.linspace(0, i, levels + 1)) - 1
        nz = b[:i] > 0
        s = np.bincount(d[nz], weights=b[:i][nz], minlength=levels)
        c = np.bincount(d[nz], minlength=levels)
        q = np.where(nz, s[d] / np.maximum(c[d], 1), 0.0)
        p = b[:i].copy()
        p[-1] += b[i:].sum()
        if q.sum() == 0:            # nothing below the clip: no distribution to compare
            kls.append(np.inf)
            continue
        p, q = p / p.sum(), q / q.sum()
        m = p > 0
        kls.append(np.inf if np.any(q[m] == 0) else float(np.sum(p[m] * np.log(p[m] / q[m]))))
    kls = np.asarray(kls)
    return start + len(kls) - 1 - int(np.argmin(kls[::-1]))


def test_entropy_search_is_tensorrts_algorithm():
    """The vectorised entropy search picks the clip bin of the algorithm written out plainly, on
    every kind of histogram (and they do not all pick the same bin)."""
    hists = [h for h, _ in _random_hists(8, 2048, seed=3)]
    hists.append(np.r_[np.zeros(300, np.int64), np.arange(1748) % 7])   # empty first bins
    got = _scales.entropy_best_bins(np.stack(hists))
    want = [_entropy_clip_plainly(h) for h in hists]
    assert got.tolist() == want
    assert len(set(want)) > 4


def test_entropy_scales_are_the_clip_over_127():
    """calibration.method: entropy sets each activation scale to the searched clip / 127 (PPQ's
    symmetric rule), below the minmax scale where the tail is long."""
    pm = _prepared("se_block")
    stats = _stats(pm, _batches())
    cal = _calibrate(pm, _batches(), stats, "entropy")
    mm = _calibrate(pm, _batches(), stats, "minmax")
    hists = stats["entropy"]["hists"]
    for var, qc, _ in _scales.activation_configs(cal.graph):
        if var.name not in hists or qc.dominated_by is not qc:
            continue
        h, width = hists[var.name]
        clip = int(_scales.entropy_best_bins(np.asarray(h)[None])[0]) * width
        assert float(qc.scale) == pytest.approx(clip / 127.5, rel=1e-6) or \
            float(qc.scale) == pytest.approx(clip / 127, rel=1e-6)
    assert cal.act_scales != mm.act_scales


def test_mse_losses_are_ppqs_floats():
    """Every candidate's loss is the float PPQ's compute_mse_loss returns (same terms, same
    summation order), so ties break the same way."""
    from ppq.quantization.observer.range import TorchMSEObserver

    pm = _prepared("se_block")
    cal = _calibrate(pm, _batches(), _stats(pm, _batches()), "minmax")
    var, qc, _ = next(_scales.activation_configs(cal.graph))
    obs = TorchMSEObserver(watch_on=var, quant_cfg=qc)
    hists = _random_hists(4, 2048, seed=1)
    losses, ends = _scales.mse_losses(np.stack([h for h, _ in hists]))
    steps = [2048 // 256 + 1] + list(range(1, 2048 // 256 + 1))
    for i, (h, _) in enumerate(hists):
        want = [obs.compute_mse_loss(histogram=h.tolist(), start=0, step=s, end=256 * s)
                for s in steps]
        assert losses[i].tolist() == want
    assert ends == [256 * s for s in steps]


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


def test_keep_graph_off_keeps_nothing():
    """A run's single calibration (``xtrt.quant`` without keep_session) neither keeps the graph
    nor copies it, and gives the same scales."""
    pm = _prepared("se_block")
    batches = _batches()
    stats = _stats(pm, batches)
    _graph.release()
    once = _calibrate(pm, batches, stats, "kl", keep_graph=False)
    assert not _graph._CACHE
    kept = _calibrate(pm, batches, stats, "kl")
    assert len(_graph._CACHE) == 1 and "graph_copy_s" in kept.timings
    assert "graph_copy_s" not in once.timings
    assert _configs(once.graph) == _configs(kept.graph)

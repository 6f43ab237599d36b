"""Calibration statistics on ONNX Runtime: PPQ's definitions, and the same scales PPQ computes."""
import numpy as np
import onnx
import pytest
import torch

from tests.conftest import make_classifier
from xtrt.quant.observe import batch_range, collect_histograms, collect_ranges


def test_percentile_range_matches_torch_kthvalue_as_ppq_uses_it():
    x = np.random.default_rng(0).normal(size=(3, 5, 7, 11)).astype(np.float32)
    n = x.size
    t = torch.from_numpy(x).flatten()
    lo_k = max(0, int(n * (1 - 0.9999))) + 1
    hi_k = min(int(n * 0.9999), n - 1) + 1
    want = (torch.kthvalue(t, lo_k)[0].item(), torch.kthvalue(t, hi_k)[0].item())
    assert batch_range(x, "percentile") == pytest.approx(want)
    assert batch_range(x, "minmax") == (float(x.min()), float(x.max()))


def _batches(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [{"input": rng.random((2, 3, 32, 32), dtype=np.float32)} for _ in range(n)]


def test_ranges_over_batches(tmp_path):
    model = onnx.load(make_classifier(tmp_path / "m.onnx"))
    batches = _batches()
    r = collect_ranges(model, ["input", "r1"], batches, method="minmax")
    xs = np.concatenate([b["input"] for b in batches])
    assert r["input"] == pytest.approx((xs.min(), xs.max()))
    p = collect_ranges(model, ["input"], batches, method="percentile")
    want = np.mean([batch_range(b["input"], "percentile") for b in batches], axis=0)
    assert p["input"] == pytest.approx(tuple(want))


def test_histograms_cover_abs_values(tmp_path):
    model = onnx.load(make_classifier(tmp_path / "m.onnx"))
    batches = _batches()
    h = collect_histograms(model, ["c1"], batches, method="mse")
    hist, width = h["c1"]
    assert hist.shape == (2048,) and hist.sum() == 3 * 2 * 8 * 32 * 32
    assert hist[-1] >= 1  # the largest |x| lands in the last bin


def test_first_layer_scale_matches_ppqs_own_calibration(tmp_path):
    """On the graph input PPQ and ORT see the same numbers, so the scales must agree."""
    import xtrt.backend.ppq as ppq_backend
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model

    pm = prepare_model(load_model(make_classifier(tmp_path / "m.onnx")), [2, 3, 32, 32])
    batches = _batches(8)
    for method in ("percentile", "minmax"):
        ref = ppq_backend.calibrate(pm.model, batches, method=method)
        ranges = collect_ranges(pm.body, ["input"], batches, method=method)
        ours = ppq_backend.calibrate(pm.model, batches, method=method,
                                     act_ranges={**{t: (0.0, 1.0) for t in ("r1", "flat", "r2")},
                                                 **ranges})
        assert ours.act_scales[("conv1", 0)] == pytest.approx(ref.act_scales[("conv1", 0)], rel=1e-5)
    for method in ("mse", "kl"):
        ref = ppq_backend.calibrate(pm.model, batches, method=method)
        hists = collect_histograms(pm.body, ["input", "r1", "r2", "flat"], batches, method=method)
        ours = ppq_backend.calibrate(pm.model, batches, method=method, act_hists=hists)
        assert ours.act_scales[("conv1", 0)] == pytest.approx(ref.act_scales[("conv1", 0)], rel=1e-3)


def test_unknown_tensor_is_an_error(tmp_path):
    model = onnx.load(make_classifier(tmp_path / "m.onnx"))
    with pytest.raises(ValueError, match="tensors not in the graph"):
        collect_ranges(model, ["nope"], _batches(1))


def test_weight_scales_are_max_over_127_per_output_channel(tmp_path):
    """TensorRT's rule: the largest weight of each channel maps to 127 exactly (PPQ's own rule,
    max/127.5, clips it to 127 and loses half a step on it)."""
    import xtrt.backend.ppq as ppq_backend
    from onnx import numpy_helper
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model

    pm = prepare_model(load_model(make_classifier(tmp_path / "m.onnx")), [2, 3, 32, 32])
    cal = ppq_backend.calibrate(pm.model, _batches(8), method="minmax")
    w = {i.name: numpy_helper.to_array(i) for i in pm.model.graph.initializer}["w1"]
    scale, axis = cal.weight_scales[("conv1", 1)]
    assert axis == 0
    np.testing.assert_allclose(scale, np.abs(w).max(axis=(1, 2, 3)) / 127, rtol=1e-6)
    np.testing.assert_allclose(cal.weights["w1"], w)  # float weights kept, not baked


def _torch_vs_numpy(runner_np, runner_t, batches):
    for feeds in batches:
        for a, b in zip(runner_np.run(feeds), runner_t.run(feeds)):
            b_np = b.cpu().numpy()
            np.testing.assert_array_equal(a, b_np)
            for m in ("percentile", "minmax"):
                assert runner_t.batch_range(b, m) == pytest.approx(runner_np.batch_range(a, m))
            top = runner_np.abs_max(a)
            assert runner_t.abs_max(b) == pytest.approx(top)
            h_np = runner_np.abs_hist(a, 2048, top)
            h_t = runner_t.abs_hist(b, 2048, top)
            assert h_t.dtype == np.int64 and h_t.sum() == h_np.sum() == a.size
            # bin edges may round differently for a value sitting on an edge: never more than a few
            assert np.abs(h_t - h_np).sum() <= 4


def test_torch_reductions_match_numpy(tmp_path):
    """The reductions CUDA uses (torch) agree with the numpy ones, checked here on CPU tensors."""
    from xtrt.quant.observe import _StatsRunner

    model = onnx.load(make_classifier(tmp_path / "m.onnx"))
    tensors = ["input", "c1", "r1"]
    _torch_vs_numpy(_StatsRunner(model, tensors, "cpu"),
                    _StatsRunner(model, tensors, "cpu", torch_reduce=True), _batches(2))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_statistics_match_cpu(tmp_path):
    from xtrt.runtime.session import cuda_ep_available

    if not cuda_ep_available():
        pytest.skip("needs onnxruntime-gpu")
    model = onnx.load(make_classifier(tmp_path / "m.onnx"))
    batches = _batches(3)
    tensors = ["input", "c1", "r1"]
    for m in ("percentile", "minmax"):
        got = collect_ranges(model, tensors, batches, method=m, device="cuda")
        want = collect_ranges(model, tensors, batches, method=m)
        for t in tensors:     # cuDNN (TF32) differs from MLAS: compare against the range's size
            span = max(abs(v) for v in want[t])
            assert got[t] == pytest.approx(want[t], abs=2e-3 * span)
    got = collect_histograms(model, tensors, batches, method="mse", device="cuda")
    want = collect_histograms(model, tensors, batches, method="mse")
    for t in tensors:
        assert got[t][0].sum() == want[t][0].sum()
        assert got[t][1] == pytest.approx(want[t][1], rel=1e-3)


def test_one_streamed_pass_gives_every_methods_statistics(tmp_path):
    """collect_statistics (two passes for all four methods) equals the one-method collectors."""
    from xtrt.quant.observe import collect_statistics

    model = onnx.load(make_classifier(tmp_path / "m.onnx"))
    batches = _batches(4)
    passes = []

    def feeds():
        passes.append(1)
        return iter(batches)

    tensors = ["input", "r1"]
    st = collect_statistics(model, tensors, feeds, ["percentile", "minmax", "kl", "mse"])
    assert len(passes) == 2                      # not one (or two) per method
    for m in ("percentile", "minmax"):
        want = collect_ranges(model, tensors, batches, method=m)
        for t in tensors:
            assert st[m]["ranges"][t] == pytest.approx(want[t])
    for m in ("kl", "mse"):
        want = collect_histograms(model, tensors, batches, method=m)
        for t in tensors:
            h, w = st[m]["hists"][t]
            assert w == pytest.approx(want[t][1])
            assert np.abs(h - want[t][0]).sum() <= 2      # bin edges shared: at most rounding
            assert h.sum() == want[t][0].sum()
    assert collect_statistics(model, tensors, feeds, ["minmax"]).keys() == {"minmax"}
    assert len(passes) == 3                      # minmax alone: one pass


def test_output_buffers_are_made_once_per_input_shape():
    """A short last batch gets its own buffers beside the full-batch ones: the next pass (full
    batch first) neither learns the shapes again nor reallocates."""
    from xtrt.quant.observe import OutputBuffers

    learned = []

    def specs(feeds):
        learned.append(feeds["x"].shape)
        return [(feeds["x"].shape, np.dtype(np.float32))]

    bufs = OutputBuffers(specs, lambda sp: [np.empty(s, d) for s, d in sp])
    full, short = {"x": np.zeros((4, 3))}, {"x": np.zeros((1, 3))}
    first = bufs.get(full)
    for _ in range(2):                                   # two passes of [full, full, short]
        for f in (full, full, short):
            got = bufs.get(f)
            assert got[0].shape == f["x"].shape
    assert bufs.get(full) is first                       # the same buffers, not new ones
    assert learned == [(4, 3), (1, 3)] and bufs.made == 2
    bufs.get({"x": np.zeros((2, 3))})                    # a third shape drops the oldest set
    assert bufs.made == 3 and bufs.get(short)[0].shape == (1, 3) and bufs.made == 3
    bufs.get(full)
    assert bufs.made == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_runner_short_last_batch_matches_cpu(tmp_path):
    """On CUDA the outputs land in device buffers made once (shapes from shape inference, a short
    batch padded into the full batch's buffers); full, short, full batches give the CPU
    session's values."""
    from xtrt.quant.observe import _StatsRunner
    from xtrt.runtime.session import cuda_ep_available

    if not cuda_ep_available():
        pytest.skip("needs onnxruntime-gpu")
    model = onnx.load(make_classifier(tmp_path / "m.onnx"))
    tensors = ["input", "c1", "r1"]
    gpu, cpu = _StatsRunner(model, tensors, "cuda"), _StatsRunner(model, tensors, "cpu")
    rng = np.random.default_rng(1)
    shapes = [(2, 3, 32, 32), (1, 3, 32, 32), (2, 3, 32, 32), (1, 3, 32, 32)]
    bad = []
    for i, shape in enumerate(shapes):
        feeds = {"input": rng.random(shape, dtype=np.float32)}
        want = cpu.run(feeds)
        got = gpu.run(feeds)
        for name, w, g in zip(tensors, want, got):
            assert tuple(g.shape) == w.shape and g.is_cuda
            if not np.allclose(g.cpu().numpy(), w, atol=2e-3 * max(1.0, float(np.abs(w).max()))):
                bad.append((i, name))
    assert not bad, f"(batch, tensor) differing from the CPU session: {bad}"
    assert gpu._buffers.made == 1 and gpu.padded == 2


def _torch_runner(monkeypatch, **kw):
    """Make collect_* build their runner with torch reductions on CPU (the CUDA code path)."""
    import xtrt.quant.observe as observe

    real = observe._StatsRunner

    class TorchRunner(real):
        def __init__(self, model, tensors, device, **_):
            super().__init__(model, tensors, device, torch_reduce=True, **kw)
    monkeypatch.setattr(observe, "_StatsRunner", TorchRunner)


def test_device_side_accumulators_match_numpy(tmp_path, monkeypatch):
    """The torch accumulators (per-batch figures kept on the device, one transfer a pass) give
    the numpy path's statistics, histograms counted in chunks included."""
    import xtrt.quant.observe as observe
    from xtrt.quant.observe import collect_statistics

    model = onnx.load(make_classifier(tmp_path / "m.onnx"))
    batches = _batches(3)
    tensors = ["input", "c1", "r1"]
    methods = ["percentile", "minmax", "kl", "mse"]
    want = collect_statistics(model, tensors, lambda: iter(batches), methods)
    _torch_runner(monkeypatch)
    monkeypatch.setattr(observe, "HIST_CHUNK", 1000)        # several chunks per tensor
    got = collect_statistics(model, tensors, lambda: iter(batches), methods)
    for m in ("percentile", "minmax"):
        for t in tensors:
            assert got[m]["ranges"][t] == pytest.approx(want[m]["ranges"][t], rel=1e-6)
    for m in ("kl", "mse"):
        for t in tensors:
            (hg, wg), (hw, ww) = got[m]["hists"][t], want[m]["hists"][t]
            assert wg == pytest.approx(ww) and hg.dtype == np.int64
            assert hg.sum() == hw.sum() and np.abs(hg - hw).sum() <= 4   # edge rounding only


def test_short_last_batch_is_padded_and_sliced(tmp_path):
    """A short last batch runs padded to the full batch (same buffers, same cuDNN plans on CUDA)
    and its statistics are those of its real samples only."""
    from xtrt.quant.observe import _StatsRunner

    model = onnx.load(make_classifier(tmp_path / "m.onnx"))
    tensors = ["input", "c1", "r1"]
    rng = np.random.default_rng(3)
    full = {"input": rng.random((4, 3, 32, 32), dtype=np.float32)}
    short = {"input": rng.random((1, 3, 32, 32), dtype=np.float32) * 5}
    padded = _StatsRunner(model, tensors, "cpu", pad=True)
    plain = _StatsRunner(model, tensors, "cpu")
    for feeds in (full, short, full):
        got, want = padded.run(feeds), plain.run(feeds)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    assert padded.padded == 1 and plain.padded == 0


def test_buffer_shapes_come_from_shape_inference(tmp_path):
    """The CUDA buffers' shapes come from ONNX shape inference (ORT never allocates every
    activation itself); a dimension it cannot tell falls back to asking ORT (None)."""
    from xtrt.quant.buffers import inferred_specs as _inferred_specs

    model = onnx.load(make_classifier(tmp_path / "m.onnx"))
    feeds = {"input": np.zeros((5, 3, 32, 32), np.float32)}
    names = ["input", "c1", "r1", "flat"]
    sess = __import__("onnxruntime").InferenceSession(
        __import__("xtrt.model.split", fromlist=["with_outputs"]).with_outputs(model, names)
        .SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(names, feeds)
    specs = _inferred_specs(model, names, feeds)
    assert specs == [(o.shape, o.dtype) for o in outs]
    odd = onnx.ModelProto()
    odd.CopyFrom(model)
    odd.graph.input[0].type.tensor_type.shape.dim.pop()     # rank no longer matches the feeds
    assert _inferred_specs(odd, names, feeds) is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_statistics_of_every_method_match_cpu(tmp_path):
    """collect_statistics on CUDA (device-side accumulators, a padded short last batch, the kept
    session on the second call) gives the CPU figures of all four methods."""
    import xtrt.quant.observe as observe
    from xtrt.runtime.session import cuda_ep_available

    if not cuda_ep_available():
        pytest.skip("needs onnxruntime-gpu")
    model = onnx.load(make_classifier(tmp_path / "m.onnx"))
    rng = np.random.default_rng(2)
    batches = [{"input": rng.random((b, 3, 32, 32), dtype=np.float32)} for b in (4, 4, 3)]
    tensors = ["input", "c1", "r1"]
    methods = ["percentile", "minmax", "kl", "mse"]
    want = observe.collect_statistics(model, tensors, lambda: iter(batches), methods)
    observe.release_sessions()              # an earlier test's runner (same model) is kept
    for _ in range(2):
        got = observe.collect_statistics(model, tensors, lambda: iter(batches), methods,
                                         device="cuda")
        for m in ("percentile", "minmax"):
            for t in tensors:
                span = max(abs(v) for v in want[m]["ranges"][t])
                assert got[m]["ranges"][t] == pytest.approx(want[m]["ranges"][t], abs=2e-3 * span)
        for m in ("kl", "mse"):
            for t in tensors:
                assert got[m]["hists"][t][0].sum() == want[m]["hists"][t][0].sum()
                assert got[m]["hists"][t][1] == pytest.approx(want[m]["hists"][t][1], rel=1e-3)
    runner = next(iter(observe._RUNNERS.values()))
    assert runner.padded == 4 and runner._buffers.made == 1     # 2 calls x 2 passes
    observe.release_sessions()
    assert not observe._RUNNERS


def test_cuda_runner_is_kept_for_the_same_model_and_tensors(tmp_path, monkeypatch):
    """The CUDA statistics runner (session, cuDNN plans, buffers) is reused when the same model
    and tensors come again, replaced for others, and dropped by release_sessions."""
    import xtrt.quant.observe as observe

    made = []

    class Fake:
        def __init__(self, model, tensors, device, **_):
            made.append(tuple(tensors))
    monkeypatch.setattr(observe, "_StatsRunner", Fake)
    model = onnx.load(make_classifier(tmp_path / "m.onnx"))
    a = observe._runner(model, ["input", "c1"], "cuda")
    assert observe._runner(model, ["input", "c1"], "cuda") is a
    assert observe._runner(model, ["c1"], "cuda") is not a
    observe.release_sessions()
    observe._runner(model, ["c1"], "cuda")
    observe._runner(model, ["c1"], "cpu")                   # CPU runners are not kept
    observe._runner(model, ["c1"], "cpu")
    assert made == [("input", "c1"), ("c1",), ("c1",), ("c1",), ("c1",)]
    observe.release_sessions()

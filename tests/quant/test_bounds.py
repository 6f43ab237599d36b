"""Magnitude bounds (xtrt.quant.bounds): sound on measured values, and skipping the tensors they
clear leaves the FP16 keep-list as the full measurement gives it."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.lint import tiny_models as tm
from xtrt.quant import precision
from xtrt.quant.bounds import magnitude_bounds, provably_below
from xtrt.quant.fp16 import FP16_SAFE


def _feeds(m, seed=0, scale=50.0):
    inp = m.graph.input[0]
    dims = [d.dim_value or 2 for d in inp.type.tensor_type.shape.dim]
    rng = np.random.default_rng(seed)
    return [{inp.name: (rng.standard_normal(dims) * scale).astype(np.float32)} for _ in range(2)]


@pytest.mark.parametrize("make", [tm.qdq_conv_then_float_conv, tm.qdq_gemm,
                                  tm.qdq_conv_then_big_tail])
def test_every_measured_magnitude_is_within_its_bound(make):
    m = make()
    bound = magnitude_bounds(m)
    amax = precision.activation_amax(m, _feeds(m))          # far beyond the Q range: clipped
    finite = [k for k in amax if np.isfinite(bound.get(k, np.inf))]
    assert len(finite) >= len(amax) - 1                     # all but what reads the raw input
    for k in finite:
        assert amax[k] <= bound[k] * (1 + 1e-5), (k, amax[k], bound[k])


def test_skipping_the_bounded_tensors_keeps_the_fp16_keep_list(monkeypatch):
    m = tm.qdq_conv_then_big_tail()
    below = provably_below(m, FP16_SAFE)
    assert "c2" in below and "y" not in below               # 1e5 x the conv: may overflow
    batches = _feeds(m, scale=2.0)
    _, fast = precision.apply_float_precision(m, "fp16", batches)
    monkeypatch.setattr("xtrt.quant.bounds.provably_below", lambda model, safe, *a: set())
    _, full = precision.apply_float_precision(m, "fp16", batches)
    assert fast["kept_fp32"] == full["kept_fp32"] and list(full["kept_fp32"]) == ["scale_up"]


def test_unknown_ops_and_graph_inputs_have_no_bound():
    m = tm.qdq_conv_then_float_conv()
    g = m.graph
    g.node[-1].output[0] = "c2"
    g.node.append(helper.make_node("Exp", ["c2"], ["y"], name="exp"))
    bound = magnitude_bounds(m)
    assert bound.get("x", np.inf) == np.inf and bound["y"] == np.inf
    assert np.isfinite(bound["c2"])


def _softmax_conv(w: np.ndarray, pads=(0, 0, 0, 0), axis: int = 1):
    from onnx import TensorProto, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, w.shape[1], 5, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    g = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["p"], name="softmax", axis=axis),
         helper.make_node("Conv", ["p", "w"], ["y"], name="conv", pads=list(pads))],
        "softmax_conv", [x], [y], [numpy_helper.from_array(w.astype(np.float32), "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_conv_of_a_channel_softmax_is_bounded_by_its_largest_weight():
    """YOLOv8's DFL (Softmax over 16 bins, then a 1x1 conv with weights 0..15): at most 15, where
    sum |w| gives 120; with a 3x3 kernel and padding the bound (sum over kernel positions of
    max |w| over channels) still holds on measured values.  Over another axis: no such rule."""
    from xtrt.runtime.session import make_session

    dfl = np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1)
    assert magnitude_bounds(_softmax_conv(dfl))["y"] == pytest.approx(15.0)
    assert magnitude_bounds(_softmax_conv(dfl, axis=2))["y"] == pytest.approx(120.0)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 8, 3, 3)).astype(np.float32)
    m = _softmax_conv(w, pads=(1, 1, 1, 1))
    bound = magnitude_bounds(m)["y"]
    assert bound < np.abs(w).reshape(3, -1).sum(axis=1).max()
    sess = make_session(m)
    for scale in (0.1, 5.0, 100.0):        # flat to one-hot probabilities
        x = (rng.standard_normal((2, 8, 5, 6)) * scale).astype(np.float32)
        assert np.abs(sess.run(None, {"x": x})[0]).max() <= bound * (1 + 1e-5)


def _float_conv_on_input():
    from onnx import TensorProto, numpy_helper

    w = np.random.default_rng(3).standard_normal((4, 3, 1, 1)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["h"], name="conv"),
         helper.make_node("Relu", ["h"], ["y"], name="relu")], "float_conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_the_fed_inputs_bound_what_reads_them(monkeypatch):
    """The largest |x| of the batches measured bounds the graph input, so a float layer reading
    it is bounded too: on small inputs no tensor is left to measure and no session is built; on
    inputs beyond the safe range the measurement runs and gives the full figures."""
    import xtrt.runtime.session as session_mod

    m = _float_conv_on_input()
    assert not {"h", "y"} & provably_below(m, FP16_SAFE)
    small, huge = _feeds(m, scale=2.0), _feeds(m, scale=1e5)
    amax_in = max(float(np.abs(b["x"]).max()) for b in small)
    assert {"h", "y"} <= provably_below(m, FP16_SAFE, {"x": amax_in})
    built = []
    real = session_mod.make_session
    monkeypatch.setattr(session_mod, "make_session",
                        lambda *a, **k: built.append(1) or real(*a, **k))
    assert precision.activation_amax(m, small, skip_below=FP16_SAFE) == {}
    assert not built
    got = precision.activation_amax(m, huge, skip_below=FP16_SAFE)
    full = precision.activation_amax(m, huge)
    assert built and got == full and max(full.values()) > FP16_SAFE

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
    monkeypatch.setattr("xtrt.quant.bounds.provably_below", lambda model, safe: set())
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

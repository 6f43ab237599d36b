"""xtrt.trt.rules: weight input/axis per op, the weight-scale rule, commuting ops."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from xtrt.trt import rules


@pytest.mark.parametrize("op,attrs,rank,index,axis", [
    ("Conv", {}, 4, 1, 0),
    ("ConvTranspose", {}, 4, 1, 1),
    ("Gemm", {"transB": 1}, 2, 1, 0),
    ("Gemm", {"transB": 0}, 2, 1, 1),
    ("Gemm", {}, 2, 1, 1),
    ("MatMul", {}, 2, 1, 1),      # x[M,K] @ W[K,N]: N
    ("MatMul", {}, 3, 1, 2),
    ("MatMul", {}, 2, 0, 0),      # W[M,K] @ x[K,N]: M
])
def test_weight_axis_is_the_output_channel(op, attrs, rank, index, axis):
    node = helper.make_node(op, ["a", "b"], ["y"], **attrs)
    assert rules.weight_axis(node, rank, index) == axis


def test_weight_axis_matches_the_output_channels_numerically():
    """Gemm transB=0 and MatMul: scaling column j of W scales output column j only."""
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(5, 4)), rng.normal(size=(4, 3))
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    ax = rules.weight_axis(node, 2, 1)
    w2 = w.copy()
    np.moveaxis(w2, ax, 0)[1] *= 2
    y, y2 = x @ w, x @ w2
    assert np.allclose(y2[:, 1], 2 * y[:, 1]) and np.allclose(y2[:, [0, 2]], y[:, [0, 2]])


def test_weight_input_finds_the_constant_of_a_matmul():
    const = {"w"}.__contains__
    assert rules.weight_input(helper.make_node("MatMul", ["x", "w"], ["y"]), const) == 1
    assert rules.weight_input(helper.make_node("MatMul", ["w", "x"], ["y"]), const) == 0
    assert rules.weight_input(helper.make_node("MatMul", ["x", "z"], ["y"]), const) is None
    assert rules.weight_input(helper.make_node("Conv", ["x", "k"], ["y"]), const) == 1


def test_weight_scale_is_max_over_127_per_channel_with_one_floor():
    w = np.zeros((3, 2, 1, 1), np.float32)
    w[0, 0] = -2.54
    w[1, 1] = 1.27
    s = rules.weight_scale(w, 0)
    assert s.dtype == np.float32 and s.shape == (3,)
    assert np.allclose(s[:2], [0.02, 0.01]) and s[2] == np.float32(rules.SCALE_EPS)
    assert np.float16(s[2]) > 0        # the floor survives an FP16 scale
    assert np.round(np.abs(w[0, 0]) / s[0]) == 127


def test_commutes():
    assert rules.commutes(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2]))
    assert rules.commutes(helper.make_node("Resize", ["x", "", "s"], ["y"], mode="nearest"))
    assert not rules.commutes(helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear"))
    zero = {"p": np.zeros(8, np.int64), "v0": np.float32(0), "v1": np.float32(1)}.get
    assert rules.commutes(helper.make_node("Pad", ["x", "p", "v0"], ["y"]), zero)
    assert not rules.commutes(helper.make_node("Pad", ["x", "p", "v1"], ["y"]), zero)
    assert not rules.commutes(helper.make_node("Pad", ["x", "p"], ["y"], mode="reflect"), zero)
    assert not rules.commutes(helper.make_node("Sigmoid", ["x"], ["y"]))

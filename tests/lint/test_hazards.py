"""xtrt.lint hazards: one tiny model per hazard; each finding names the rule and the fix."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import tiny_models as tm
from xtrt.lint.qdq import hazard_counts, lint_qdq
from xtrt.quant.fp16 import convert_fp16


def _checks(model, **kw):
    return [(f.severity, f.check) for f in lint_qdq(model, **kw) if f.severity != "info"]


def _qdq(x, s, name, inits, nodes):
    inits += [numpy_helper.from_array(np.float32(s), f"{name}_s"),
              numpy_helper.from_array(np.int8(0), f"{name}_z")]
    nodes += [helper.make_node("QuantizeLinear", [x, f"{name}_s", f"{name}_z"], [f"{name}_q"],
                               name=f"{name}_Q"),
              helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"],
                               [f"{name}_dq"], name=f"{name}_DQ")]
    return f"{name}_dq"


def _graph(nodes, inits, out="y"):
    g = helper.make_graph(nodes, "h", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["N", 8, 16, 16])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    return m


def _concat(s1, s2):
    nodes, inits = [], []
    a = _qdq("x", s1, "a", inits, nodes)
    b = _qdq("x", s2, "b", inits, nodes)
    nodes.append(helper.make_node("Concat", [a, b], ["c"], name="cat", axis=1))
    _qdq("c", s1, "o", inits, nodes)
    nodes.append(helper.make_node("Relu", ["o_dq"], ["y"], name="relu"))
    return _graph(nodes, inits)


def test_concat_scale_mismatch_is_an_error_with_rule_and_fix():
    found = [f for f in lint_qdq(_concat(0.1, 0.2)) if f.check == "scale_mismatch"]
    assert len(found) == 1 and found[0].node == "cat" and "2 different scales" in found[0].message
    assert "share one scale" in found[0].rule and "largest amax" in found[0].fix
    assert "[rule: " in str(found[0]) and "(fix: " in str(found[0])
    assert not [f for f in lint_qdq(_concat(0.1, 0.1)) if f.check == "scale_mismatch"]


def test_quantized_graph_output_and_dq_into_float_op():
    nodes, inits = [], []
    _qdq("x", 0.1, "a", inits, nodes)
    nodes.append(helper.make_node("Sigmoid", ["a_dq"], ["s"], name="sig"))
    _qdq("s", 0.01, "o", inits, nodes)
    m = _graph(nodes, inits, out="o_dq")
    counts = hazard_counts(lint_qdq(m))
    assert counts["quantized_output"] == 1 and counts["dq_into_float"] == 1


def test_quantize_without_matching_dequantize():
    m = _concat(0.1, 0.1)
    for n in m.graph.node:          # the output DQ reads the Q with another scale
        if n.name == "o_DQ":
            n.input[1] = "b_s"
    m.graph.initializer.remove(next(i for i in m.graph.initializer if i.name == "b_s"))
    m.graph.initializer.append(numpy_helper.from_array(np.float32(0.3), "b_s"))
    assert hazard_counts(lint_qdq(m))["q_without_dq"] == 1


def test_per_tensor_conv_weight_is_a_warning():
    assert ("warning", "per_tensor_weight") in _checks(tm.qdq_conv(weight_scale_count=1))
    assert _checks(tm.qdq_conv()) == []


def test_fp32_regions_in_a_strongly_typed_graph():
    m = tm.qdq_conv_then_float_conv()

    def regions(model, **kw):
        return [f.severity for f in lint_qdq(model, **kw) if f.check == "fp32_region"]
    assert regions(m) == []                               # not meant for strongly typed: no check
    assert regions(m, strongly_typed=True) == ["warning"]
    assert regions(m, strongly_typed=True, float_nodes=["conv2"]) == ["info"]
    assert regions(convert_fp16(m)) == []                 # FP16 outside Q/DQ: auto-detected, clean
    assert regions(convert_fp16(m, {"conv2": "measured"})) == ["warning"]


def test_small_channel_int8_conv_is_padded():
    stem = lint_qdq(tm.qdq_conv(cin=3))
    assert [(f.severity, f.check) for f in stem] == [("info", "small_channels")]
    m = tm.qdq_conv(cin=3)
    g = m.graph
    next(n for n in g.node if n.name == "x_Q").input[0] = "xr"
    g.node.insert(0, helper.make_node("Relu", ["x"], ["xr"], name="pre"))
    g.input[0].type.tensor_type.shape.dim[1].dim_value = 3
    onnx.checker.check_model(m)
    assert ("warning", "small_channels") in _checks(m)


def test_one_scale_for_one_output_channel_is_not_per_tensor():
    """A conv with a single output channel (a probability-map head): its one weight scale is
    per channel; only the stem's padded channels are reported, as info."""
    found = lint_qdq(tm.qdq_conv(cout=1))
    assert [f.check for f in found if f.severity != "info"] == []
    assert any(f.check == "small_channels" and f.severity == "info" for f in found)

"""Strongly-typed FP16 export: types in the ONNX, graph I/O kept, FP32 kept for a measured reason,
and ONNX Runtime runs it close to the FP32 export."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tests.lint import tiny_models as tm
from xtrt.quant.fp16 import FP16_SAFE, convert_fp16, float_regions, fp32_reasons
from xtrt.quant.precision import activation_amax


def _run(m, x):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


def _types(m):
    inf = onnx.shape_inference.infer_shapes(m)
    return {v.name: v.type.tensor_type.elem_type for v in
            list(inf.graph.value_info) + list(inf.graph.output) + list(inf.graph.input)}


def _big_tail(m):
    """qdq_conv_then_float_conv() whose float conv is followed by Mul(x, 1e5) -> y."""
    g = m.graph
    g.node[-1].output[0] = "c2"
    g.initializer.append(numpy_helper.from_array(np.float32(1e5), "big"))
    g.node.append(helper.make_node("Mul", ["c2", "big"], ["y"], name="scale_up"))
    return m


def test_everything_outside_qdq_is_fp16_and_io_types_are_kept():
    m = tm.qdq_conv_then_float_conv()
    h = convert_fp16(m)
    onnx.checker.check_model(h, full_check=True)
    t = _types(h)
    assert t["x"] == t["y"] == TensorProto.FLOAT
    conv2 = next(n for n in h.graph.node if n.name == "conv2")
    assert t[conv2.output[0]] == TensorProto.FLOAT16
    assert float_regions(m) == {"fp32": 2, "fp16": 0} and float_regions(h) == {"fp32": 0, "fp16": 2}
    for n in h.graph.node:       # Q/DQ keep float32 scales (opset 13)
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert t.get(n.input[1], TensorProto.FLOAT) == TensorProto.FLOAT
    x = np.random.default_rng(0).uniform(-2, 2, (2, 8, 16, 16)).astype(np.float32)
    a, b = _run(m, x)[0], _run(h, x)[0]
    assert b.dtype == np.float32
    sqnr = 10 * np.log10(np.sum(a ** 2) / np.sum((a - b) ** 2))
    assert sqnr > 40, sqnr


def test_a_node_beyond_fp16_range_stays_fp32_with_the_reason():
    m = _big_tail(tm.qdq_conv_then_float_conv())
    x = np.random.default_rng(0).uniform(-2, 2, (2, 8, 16, 16)).astype(np.float32)
    amax = activation_amax(m, [{"x": x}])
    assert amax["y"] > FP16_SAFE > amax["c2"]
    keep = fp32_reasons(m, amax)
    assert list(keep) == ["scale_up"] and "beyond the FP16 safe range" in keep["scale_up"]
    h = convert_fp16(m, keep)
    t = _types(h)
    assert t[next(n for n in h.graph.node if n.name == "scale_up").output[0]] == TensorProto.FLOAT
    a, b = _run(m, x)[0], _run(h, x)[0]
    assert np.isfinite(b).all() and np.allclose(a, b, rtol=1e-2, atol=1e-2 * np.abs(a).max())


def test_output_writers_are_the_float_tail_after_the_last_int8_layer():
    """A bias Add and a Softmax between the last INT8 layer and a float32 graph output are the
    tail; the INT8 layer itself, its Q/DQ and anything feeding another INT8 layer are not."""
    from onnx import TensorProto, helper

    from xtrt.quant.fp16 import output_writers

    f = TensorProto.FLOAT
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("MatMul", ["xd", "w"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "b"], ["a"], name="bias"),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),         # feeds the Q below too
             helper.make_node("Softmax", ["r"], ["y"], name="softmax"),
             helper.make_node("QuantizeLinear", ["r", "s", "z"], ["rq"], name="q2"),
             helper.make_node("DequantizeLinear", ["rq", "s", "z"], ["rd"], name="dq2"),
             helper.make_node("MatMul", ["rd", "w"], ["y2"], name="mm2")]
    inits = [helper.make_tensor("s", f, [], [0.1]), helper.make_tensor("z", TensorProto.INT8, [], [0]),
             helper.make_tensor("w", f, [4, 4], [0.1] * 16), helper.make_tensor("b", f, [4], [0.0] * 4)]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", f, [1, 4])],
                          [helper.make_tensor_value_info("y", f, [1, 4]),
                           helper.make_tensor_value_info("y2", f, [1, 4])], inits)
    got = output_writers(helper.make_model(g))
    assert sorted(got) == ["softmax"]
    assert got["softmax"].startswith("writes graph output y after the last INT8 layer")
    g.node[6].input[0] = "a"                      # now relu only feeds the softmax: tail too
    got = output_writers(helper.make_model(g))
    assert sorted(got) == ["relu", "softmax"]

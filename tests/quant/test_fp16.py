"""Strongly-typed FP16 export: types in the ONNX, graph I/O kept, FP32 kept for a measured reason,
and ONNX Runtime runs it close to the FP32 export."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tests.lint import tiny_models as tm
from xtrt.quant.fp16 import FP16_SAFE, convert_fp16, float_regions, fold_qdq_casts, fp32_reasons
from xtrt.quant.precision import activation_amax


def _run(m, x):
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


def _types(m):
    inf = onnx.shape_inference.infer_shapes(m)
    return {v.name: v.type.tensor_type.elem_type for v in
            list(inf.graph.value_info) + list(inf.graph.output) + list(inf.graph.input)}


def test_everything_outside_qdq_is_fp16_and_io_types_are_kept():
    m = tm.qdq_conv_then_float_conv()
    h = convert_fp16(m)
    onnx.checker.check_model(h, full_check=True)
    t = _types(h)
    assert t["x"] == t["y"] == TensorProto.FLOAT
    conv2 = next(n for n in h.graph.node if n.name == "conv2")
    assert t[conv2.output[0]] == TensorProto.FLOAT16
    assert float_regions(m) == {"fp32": 2, "fp16": 0} and float_regions(h) == {"fp32": 0, "fp16": 2}
    inits = {i.name: i.data_type for i in h.graph.initializer}
    # the image's Q reads the float32 graph input: its scale (shared with its DQ) stays float32;
    # so does the Conv weight's (for ONNX Runtime: test_conv_weights_keep_float32_scales)
    assert inits["x_scale"] == inits["w_scale"] == TensorProto.FLOAT
    x = np.random.default_rng(0).uniform(-2, 2, (2, 8, 16, 16)).astype(np.float32)
    a, b = _run(m, x)[0], _run(h, x)[0]
    assert b.dtype == np.float32
    sqnr = 10 * np.log10(np.sum(a ** 2) / np.sum((a - b) ** 2))
    assert sqnr > 40, sqnr


def test_a_node_beyond_fp16_range_stays_fp32_with_the_reason():
    m = tm.qdq_conv_then_big_tail()
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


def _qdq_casts(m) -> list[str]:
    """Casts that read a DequantizeLinear or feed a QuantizeLinear."""
    producer = {o: n for n in m.graph.node for o in n.output}
    readers = {t: n for n in m.graph.node for t in n.input}
    out = []
    for n in m.graph.node:
        if n.op_type != "Cast":
            continue
        p = producer.get(n.input[0])
        users = [u for u in m.graph.node if n.output[0] in u.input]
        if (p is not None and p.op_type == "DequantizeLinear") or \
                any(u.op_type == "QuantizeLinear" for u in users):
            out.append(n.name)
    assert readers is not None
    return out


def _opset(m) -> int:
    return next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))


def test_fp16_export_writes_qdq_at_opset_19_with_fp16_scales_and_no_casts():
    """Between FP16 ops the Q reads the float16 tensor and the DQ writes float16 (opset 19,
    float16 scales); qdq_opset=13 keeps the Casts.  ONNX Runtime runs both, equally close."""
    m = tm.qdq_gemm_softmax()
    h19, h13 = convert_fp16(m), convert_fp16(m, qdq_opset=13)
    onnx.checker.check_model(h19, full_check=True)
    assert _opset(h19) == 19 and _opset(h13) == 13
    assert _qdq_casts(h19) == []
    assert sorted(_qdq_casts(h13)) == ["w_dq_fp16_Cast", "x_dq_fp16_Cast", "x_relu_fp32_Cast"]
    t, inits = _types(h19), {i.name: i.data_type for i in h19.graph.initializer}
    assert inits["x_scale"] == inits["w_scale"] == TensorProto.FLOAT16
    q = next(n for n in h19.graph.node if n.name == "x_Q")
    assert t[q.input[0]] == TensorProto.FLOAT16 and t["x_dq"] == t["w_dq"] == TensorProto.FLOAT16
    assert t["y"] == TensorProto.FLOAT                      # graph output keeps its type
    x = np.random.default_rng(0).uniform(-3, 3, (4, 32)).astype(np.float32)
    ref = _run(m, x)[0]
    for h in (h19, h13):
        got = _run(h, x)[0]
        assert got.dtype == np.float32
        assert 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)) > 25   # INT8 flips


def test_a_scale_fp16_cannot_hold_keeps_float32_and_its_casts():
    """A weight scale below FP16's normal range (2^-14) is not rounded into float16: it keeps its
    float32 scale and its Cast, with the reason, and so does the Gemm's activation scale (a GEMM's
    two operand scales share one type: TensorRT-RTX's Myelin rejects a mix)."""
    m = tm.qdq_gemm_softmax()
    w = next(i for i in m.graph.initializer if i.name == "w_scale")
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1e-3, "w_scale"))
    h, info = fold_qdq_casts(convert_fp16(m, qdq_opset=13))
    assert info["qdq_opset"] == 19 and info["folded_scales"] == 0
    assert info["fp32_scales"] == {"values outside FP16's normal range [2^-14, 65504]":
                                   ["x_scale", "w_scale"]}
    assert sorted(_qdq_casts(h)) == ["w_dq_fp16_Cast", "x_dq_fp16_Cast", "x_relu_fp32_Cast"]
    inits = {i.name: i.data_type for i in h.graph.initializer}
    assert inits["w_scale"] == inits["x_scale"] == TensorProto.FLOAT
    x = np.random.default_rng(1).uniform(-3, 3, (2, 32)).astype(np.float32)
    assert np.isfinite(_run(h, x)[0]).all()


def test_a_scale_shared_with_a_float32_qdq_is_not_folded():
    """A node kept FP32 reads the DQ: the scale it shares with the Q stays float32, both keep
    their Casts (rounding the Q's scale alone would give the pair two different scales)."""
    m = tm.qdq_gemm_softmax()
    h, info = fold_qdq_casts(convert_fp16(m, {"fc": "kept FP32 for the test"}, qdq_opset=13))
    (why,) = [k for k, v in info["fp32_scales"].items() if "x_scale" in v]
    assert why.startswith("shares its type with a Q/DQ that reads or writes float32")
    inits = {i.name: i.data_type for i in h.graph.initializer}
    assert inits["x_scale"] == TensorProto.FLOAT
    assert "x_relu_fp32_Cast" in _qdq_casts(h)
    x = np.random.default_rng(2).uniform(-3, 3, (2, 32)).astype(np.float32)
    assert np.allclose(_run(h, x)[0], _run(m, x)[0], atol=1e-2)


def _ort(m, x, level: str):
    so = ort.SessionOptions()
    so.graph_optimization_level = {"off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                                   "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                   "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


def test_conv_weights_keep_float32_scales_so_onnx_runtime_optimizes_it_unchanged():
    """ONNX Runtime's WeightBiasQuantization (basic level) rewrites a Conv's float bias as
    round(bias / (x_scale * w_scale)) in the bias's type; with float16 scales and bias that
    overflows.  The Conv weight keeps a float32 scale, so every level computes the same."""
    m = tm.qdq_conv_big_bias()
    h, info = fold_qdq_casts(convert_fp16(m, qdq_opset=13))
    assert info["folded_scales"] == 1                       # the activation's
    (why,) = [k for k, v in info["fp32_scales"].items() if v == ["w_scale"]]
    assert "WeightBiasQuantization" in why
    x = np.random.default_rng(3).uniform(-2, 2, (2, 8, 16, 16)).astype(np.float32)
    off = _run(m, x)[0]
    for level in ("basic", "all"):
        assert np.allclose(_ort(h, x, level)[0], off, rtol=2e-2, atol=0.05 * np.abs(off).max())


def test_concat_qdq_keep_float32_scales_so_onnx_runtime_fuses_it():
    """ONNX Runtime's QLinearConcat fusion (all levels above basic) takes float32 scales only:
    with float16 ones it rejects the model.  A Concat's Q/DQ keep float32 scales."""
    m = tm.qdq_concat()
    h, info = fold_qdq_casts(convert_fp16(m, qdq_opset=13))
    (why,) = [k for k, v in info["fp32_scales"].items() if "cat_scale" in v]
    assert "QLinearConcat" in why
    x = np.random.default_rng(4).uniform(-2, 2, (2, 8, 16, 16)).astype(np.float32)
    assert np.allclose(_ort(h, x, "all")[0], _ort(h, x, "off")[0], atol=1e-2)


def test_two_gemms_on_one_qdq_get_their_own_pair_when_one_bias_would_overflow():
    """MTCNN ONet's head: two Gemms read one Q/DQ; one's bias / (x_scale * w_scale) exceeds
    float16 (ONNX Runtime's bias quantization would overflow), so that Gemm gets its own Q/DQ
    pair with float32 scales (equal in value) and the other folds to float16."""
    m = tm.qdq_two_gemm_heads()
    h, info = fold_qdq_casts(convert_fp16(m, qdq_opset=13))
    inits = {i.name: i for i in h.graph.initializer}
    assert inits["x_scale"].data_type == inits["w0_scale"].data_type == TensorProto.FLOAT16
    assert inits["x_scale_fc1"].data_type == inits["w1_scale"].data_type == TensorProto.FLOAT
    assert numpy_helper.to_array(inits["x_scale_fc1"]) == \
        numpy_helper.to_array(inits["x_scale"]).astype(np.float32)
    assert {n.name for n in h.graph.node} >= {"x_Q_fc1", "x_DQ_fc1"}
    x = np.random.default_rng(5).uniform(-2, 2, (4, 32)).astype(np.float32)
    ref, off = _run_all(m, x), _ort(h, x, "off")
    for level in ("basic", "all"):
        for a, b, r in zip(_ort(h, x, level), off, ref):
            assert np.allclose(a, b, rtol=1e-2, atol=1e-2 * np.abs(r).max())


def _run_all(m, x):
    return ort.InferenceSession(m.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_fp16_valued_scales_round_activation_scales_and_keep_weight_scales():
    """The FP32 contrast export of an opset-19 FP16 export takes the float16 values of its
    activation scales (so the two differ by FP16 arithmetic alone); weight scales, with which
    the int8 weights were rounded, stay as they are."""
    from xtrt.quant.fp16_qdq import fp16_valued_scales

    m = tm.qdq_gemm_softmax()
    x = next(i for i in m.graph.initializer if i.name == "x_scale")
    x.CopyFrom(numpy_helper.from_array(np.float32(0.0314159), "x_scale"))
    w0 = numpy_helper.to_array(next(i for i in m.graph.initializer if i.name == "w_scale"))
    got = {i.name: numpy_helper.to_array(i) for i in fp16_valued_scales(m).graph.initializer}
    assert got["x_scale"].dtype == np.float32
    assert got["x_scale"] == np.float32(np.float16(0.0314159)) != np.float32(0.0314159)
    assert np.array_equal(got["w_scale"], w0)
    fp16 = {i.name: numpy_helper.to_array(i) for i in convert_fp16(m).graph.initializer}
    assert fp16["x_scale"].astype(np.float32) == got["x_scale"]     # the FP16 export's value

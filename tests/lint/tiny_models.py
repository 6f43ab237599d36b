"""Tiny Q/DQ ONNX models for the lint tests, built with onnx.helper (nothing downloaded).

``qdq_conv()`` is a correct TensorRT-style explicit-quantization Conv (symmetric int8, per-channel
weight along axis 0, float bias); its keyword arguments break it one way at a time.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def _model(nodes, inits, inp, out, batch="N") -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *inp])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None if out is None else [batch, *out])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


def conv_weights(cin: int = 8, cout: int = 16, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.2, (cout, cin, k, k)).astype(np.float32)
    b = rng.normal(0, 0.1, cout).astype(np.float32)
    return w, b


def qdq_conv(*, cin: int = 8, cout: int = 16, size: int = 16, act_scale: float = 4.0 / 127,
             quant_act: bool = True, quant_weight: bool = True, weight_axis: int = 0,
             weight_scale_count: int | None = None, act_zero_point: int = 0,
             zp_dtype=np.int8, omit_act_zero_point: bool = False, int32_bias: bool = False,
             bad_scale: float | None = None) -> onnx.ModelProto:
    """x -> Q -> DQ -> Conv(DQ(int8 W), bias) -> y.  Keyword arguments inject one defect each."""
    w, b = conv_weights(cin, cout)
    nodes, inits = [], []
    conv_in = "x"
    if quant_act:
        inits.append(_init("x_scale", np.float32(act_scale if bad_scale is None else bad_scale)))
        q_inputs = ["x", "x_scale"]
        if not omit_act_zero_point:
            inits.append(_init("x_zp", np.array(act_zero_point, dtype=zp_dtype)))
            q_inputs.append("x_zp")
        nodes += [helper.make_node("QuantizeLinear", q_inputs, ["x_q"], name="x_Q"),
                  helper.make_node("DequantizeLinear", ["x_q", *q_inputs[1:]], ["x_dq"], name="x_DQ")]
        conv_in = "x_dq"
    w_in = "w"
    if quant_weight:
        amax = np.abs(w).reshape(cout, -1).max(1)
        scale = (amax / 127).astype(np.float32)
        wq = np.clip(np.round(w / scale[:, None, None, None]), -127, 127).astype(np.int8)
        n_scales = weight_scale_count or (w.shape[weight_axis])
        if n_scales != cout:
            scale = np.resize(scale, n_scales)
        inits += [_init("w_int8", wq), _init("w_scale", scale),
                  _init("w_zp", np.zeros(n_scales, np.int8))]
        nodes.append(helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "w_zp"], ["w_dq"],
                                      name="w_DQ", axis=weight_axis))
        w_in = "w_dq"
    else:
        inits.append(_init("w", w))
    b_in = "b"
    if int32_bias:
        bscale = (act_scale * np.abs(w).reshape(cout, -1).max(1) / 127).astype(np.float32)
        inits += [_init("b_int32", np.round(b / bscale).astype(np.int32)), _init("b_scale", bscale),
                  _init("b_zp", np.zeros(cout, np.int32))]
        nodes.append(helper.make_node("DequantizeLinear", ["b_int32", "b_scale", "b_zp"], ["b_dq"],
                                      name="b_DQ", axis=0))
        b_in = "b_dq"
    else:
        inits.append(_init("b", b))
    nodes.append(helper.make_node("Conv", [conv_in, w_in, b_in], ["y"], name="conv",
                                  kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    return _model(nodes, inits, [cin, size, size], [cout, size, size])


def float_conv(**kw) -> onnx.ModelProto:
    """The same Conv with no Q/DQ at all."""
    return qdq_conv(quant_act=False, quant_weight=False, **kw)


def qdq_conv_then_float_conv() -> onnx.ModelProto:
    """A quantized Conv followed by a Conv left wholly in float (``conv2``)."""
    m = qdq_conv(cin=8, cout=8)
    w2, b2 = conv_weights(8, 8, seed=1)
    g = m.graph
    g.output[0].name = "y1"
    g.node[-1].output[0] = "y1"
    g.initializer.extend([_init("w2", w2), _init("b2", b2)])
    g.node.append(helper.make_node("Conv", ["y1", "w2", "b2"], ["y"], name="conv2",
                                   kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    g.output[0].name = "y"
    return m


def qdq_conv_then_big_tail() -> onnx.ModelProto:
    """qdq_conv_then_float_conv() whose float conv is followed by Mul(x, 1e5) -> y: a tail beyond
    FP16's range."""
    m = qdq_conv_then_float_conv()
    g = m.graph
    g.node[-1].output[0] = "c2"
    g.initializer.append(numpy_helper.from_array(np.float32(1e5), "big"))
    g.node.append(helper.make_node("Mul", ["c2", "big"], ["y"], name="scale_up"))
    return m


def qdq_gemm(*, trans_b: int = 1, weight_axis: int | None = None, op: str = "Gemm") -> onnx.ModelProto:
    """x[N, 32] -> Q/DQ -> Gemm/MatMul with a per-channel int8 weight -> y[N, 10]."""
    rng = np.random.default_rng(2)
    k, n = 32, 10
    w = rng.normal(0, 0.2, (n, k) if (op == "Gemm" and trans_b) else (k, n)).astype(np.float32)
    out_axis = 0 if (op == "Gemm" and trans_b) else 1
    axis = out_axis if weight_axis is None else weight_axis
    amax = np.abs(w).max(axis=1 - axis)
    scale = (amax / 127).astype(np.float32)
    shape = [1, 1]
    shape[axis] = -1
    wq = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    inits = [_init("x_scale", np.float32(4.0 / 127)), _init("x_zp", np.int8(0)), _init("w_int8", wq),
             _init("w_scale", scale), _init("w_zp", np.zeros(scale.size, np.int8))]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"], name="x_Q"),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"], name="x_DQ"),
             helper.make_node("DequantizeLinear", ["w_int8", "w_scale", "w_zp"], ["w_dq"],
                              name="w_DQ", axis=axis)]
    if op == "Gemm":
        nodes.append(helper.make_node("Gemm", ["x_dq", "w_dq"], ["y"], name="fc", transB=trans_b))
    else:
        nodes.append(helper.make_node("MatMul", ["x_dq", "w_dq"], ["y"], name="fc"))
    return _model(nodes, inits, [k], [n])


def qdq_conv_with_plugin_tail() -> onnx.ModelProto:
    """qdq_conv() followed by an EfficientNMS_TRT node (the plugin-terminated deployment shape)."""
    m = qdq_conv(cin=8, cout=8)
    g = m.graph
    g.node[-1].output[0] = "feat"
    del g.output[:]
    g.initializer.extend([_init("box_shape", np.array([0, 8 * 16 * 16 // 4, 4], np.int64)),
                          _init("sc_shape", np.array([0, 8 * 16 * 16 // 4, 4], np.int64))])
    g.node.extend([
        helper.make_node("Reshape", ["feat", "box_shape"], ["boxes"], name="to_boxes"),
        helper.make_node("Reshape", ["feat", "sc_shape"], ["scores"], name="to_scores"),
        helper.make_node("EfficientNMS_TRT", ["boxes", "scores"],
                         ["num_dets", "det_boxes", "det_scores", "det_classes"], name="batched_nms",
                         domain="", background_class=-1, box_coding=1, iou_threshold=0.45,
                         max_output_boxes=10, plugin_version="1", score_activation=0,
                         score_threshold=0.25)])
    for name, dt, shape in (("num_dets", TensorProto.INT32, ["N", 1]),
                            ("det_boxes", TensorProto.FLOAT, ["N", 10, 4]),
                            ("det_scores", TensorProto.FLOAT, ["N", 10]),
                            ("det_classes", TensorProto.INT32, ["N", 10])):
        g.output.append(helper.make_tensor_value_info(name, dt, shape))
    return m


def qdq_gemm_softmax() -> onnx.ModelProto:
    """x[N, 32] -> Relu (float) -> Q/DQ -> Gemm (int8 weight) -> bias Add -> Softmax -> y[N, 10]: a
    classifier head whose last INT8 layer writes the float32 graph output through a float tail,
    with an activation Q/DQ between float ops (what the FP16 export folds at opset 19)."""
    m = qdq_gemm()
    g = m.graph
    rng = np.random.default_rng(3)
    g.initializer.append(_init("fc_b", rng.normal(0, 0.1, 10).astype(np.float32)))
    g.node[0].input[0] = "x_relu"
    g.node[-1].output[0] = "logits"
    g.node.insert(0, helper.make_node("Relu", ["x"], ["x_relu"], name="relu"))
    g.node.extend([helper.make_node("Add", ["logits", "fc_b"], ["biased"], name="bias"),
                   helper.make_node("Softmax", ["biased"], ["y"], name="softmax", axis=1)])
    onnx.checker.check_model(m)
    return m


def _relu_qdq(x: str, name: str, scale: float, nodes: list, inits: list) -> str:
    """x -> Relu -> Q/DQ (per-tensor ``scale``): returns the DQ output."""
    inits += [_init(f"{name}_scale", np.float32(scale)), _init(f"{name}_zp", np.int8(0))]
    nodes += [helper.make_node("Relu", [x], [f"{name}_relu"], name=f"{name}_relu"),
              helper.make_node("QuantizeLinear", [f"{name}_relu", f"{name}_scale", f"{name}_zp"],
                               [f"{name}_q"], name=f"{name}_Q"),
              helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_scale", f"{name}_zp"],
                               [f"{name}_dq"], name=f"{name}_DQ")]
    return f"{name}_dq"


def _int8_weight(w: np.ndarray, axis: int, name: str, nodes: list, inits: list) -> str:
    amax = np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(1)
    scale = (amax / 127).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    wq = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    inits += [_init(f"{name}_int8", wq), _init(f"{name}_scale", scale),
              _init(f"{name}_zp", np.zeros(scale.size, np.int8))]
    nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale",
                                                       f"{name}_zp"], [f"{name}_dq"],
                                  name=f"{name}_DQ", axis=axis))
    return f"{name}_dq"


def qdq_conv_big_bias(bias: float = 20.0) -> onnx.ModelProto:
    """x -> Relu -> Q/DQ -> Conv(int8 W, float bias ``bias``) -> y: bias / (x_scale * w_scale)
    beyond float16's 65504 (what ONNX Runtime's WeightBiasQuantization computes in the bias's
    type)."""
    w, _ = conv_weights(8, 16)
    nodes, inits = [], [_init("b", np.full(16, bias, np.float32))]
    x = _relu_qdq("x", "x", 4.0 / 127, nodes, inits)
    wd = _int8_weight(w, 0, "w", nodes, inits)
    nodes.append(helper.make_node("Conv", [x, wd, "b"], ["y"], name="conv", kernel_shape=[3, 3],
                                  pads=[1, 1, 1, 1]))
    return _model(nodes, inits, [8, 16, 16], [16, 16, 16])


def qdq_concat() -> onnx.ModelProto:
    """Two Relu -> Q/DQ branches (one scale) -> Concat -> Q/DQ -> Conv (int8 W) -> y."""
    w, b = conv_weights(16, 8)
    nodes, inits = [], [_init("b", b)]
    a = _relu_qdq("x", "a", 4.0 / 127, nodes, inits)
    nodes.append(helper.make_node("Neg", ["x"], ["x_neg"], name="neg"))
    c = _relu_qdq("x_neg", "c", 4.0 / 127, nodes, inits)
    nodes.append(helper.make_node("Concat", [a, c], ["cat"], name="concat", axis=1))
    inits += [_init("cat_scale", np.float32(4.0 / 127)), _init("cat_zp", np.int8(0))]
    nodes += [helper.make_node("QuantizeLinear", ["cat", "cat_scale", "cat_zp"], ["cat_q"],
                               name="cat_Q"),
              helper.make_node("DequantizeLinear", ["cat_q", "cat_scale", "cat_zp"], ["cat_dq"],
                               name="cat_DQ")]
    wd = _int8_weight(w, 0, "w", nodes, inits)
    nodes.append(helper.make_node("Conv", ["cat_dq", wd, "b"], ["y"], name="conv",
                                  kernel_shape=[3, 3], pads=[1, 1, 1, 1]))
    return _model(nodes, inits, [8, 16, 16], [8, 16, 16])


def qdq_two_gemm_heads(big_bias: float = 200.0) -> onnx.ModelProto:
    """x[N, 32] -> Relu -> one Q/DQ read by two Gemms (MTCNN ONet's head): ``prob`` through a
    Softmax, ``box`` with a bias whose bias / (x_scale * w_scale) exceeds float16's 65504."""
    rng = np.random.default_rng(4)
    nodes, inits = [], [_init("b1", rng.normal(0, 0.1, 4).astype(np.float32)),
                        _init("b2", np.full(4, big_bias, np.float32))]
    x = _relu_qdq("x", "x", 4.0 / 127, nodes, inits)
    for k, (b, out) in enumerate((("b1", "logits"), ("b2", "box"))):
        wd = _int8_weight(rng.normal(0, 0.2, (4, 32)).astype(np.float32), 0, f"w{k}", nodes,
                          inits)
        nodes.append(helper.make_node("Gemm", [x, wd, b], [out], name=f"fc{k}", transB=1))
    nodes.append(helper.make_node("Softmax", ["logits"], ["prob"], name="softmax", axis=1))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", 4]) for o in ("prob", "box")],
        initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m

"""The tensor-level Q/DQ plan: one structural test per TensorRT placement / fusion rule, on tiny
onnx.helper models, checked on the plan and on the exported graph (which ONNX Runtime runs)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from xtrt.quant.export import export_qdq, tensor_scales
from xtrt.quant.placement import plan_placement

C = 4


def _w(name, seed, cin=C, cout=C):
    w = np.random.default_rng(seed).normal(0, 0.3, (cout, cin, 3, 3)).astype(np.float32)
    return numpy_helper.from_array(w, name)


def _conv(x, y, w, name):
    return helper.make_node("Conv", [x, w], [y], name=name, kernel_shape=[3, 3], pads=[1, 1, 1, 1])


def _model(nodes, inits, outputs=("y",), cout=C):
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     ["N", C, 8, 8])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["N", None, None, None])
                           for o in outputs], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def _cal(model, scales: dict):
    """A calibration result: ``scales[(node, i)]`` for activations, weights by the rule."""
    return SimpleNamespace(act_scales=dict(scales), weight_scales={}, weights={})


def _producer(model, tensor):
    return next((n for n in model.graph.node if tensor in n.output), None)


def _input_op(model, node, i):
    """Op type producing input ``i`` of ``node`` in the exported model."""
    n = next(n for n in model.graph.node if n.name == node)
    p = _producer(model, n.input[i])
    return p.op_type if p is not None else None


def _run(model):
    x = np.random.default_rng(0).normal(size=(2, C, 8, 8)).astype(np.float32)
    s = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return s.run(None, {"x": x})


def test_conv_inputs_and_per_channel_weight_are_quantized():
    m = _model([_conv("x", "y", "w", "conv")], [_w("w", 0)])
    p = plan_placement(m)
    assert p.tensors.sites == {"x": [("conv", 0)]}
    assert p.tensors.weights["w"].axis == 0 and p.tensors.precision["conv"][0] == "int8"
    q = export_qdq(m, _cal(m, {("conv", 0): 0.03}), p)
    assert _input_op(q, "conv", 0) == "DequantizeLinear" and _input_op(q, "conv", 1) == \
        "DequantizeLinear"
    wdq = _producer(q, next(n for n in q.graph.node if n.name == "conv").input[1])
    assert helper.get_attribute_value(wdq.attribute[0]) == 0
    _run(q)


def test_residual_add_other_input_is_quantized_for_epilogue_fusion():
    nodes = [_conv("x", "c1", "w1", "conv1"), helper.make_node("Relu", ["c1"], ["a"], name="relu"),
             helper.make_node("Add", ["a", "x"], ["s"], name="add"), _conv("s", "y", "w2", "conv2")]
    m = _model(nodes, [_w("w1", 0), _w("w2", 1)])
    p = plan_placement(m)
    assert ("add", 1) in p.tensors.sites["x"]           # the skip input, not the conv branch
    assert "a" not in p.tensors.sites
    assert "conv1" in p.tensors.precision["add"][1]
    q = export_qdq(m, _cal(m, {("conv1", 0): 0.03, ("conv2", 0): 0.05}), p)
    assert _input_op(q, "add", 1) == "DequantizeLinear" and _input_op(q, "add", 0) == "Relu"
    _run(q)


def test_concat_inputs_and_output_share_one_scale_the_groups_max():
    nodes = [_conv("x", "a", "wa", "conva"), _conv("x", "b", "wb", "convb"),
             helper.make_node("Concat", ["a", "b"], ["c"], name="cat", axis=1),
             _conv("c", "y", "wc", "convc"), _conv("a", "y2", "wd", "convd")]
    m = _model(nodes, [_w("wa", 0), _w("wb", 1), _w("wc", 2, cin=2 * C), _w("wd", 3)],
               outputs=("y", "y2"))
    p = plan_placement(m)
    t = p.tensors
    assert t.groups["a"] == t.groups["b"] == t.groups["c"] != t.groups["x"]
    assert t.precision["cat"][0] == "int8"
    cal = _cal(m, {("conva", 0): 0.01, ("convb", 0): 0.01, ("convc", 0): 0.1, ("convd", 0): 0.3})
    sc = tensor_scales(m, cal, p)
    assert sc["a"] == sc["b"] == sc["c"] == 0.3 and sc["x"] == 0.01
    q = export_qdq(m, cal, p)
    cat = next(n for n in q.graph.node if n.name == "cat")
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    got = [float(inits[_producer(q, i).input[1]]) for i in cat.input]
    assert got == [np.float32(0.3)] * 2
    _run(q)


def test_scale_is_carried_across_commuting_ops_and_stops_at_others():
    sc = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")
    nodes = [_conv("x", "a", "wa", "conva"),
             helper.make_node("MaxPool", ["a"], ["mp"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Resize", ["mp", "", "sc"], ["r"], name="up", mode="nearest"),
             _conv("r", "y", "wb", "convb")]
    m = _model(nodes, [_w("wa", 0), _w("wb", 1), sc])
    t = plan_placement(m).tensors
    assert t.groups["a"] == t.groups["mp"] == t.groups["r"]
    assert t.precision["pool"][0] == t.precision["up"][0] == "int8"
    nodes[2] = helper.make_node("Resize", ["mp", "", "sc"], ["r"], name="up", mode="linear")
    t = plan_placement(_model(nodes, [_w("wa", 0), _w("wb", 1), sc])).tensors
    assert "mp" not in t.sites and "a" not in t.sites and t.precision["up"][0] == "float"


def test_no_qdq_on_graph_outputs():
    nodes = [_conv("x", "a", "wa", "conva"),
             helper.make_node("Concat", ["a", "x"], ["c"], name="cat", axis=1),
             _conv("c", "y", "wc", "convc")]
    m = _model(nodes, [_w("wa", 0), _w("wc", 1, cin=2 * C)], outputs=("y", "c"))
    p = plan_placement(m)
    assert "a" not in p.tensors.sites and p.tensors.precision["cat"][0] == "float"
    q = export_qdq(m, _cal(m, {("conva", 0): 0.02, ("convc", 0): 0.05}), p)
    for o in q.graph.output:
        assert _producer(q, o.name).op_type not in ("QuantizeLinear", "DequantizeLinear")


def test_ops_tensorrt_runs_in_float_get_no_qdq():
    nodes = [_conv("x", "a", "wa", "conva"),
             helper.make_node("Softmax", ["a"], ["s"], name="softmax", axis=1),
             _conv("s", "y", "wb", "convb")]
    m = _model(nodes, [_w("wa", 0), _w("wb", 1)])
    p = plan_placement(m)
    assert "a" not in p.tensors.sites and p.tensors.precision["softmax"][0] == "float"
    q = export_qdq(m, _cal(m, {("conva", 0): 0.02, ("convb", 0): 0.01}), p)
    assert _input_op(q, "softmax", 0) == "Conv" and _input_op(q, "convb", 0) == "DequantizeLinear"

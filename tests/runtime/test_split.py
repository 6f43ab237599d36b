"""Cutting plugin models (xtrt.model.split) and running them on ORT + handlers (xtrt.runtime.split)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from xtrt.errors import DataError, UnsupportedOpError
from xtrt.model.split import find_plugin_nodes, split_model
from xtrt.runtime.session import make_session
from xtrt.runtime.split import SplitRunner

_spec = importlib.util.spec_from_file_location("nms_reference", Path(__file__).parents[1] / "ops" / "nms_reference.py")
nms_reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(nms_reference)

NMS_ATTRS = dict(score_threshold=0.55, iou_threshold=0.3, max_output_boxes=6, background_class=-1,
                 score_activation=0, class_agnostic=0, box_coding=1)
OUTPUTS = ["classes", "num_dets64", "scores", "det_boxes", "det_scores"]


def i64(name, values):
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def tiny_model(plugin_domain="TRT", qdq=False, op_type="EfficientNMS_TRT", with_nms=True):
    """x [N,3,4,4] -> (Q/DQ) -> Conv -> Sigmoid -> boxes [N,16,4] (cx,cy,w,h), scores [N,16,5] -> NMS tail."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 1.5, (9, 3, 1, 1)).astype(np.float32)
    inits = [onnx.numpy_helper.from_array(w, "w"), i64("shape", [0, 9, -1]), i64("axes", [2]),
             i64("b0", [0]), i64("b1", [4]), i64("c1", [9]),
             onnx.numpy_helper.from_array(np.array([16, 16, 8, 8], np.float32), "scale_xy"),
             onnx.numpy_helper.from_array(np.array(0.02, np.float32), "qs"),
             onnx.numpy_helper.from_array(np.array(0, np.int8), "qz")]
    first = "x"
    nodes = []
    if qdq:
        nodes += [helper.make_node("QuantizeLinear", ["x", "qs", "qz"], ["xq"], name="q"),
                  helper.make_node("DequantizeLinear", ["xq", "qs", "qz"], ["xdq"], name="dq")]
        first = "xdq"
    nodes += [
        helper.make_node("Conv", [first, "w"], ["feat"], name="conv"),
        helper.make_node("Sigmoid", ["feat"], ["act"], name="sig"),
        helper.make_node("Reshape", ["act", "shape"], ["flat"], name="reshape"),
        helper.make_node("Transpose", ["flat"], ["pred"], name="tr", perm=[0, 2, 1]),
        helper.make_node("Slice", ["pred", "b0", "b1", "axes"], ["box_raw"], name="sl_box"),
        helper.make_node("Mul", ["box_raw", "scale_xy"], ["boxes"], name="mul"),
        helper.make_node("Slice", ["pred", "b1", "c1", "axes"], ["scores"], name="sl_cls"),
    ]
    outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 16, 5])]
    if with_nms:
        nodes += [
            helper.make_node(op_type, ["boxes", "scores"], ["num_dets", "det_boxes", "det_scores", "det_classes"],
                             name="nms", domain=plugin_domain, plugin_version="1", **NMS_ATTRS),
            helper.make_node("Cast", ["num_dets"], ["num_dets64"], name="cast", to=TensorProto.INT64),
            helper.make_node("Identity", ["det_classes"], ["classes"], name="ident"),
        ]
        outputs = [helper.make_tensor_value_info("classes", TensorProto.INT32, ["N", 6]),
                   helper.make_tensor_value_info("num_dets64", TensorProto.INT64, ["N", 1]),
                   outputs[0],
                   helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["N", 6, 4]),
                   helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, ["N", 6])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              outputs, initializer=inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(plugin_domain, 1)] if plugin_domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def expected(model, x):
    """Body on a plain ORT session + the numpy reference NMS."""
    body = onnx.ModelProto()
    body.CopyFrom(model)
    keep = [n for n in body.graph.node if n.name not in ("nms", "cast", "ident")]
    del body.graph.node[:]
    body.graph.node.extend(keep)
    del body.graph.output[:]
    body.graph.output.extend([helper.make_value_info("boxes", onnx.TypeProto()),
                              helper.make_value_info("scores", onnx.TypeProto())])
    del body.opset_import[1:]
    boxes, scores = make_session(body).run(None, {"x": x})
    num, b, s, c = nms_reference.ref_efficient_nms(boxes, scores, **NMS_ATTRS)
    return {"classes": c, "num_dets64": num.astype(np.int64), "scores": scores, "det_boxes": b, "det_scores": s}


@pytest.mark.parametrize("domain", ["TRT", ""])
def test_find_plugin_nodes(domain):
    model = tiny_model(domain)
    assert [n.name for n in find_plugin_nodes(model)] == ["nms"]
    assert find_plugin_nodes(tiny_model(with_nms=False)) == []


def test_split_plan_body_passes_checker():
    plan = split_model(tiny_model())
    onnx.checker.check_model(plan.body, full_check=True)
    assert plan.body_output_names == ["boxes", "scores"]
    assert [n.name for n in plan.tail_nodes] == ["nms", "cast", "ident"]
    assert plan.output_names == OUTPUTS
    assert [i.name for i in plan.body.graph.input] == ["x"]
    assert {o.domain for o in plan.body.opset_import} == {""}
    types = {o.name: o.type.tensor_type.elem_type for o in plan.body.graph.output}
    assert types == {"boxes": TensorProto.FLOAT, "scores": TensorProto.FLOAT}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("qdq", [False, True])
@pytest.mark.parametrize("domain", ["TRT", ""])
def test_split_runner_matches_body_plus_reference(batch, qdq, domain):
    model = tiny_model(domain, qdq=qdq)
    x = np.random.default_rng(batch).normal(0, 1, (batch, 3, 4, 4)).astype(np.float32)
    runner = SplitRunner(model)
    assert runner.has_plugins and runner.input_names == ["x"] and runner.input_shapes == [["N", 3, 4, 4]]
    assert runner.output_names == OUTPUTS
    outs = runner.run({"x": x})
    want = expected(model, x)
    assert [o.dtype for o in outs] == [np.int32, np.int64, np.float32, np.float32, np.float32]
    assert [o.shape for o in outs] == [(batch, 6), (batch, 1), (batch, 16, 5), (batch, 6, 4), (batch, 6)]
    assert int(outs[1].sum()) > 0
    for name, got in zip(OUTPUTS, outs):
        np.testing.assert_allclose(got, want[name], rtol=1e-5, atol=1e-5, err_msg=name)
    body = runner.run_body({"x": x})
    assert sorted(body) == ["boxes", "scores"]


def test_runner_from_path_and_without_plugins(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(tiny_model(), str(path))
    x = np.zeros((2, 3, 4, 4), np.float32)
    assert len(SplitRunner(path).run({"x": x})) == 5
    plain = SplitRunner(tiny_model(with_nms=False))
    assert not plain.has_plugins and plain.output_names == ["scores"]
    (scores,) = plain.run({"x": x})
    assert scores.shape == (2, 16, 5)


def test_plugin_reading_graph_inputs_directly():
    node = helper.make_node("EfficientNMS_TRT", ["boxes", "scores"], ["n", "b", "s", "c"], name="nms",
                            score_threshold=0.5, iou_threshold=0.5, max_output_boxes=3, box_coding=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 3, 4]),
                                            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 3, 1])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in "nbsc"])
    runner = SplitRunner(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    boxes = np.array([[[0, 0, 1, 1], [0, 0, 1, 1.1], [5, 5, 6, 6]]], np.float32)
    n, b, s, c = runner.run({"boxes": boxes, "scores": np.array([[[0.9], [0.8], [0.7]]], np.float32)})
    assert n.tolist() == [[2]] and s[0, :2].tolist() == pytest.approx([0.9, 0.7])


def test_unknown_plugin_op_error_names_op_node_and_fix():
    model = tiny_model(op_type="Foo_TRT")
    with pytest.raises(UnsupportedOpError) as ei:
        SplitRunner(model)
    assert str(ei.value) == ("no handler for op 'Foo_TRT' (node 'nms') (fix: register one with "
                             "@xtrt.ops.REGISTRY.register('Foo_TRT') in a .py file and pass --plugin my_ops.py)")


def test_feeds_that_do_not_match_are_a_data_error():
    runner = SplitRunner(tiny_model())
    with pytest.raises(DataError, match=r"missing input\(s\) \['x'\].*feed exactly the model's inputs \['x'\]"):
        runner.run({"images": np.zeros((1, 3, 4, 4), np.float32)})
    with pytest.raises(DataError, match="ONNX Runtime could not run the model"):
        runner.run({"x": np.zeros((1, 3, 4, 4), np.float64)})


def test_qdq_models_run_without_ort_qdq_fusion():
    """ORT's CPU QLinearConv fusion saturates on x86 without VNNI: a Q/DQ model is run at 'basic'
    (DequantizeLinear + float op, TensorRT's semantics); a float model keeps 'all'."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from xtrt.runtime.session import make_session

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    qdq = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
                            "g", [x], [y], inits)
    flt = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    levels = {}
    for name, g in (("qdq", qdq), ("float", flt)):
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        levels[name] = make_session(m).get_session_options().graph_optimization_level
    assert levels == {"qdq": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                      "float": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}

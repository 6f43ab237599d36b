"""Ops newer than opset 13 rewritten into opset-13 ops (xtrt.model.lower); prepare_model's own
ONNX Runtime check proves each rewrite equal to the original."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from xtrt.model.lower import lower_new_ops
from xtrt.model.opset import model_opset
from xtrt.model.prepare import prepare_model
from xtrt.runtime.session import make_session


def one_op(op, opset, inputs=(), **attrs):
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in inputs]
    node = helper.make_node(op, ["x", *[k for k, _ in inputs]], ["y"], name="the_op", **attrs)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      ["N", 4, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


rng = np.random.default_rng(0)
CASES = {
    "hardswish": one_op("HardSwish", 14),
    "mish": one_op("Mish", 18),
    "gelu": one_op("Gelu", 20),
    "gelu_tanh": one_op("Gelu", 20, approximate="tanh"),
    "layernorm_axis1": one_op("LayerNormalization", 17,
                              [("s", rng.random((4, 6, 6), dtype=np.float32)),
                               ("b", rng.random((4, 6, 6), dtype=np.float32))], axis=1),
    "groupnorm_18": one_op("GroupNormalization", 18,
                           [("s", np.float32([0.5, 2.0])), ("b", np.float32([0.1, -0.3]))],
                           num_groups=2),
    "groupnorm_21": one_op("GroupNormalization", 21,
                           [("s", rng.random(4, dtype=np.float32)),
                            ("b", rng.random(4, dtype=np.float32))], num_groups=2),
    "castlike": one_op("CastLike", 15, [("like", np.zeros(1, np.float32))]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lowered_op_prepares_and_matches_ort(name):
    m = CASES[name]
    if name == "groupnorm_18":
        try:
            make_session(m)
        except Exception:
            pytest.skip("this onnxruntime no longer runs GroupNormalization-18")
    pm = prepare_model(m, [2, 4, 6, 6])   # raises when the rewrite differs on ORT
    assert model_opset(pm.model) == 13
    op = m.graph.node[0].op_type
    assert op not in {n.op_type for n in pm.model.graph.node}
    assert any(s.startswith(f"lowered {op} x1") for s in pm.steps)
    x = rng.random((3, 4, 6, 6), dtype=np.float32)
    ref = make_session(m).run(None, {"x": x})[0]
    got = make_session(pm.model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_groupnorm_18_scales_per_group():
    m = onnx.ModelProto()
    m.CopyFrom(CASES["groupnorm_18"])
    low, _ = lower_new_ops(m, 18)
    x = rng.random((1, 4, 6, 6), dtype=np.float32)
    got = make_session(low).run(None, {"x": x})[0]
    xr = x.reshape(1, 2, -1)
    norm = ((xr - xr.mean(-1, keepdims=True)) / np.sqrt(xr.var(-1, keepdims=True) + 1e-5))
    want = (norm * np.float32([0.5, 2.0])[None, :, None] +
            np.float32([0.1, -0.3])[None, :, None]).reshape(x.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)

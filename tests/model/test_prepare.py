import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import make_classifier
from xtrt.errors import ModelError
from xtrt.model.load import load_model
from xtrt.model.opset import convert_opset
from xtrt.model.prepare import prepare_model
from xtrt.runtime.session import make_session


def test_prepare_keeps_dynamic_batch_and_matches_on_ort(tiny_model):
    pm = prepare_model(load_model(tiny_model), [2, 3, 32, 32])
    assert pm.dynamic_batch and pm.batch_dim == "batch"
    assert pm.max_abs_diff is not None and pm.max_abs_diff < 1e-5
    dims = [d.dim_param or d.dim_value for d in pm.model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 32, 32]
    x = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    assert make_session(pm.model).run(None, {"input": x})[0].shape == (5, 10)


@pytest.mark.parametrize("opset", [11, 17])
def test_prepare_converts_to_opset_13(tmp_path, opset):
    m = load_model(make_classifier(tmp_path / "m.onnx", opset=opset))
    pm = prepare_model(m, [1, 3, 32, 32])
    assert pm.source_opset == opset
    assert [i.version for i in pm.model.opset_import if i.domain in ("", "ai.onnx")] == [13]


def test_opset_18_reduce_axes_input_becomes_attribute():
    axes = numpy_helper.from_array(np.array([2, 3], np.int64), "axes")
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="rm", keepdims=1)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 3, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 1, 1])], [axes])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    low = convert_opset(m, 13)
    onnx.checker.check_model(low)
    n = low.graph.node[0]
    assert list(n.input) == ["x"] and helper.get_attribute_value(n.attribute[-1]) == [2, 3]
    x = np.random.default_rng(0).random((1, 2, 3, 4), dtype=np.float32)
    assert np.allclose(make_session(low).run(None, {"x": x})[0], x.mean(axis=(2, 3), keepdims=True))


def test_op_missing_at_opset_13_is_named():
    node = helper.make_node("LayerNormalization", ["x", "s"], ["y"], name="ln")
    s = numpy_helper.from_array(np.ones(4, np.float32), "s")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [s])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelError) as e:
        convert_opset(m, 13)
    assert str(e.value).startswith("op LayerNormalization (node 'ln') does not exist at opset 13")


def test_shape_errors(tmp_path):
    fixed = load_model(make_classifier(tmp_path / "f.onnx", batch=1))
    with pytest.raises(ModelError) as e:
        prepare_model(fixed, [1, 3, 48, 32])
    assert str(e.value).startswith("input.shape [1, 3, 48, 32] does not match input 'input' "
                                   "[1, 3, 32, 32] at dim 2 (48 vs 32)")
    with pytest.raises(ModelError) as e:
        prepare_model(fixed, [4, 3, 32, 32])
    assert "at dim 0 (4 vs 1)" in str(e.value) and "re-export the model with dynamic axes" in str(e.value)
    with pytest.raises(ModelError, match="has 3 dims but input 'input' has 4"):
        prepare_model(fixed, [1, 3, 32])


def test_dynamic_spatial_dims_need_a_shape(tmp_path):
    m = load_model(make_classifier(tmp_path / "d.onnx", hw=("h", "w")))
    with pytest.raises(ModelError) as e:
        prepare_model(m, None)
    assert "set input.shape in the config" in str(e.value)
    pm = prepare_model(m, [1, 3, 40, 40])
    assert pm.input_shape == [1, 3, 40, 40]


def test_missing_and_corrupt_model_files(tmp_path):
    with pytest.raises(ModelError) as e:
        load_model(tmp_path / "none.onnx")
    assert str(e.value).startswith(f"model file '{tmp_path / 'none.onnx'}' does not exist")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    with pytest.raises(ModelError, match="is not a readable ONNX model"):
        load_model(bad)

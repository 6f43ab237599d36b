"""Errors a user can act on: the node (name and op type), why, and the config line to exclude
it; ONNX Runtime's message passed through whole."""
from __future__ import annotations

import numpy as np
import pytest

from tests.models import make_models as mm
from xtrt.errors import DataError, ModelError, QuantizationError


def test_missing_scale_names_node_type_and_exclusion_line():
    from xtrt.backend.ppq import CalibrationResult
    from xtrt.quant.export import export_qdq
    from xtrt.quant.placement import Placement

    model = mm.se_block()
    placement = Placement(quantize=["stem", "se_reduce"])
    cal = CalibrationResult(act_scales={("stem", 0): 0.01})
    with pytest.raises(QuantizationError) as e:
        export_qdq(model, cal, placement)
    text = str(e.value)
    assert "cannot quantize node 'se_reduce' (Conv)" in text
    assert "no scale" in text and "'se_gap_out'" in text
    assert "quantization.exclude_nodes: [se_reduce]" in text


def test_ppq_op_execution_error_names_the_node():
    from xtrt.backend.ppq import _op_execution_error

    try:
        try:
            raise RuntimeError("shape '[4, 200]' is invalid for input of size 200")
        except RuntimeError as inner:
            raise RuntimeError("Op Execution Error: flatten(Type: Reshape, Num of Input: 2, "
                               "Num of Output: 1)") from inner
    except RuntimeError as exc:
        err = _op_execution_error(exc, None)
    assert isinstance(err, QuantizationError)
    text = str(err)
    assert "node 'flatten' (Reshape)" in text and "shape '[4, 200]' is invalid" in text
    assert "calibration.batch_size: 1" in text


def test_ort_invalid_dimensions_message_is_whole():
    from xtrt.runtime.split import SplitRunner

    m = mm.conv_net(13)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    runner = SplitRunner(m)
    with pytest.raises(DataError) as e:
        runner.run({"input": np.zeros((4, 3, mm.HW, mm.HW), np.float32)})
    text = str(e.value)
    assert "Got invalid dimensions for input: input" in text
    assert "index: 0 Got: 4 Expected: 1" in text and "\n" not in text


def test_op_without_lowering_rule_is_named_with_the_rules():
    from onnx import TensorProto, helper

    from xtrt.model.opset import convert_opset

    node = helper.make_node("Trilu", ["x"], ["y"], name="mask")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])])
    with pytest.raises(ModelError) as e:
        convert_opset(helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)]), 13)
    assert "op Trilu (node 'mask') does not exist at opset 13" in str(e.value)
    assert "no rule" in str(e.value) and "HardSwish" in str(e.value)


def test_batch_baked_where_it_cannot_be_rewritten_is_one_line():
    """A Reshape target [2, 4, 64] on a [N, 8, 8, 8] tensor is not provably the batch: the
    prepared model then fails at batch 2 and the error carries ONNX Runtime's message, which
    names the node."""
    from onnx import helper, numpy_helper

    from xtrt.model.prepare import prepare_model

    m = mm.paddle_batch()
    shape = next(i for i in m.graph.initializer if i.name == "flat_shape")
    shape.CopyFrom(numpy_helper.from_array(np.array([2, 4, 64], np.int64), "flat_shape"))
    m.graph.initializer.append(numpy_helper.from_array(np.array([-1, 512], np.int64), "flat2"))
    fc = next(n for n in m.graph.node if n.name == "fc")
    fc.input[0] = "flat2_out"
    m.graph.node.insert(2, helper.make_node("Softmax", ["flatten_reshape_out"], ["soft"],
                                            name="group_softmax", axis=0))
    m.graph.node.insert(3, helper.make_node("Reshape", ["soft", "flat2"], ["flat2_out"],
                                            name="regroup"))
    with pytest.raises(ModelError) as e:
        prepare_model(m, [1, 3, mm.HW, mm.HW])
    text = str(e.value)
    assert "does not run at batch 2" in text and "Name:'flatten_reshape'" in text
    assert "requested shape:{2,4,64}" in text and "\n" not in text

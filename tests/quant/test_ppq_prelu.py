"""PPQ's executor runs ONNX PRelu with a broadcast slope ([C, 1, 1], what torch exports)."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _prelu_model(slope_shape) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    slope = numpy_helper.from_array(rng.uniform(0.05, 0.5, slope_shape).astype(np.float32), "slope")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("PRelu", ["c", "slope"], ["y"], name="prelu")],
        "prelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], [w, slope])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_ppq_executor_runs_prelu_with_channel_slope():
    import onnxruntime as ort

    from xtrt.backend.ppq import build_executor

    model = _prelu_model((4, 1, 1))
    x = np.random.default_rng(1).normal(size=(2, 3, 8, 8)).astype(np.float32)
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    import torch

    out = build_executor(model).forward({"x": torch.from_numpy(x)})[0]
    np.testing.assert_allclose(np.asarray(out.cpu()), ref, rtol=1e-5, atol=1e-5)

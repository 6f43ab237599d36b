"""Session creation: provider choice and the CUDA errors users see."""
from __future__ import annotations

import pytest

from tests.conftest import make_classifier
from xtrt.errors import DeviceError
from xtrt.runtime import session as S


def test_cuda_without_onnxruntime_gpu_names_the_install(monkeypatch):
    monkeypatch.setattr(S, "cuda_ep_available", lambda: False)
    with pytest.raises(DeviceError) as ei:
        S.providers_for("cuda")
    assert "no CUDAExecutionProvider" in str(ei.value) and "onnxruntime-gpu" in ei.value.hint


def test_cuda_ep_that_does_not_start_is_one_clear_error(monkeypatch, tmp_path):
    """onnxruntime-gpu installed but its CUDA/cuDNN libraries missing: ORT silently falls back to
    the CPU provider; xtrt says so instead of running on the CPU under a 'cuda' label."""
    import onnxruntime as ort

    real = ort.InferenceSession

    def cpu_only(model, sess_options=None, providers=None):
        return real(model, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(S, "cuda_ep_available", lambda: True)
    monkeypatch.setattr(ort, "InferenceSession", cpu_only)
    with pytest.raises(DeviceError) as ei:
        S.make_session(str(make_classifier(tmp_path / "m.onnx")), "cuda")
    assert str(ei.value).startswith("onnxruntime-gpu could not start its CUDA execution provider")
    assert "--device cpu" in ei.value.hint


def test_unknown_device():
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        S.providers_for("tpu")


def _fp16_qdq_conv(bias: float = 20.0):
    """x (float32) -> Cast fp16 -> Q/DQ -> Conv(int8 W per channel, float16 bias ``bias``) -> Q/DQ
    -> Cast float32: the layout of ModelOpt's ``high_precision_dtype=fp16`` models.  A Conv whose
    output is quantized is where ONNX Runtime's WeightBiasQuantization rewrites the bias as
    round(bias / (x_scale * w_scale)) in float16; with bias 20 that is ~1e6, past float16's 65504."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.1, (16, 8, 3, 3)).astype(np.float32)
    ws = (np.abs(w).reshape(16, -1).max(1) / 127).astype(np.float16)
    wq = np.clip(np.round(w / ws.astype(np.float32).reshape(-1, 1, 1, 1)), -127, 127)
    h = np.float16
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (np.full(16, bias, h), "b"), (h(2.0 / 127), "xs"), (np.int8(0), "xz"), (ws, "ws"),
        (np.zeros(16, np.int8), "wz"), (wq.astype(np.int8), "wq"), (h(40.0 / 127), "ys"),
        (np.int8(0), "yz"))]
    node = helper.make_node
    nodes = [node("Cast", ["x"], ["xh"], to=TensorProto.FLOAT16),
             node("QuantizeLinear", ["xh", "xs", "xz"], ["xq"]),
             node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
             node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=0),
             node("Conv", ["xd", "wd", "b"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("QuantizeLinear", ["c", "ys", "yz"], ["cq"]),
             node("DequantizeLinear", ["cq", "ys", "yz"], ["cd"]),
             node("Cast", ["cd"], ["y"], to=TensorProto.FLOAT)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      [1, 8, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


def test_basic_sessions_do_not_requantize_a_float16_bias():
    """xtrt scores every Q/DQ model at ORT's 'basic' level; there WeightBiasQuantization would
    overflow a float16 bias (ModelOpt fp16 EfficientNet-Lite0: -10.8 dB against FP32 with it, 17.4
    without).  make_session turns the pass off: 'basic' then computes what no optimisation does."""
    import numpy as np
    import onnxruntime as ort

    m = _fp16_qdq_conv()
    x = np.random.default_rng(3).uniform(-2, 2, (1, 8, 16, 16)).astype(np.float32)
    step = 40.0 / 127                                         # one step of the output Q/DQ
    off = S.make_session(m, optimization="disable").run(None, {"x": x})[0]
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    plain = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    assert np.abs(plain.run(None, {"x": x})[0] - off).max() > 10 * step   # the pass does bite
    for sess in (S.make_session(m), S.make_session(m, optimization="basic")):  # auto -> basic
        assert np.abs(sess.run(None, {"x": x})[0] - off).max() <= 1.01 * step

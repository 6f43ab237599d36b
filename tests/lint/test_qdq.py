"""xtrt.lint.qdq on tiny Q/DQ models: one passing model, and one failing model per check."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from . import tiny_models as tm
from xtrt.lint.qdq import Finding, errors, lint_qdq, summarize


def _run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _only(findings, severity):
    return [f for f in findings if f.severity == severity]


def test_correct_qdq_conv_passes_and_matches_float():
    model = tm.qdq_conv()
    onnx.checker.check_model(model)
    assert lint_qdq(model) == []
    x = np.random.default_rng(0).uniform(-2, 2, (2, 8, 16, 16)).astype(np.float32)
    ref, q = _run(tm.float_conv(), x), _run(model, x)
    sqnr = 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - q) ** 2))
    assert sqnr > 25, sqnr  # the model the lint accepts is a sane int8 model


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_per_channel_axis_follows_transB(trans_b):
    assert lint_qdq(tm.qdq_gemm(trans_b=trans_b)) == []
    bad = tm.qdq_gemm(trans_b=trans_b, weight_axis=1 - (0 if trans_b else 1))
    errs = errors(lint_qdq(bad))
    assert len(errs) == 1 and errs[0].node == "fc" and "output channels are axis" in errs[0].message


def test_matmul_constant_weight_is_a_weight():
    assert lint_qdq(tm.qdq_gemm(op="MatMul")) == []
    errs = errors(lint_qdq(tm.qdq_gemm(op="MatMul", weight_axis=0)))
    assert [f.check for f in errs] == ["axis"]


def test_weight_not_quantized_is_an_error_naming_input_and_node():
    errs = errors(lint_qdq(tm.qdq_conv(quant_weight=False)))
    assert len(errs) == 1
    assert errs[0].message.startswith("input w (weight) of node conv is not quantized but should be")


def test_activation_not_quantized_is_an_error():
    errs = errors(lint_qdq(tm.qdq_conv(quant_act=False)))
    assert len(errs) == 1
    assert errs[0].message.startswith("input x (activation) of node conv is not quantized but should be")


def test_float_layer_is_warning_error_when_strict_info_when_declared():
    model = tm.qdq_conv_then_float_conv()
    found = lint_qdq(model)
    assert errors(found) == []
    (warn,) = _only(found, "warning")
    assert warn.node == "conv2"
    assert warn.message.startswith("input y1 of node conv2 is not quantized but should be")
    assert [f.node for f in errors(lint_qdq(model, strict=True))] == ["conv2"]
    declared = lint_qdq(model, float_nodes=["conv2"])
    assert [(f.severity, f.node) for f in declared] == [("info", "conv2")]


def test_float_layer_recorded_by_the_exporter_is_kept_float_not_a_hazard():
    from xtrt.lint.qdq import hazard_counts, kept_float
    from xtrt.trt.kept_float import read_kept_float, write_kept_float

    model = tm.qdq_conv_then_float_conv()
    assert hazard_counts(lint_qdq(model)) == {"unquantized": 1}    # another tool's model
    write_kept_float(model, {"conv2": "DFL decode: costs 0.02 mAP", "gone": "not in the graph"})
    assert read_kept_float(model) == {"conv2": "DFL decode: costs 0.02 mAP"}
    found = lint_qdq(model, strongly_typed=True)
    assert hazard_counts(found) == {}
    (k,) = kept_float(found)
    assert (k.severity, k.node) == ("info", "conv2")
    assert k.message == "Conv conv2 kept float by the exporter: DFL decode: costs 0.02 mAP"
    write_kept_float(model, {})
    assert read_kept_float(model) == {} and hazard_counts(lint_qdq(model)) == {"unquantized": 1}


def test_int32_bias_dequantize_is_an_error():
    errs = errors(lint_qdq(tm.qdq_conv(int32_bias=True)))
    assert len(errs) == 1 and errs[0].node == "b_DQ" and errs[0].check == "int32"
    assert "DequantizeLinear of int32 tensor b_int32" in errs[0].message
    assert "TensorRT's ONNX parser rejects it" in errs[0].message


def test_nonzero_zero_point_is_an_error():
    errs = errors(lint_qdq(tm.qdq_conv(act_zero_point=3)))
    assert {f.node for f in errs} == {"x_Q", "x_DQ"}
    assert all("zero point x_zp is not 0" in f.message for f in errs)


def test_uint8_zero_point_is_an_error():
    errs = errors(lint_qdq(tm.qdq_conv(zp_dtype=np.uint8)))
    assert errs and all("is uint8, not int8" in f.message for f in errs)


def test_quantize_without_zero_point_is_an_error():
    errs = errors(lint_qdq(tm.qdq_conv(omit_act_zero_point=True)))
    assert [f.node for f in errs] == ["x_Q"]
    assert "produces uint8" in errs[0].message


def test_per_channel_axis_must_be_output_channels():
    errs = errors(lint_qdq(tm.qdq_conv(cin=16, cout=16, weight_axis=1)))
    assert [f.check for f in errs] == ["axis"]
    assert "quantized per channel along axis 1, but its output channels are axis 0" in errs[0].message


def test_scale_count_must_match_channels():
    errs = errors(lint_qdq(tm.qdq_conv(weight_scale_count=4)))
    assert [f.check for f in errs] == ["axis"]
    assert "has 4 scales for 16 channels on axis 0" in errs[0].message


@pytest.mark.parametrize("bad, text", [(0.0, "values <= 0"), (-0.5, "values <= 0"),
                                       (float("inf"), "non-finite"), (float("nan"), "non-finite")])
def test_scales_must_be_positive_and_finite(bad, text):
    errs = errors(lint_qdq(tm.qdq_conv(bad_scale=bad)))
    assert {f.node for f in errs} == {"x_Q", "x_DQ"}
    assert all(text in f.message for f in errs)


def test_model_without_qdq_gives_one_finding_and_is_an_error():
    found = lint_qdq(tm.float_conv())
    assert [(f.severity, f.check) for f in found] == [("error", "no_qdq")]
    assert "not explicitly quantized (1 Conv/ConvTranspose/Gemm/MatMul nodes in float)" in found[0].message


def test_plugin_nodes_are_ignored():
    assert lint_qdq(tm.qdq_conv_with_plugin_tail()) == []


def test_findings_sorted_and_summarized():
    model = tm.qdq_conv_then_float_conv()
    found = lint_qdq(model, float_nodes=["nothing"]) + [Finding("error", "n", "m")]
    counts = summarize(found)
    assert counts == {"error": 1, "warning": 1, "info": 0}
    assert str(Finding("error", "conv", "bad")) == "ERROR   conv: bad"


def test_accepts_a_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(tm.qdq_conv(int32_bias=True), path)
    assert [f.check for f in errors(lint_qdq(path))] == ["int32"]

"""xtrt.lint.trt_rtx: TensorRT-RTX 1.7 AOT builds (SM89, no GPU) of tiny Q/DQ models."""
from __future__ import annotations

import importlib.util

import pytest

from . import tiny_models as tm
from xtrt.errors import XtrtError
from xtrt.lint import trt_rtx

needs_trt_rtx = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt_rtx_bindings") is None,
    reason="tensorrt_rtx_bindings not installed (pip install tensorrt-rtx-cu13-libs==1.7.1.116 "
           "tensorrt-rtx-cu13-bindings==1.7.1.116)")

LAYERS_MSG = """Layers:
Name: __myl_Quant_myl0_1, LayerType: kgen, Inputs: [ { Name: x, Dimensions: [-1,8,16,16], Datatype: Float, Format: (Linear) Row major }], Constants: [ { Name: c, Dimensions: [1], Datatype: Float, Format: (Linear) }], Outputs: [ { Name: xq, Dimensions: [-1,8,16,16], Datatype: Int8, Format: (NHWC) Channel major format }], TacticName: __myl_Quant_0x1, StreamId: 0, Metadata: [ONNX Layer: x_Q]
Name: conv_myl0_2, LayerType: correlation, Inputs: [ { Name: xq, Dimensions: [-1,8,16,16], Datatype: Int8, Format: (NHWC) Channel major format }], Constants: [ { Name: w, Dimensions: [16,8,3,3], Datatype: Int8, Format: (NHWC) }, { Name: b, Dimensions: [1,16,1,1], Datatype: Float, Format: (NHWC) }], Outputs: [ { Name: y, Dimensions: [-1,16,16,16], Datatype: Float, Format: (NHWC) }], TacticName: __myelin_CASK_STUB, StreamId: 0, Metadata: [ONNX Layer: conv][ONNX Layer: x_DQ][ONNX Layer: w_DQ]

I/O Tensors:
 Name: x, IOMode: Input, DataType: Float, Dimensions: [-1,8,16,16], Location: Device
"""


def test_parse_layers_reads_types_datatypes_and_onnx_nodes():
    layers = trt_rtx.parse_layers(LAYERS_MSG)
    assert [layer.name for layer in layers] == ["__myl_Quant_myl0_1", "conv_myl0_2"]
    q, conv = layers
    assert (q.layer_type, q.input_types, q.output_types, q.onnx_nodes) == \
        ("kgen", ["Float"], ["Int8"], ["x_Q"])
    assert conv.is_convolution and conv.int8_input and not q.is_convolution
    assert conv.constant_types == ["Int8", "Float"]
    assert conv.onnx_nodes == ["conv", "x_DQ", "w_DQ"]
    rep = trt_rtx.BuildReport(parsed=True, built=True, layers=layers)
    assert rep.int8_convolutions == 1 and rep.layer_types() == {"kgen": 1, "correlation": 1}


def test_missing_bindings_is_a_user_error_with_pip_hint(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorrt_rtx_bindings" else real(name, *a))
    with pytest.raises(XtrtError) as exc:
        trt_rtx.build_with_trt_rtx(tm.qdq_conv())
    assert "tensorrt_rtx_bindings) is not installed" in str(exc.value)
    assert "pip install tensorrt-rtx-cu13-libs==1.7.1.116 tensorrt-rtx-cu13-bindings==1.7.1.116" \
        in str(exc.value)


@needs_trt_rtx
def test_qdq_conv_builds_with_int8_convolution():
    rep = trt_rtx.build_with_trt_rtx(tm.qdq_conv())
    assert rep.ok, rep.summary()
    assert rep.label == "TensorRT-RTX 1.7 AOT build, SM89"
    convs = rep.convolutions
    assert len(convs) == 1 and convs[0].input_types == ["Int8"]
    assert "conv" in convs[0].onnx_nodes and "w_DQ" in convs[0].onnx_nodes
    assert rep.int8_convolutions == 1 and rep.engine_bytes > 0
    assert rep.summary().startswith("TensorRT-RTX 1.7 AOT build, SM89: built in")
    assert "1/1 convolutions take Int8" in rep.summary()


@needs_trt_rtx
def test_float_conv_takes_no_int8():
    rep = trt_rtx.build_with_trt_rtx(tm.float_conv().SerializeToString())
    assert rep.ok and rep.int8_convolutions == 0


@needs_trt_rtx
def test_int32_bias_dequantize_is_rejected_by_the_parser():
    rep = trt_rtx.build_with_trt_rtx(tm.qdq_conv(int32_bias=True))
    assert not rep.parsed and not rep.ok
    assert any("has type Int32 but must have type" in e for e in rep.parse_errors), rep.parse_errors
    assert "parse FAILED" in rep.summary()


@needs_trt_rtx
def test_plugin_model_fails_whole_and_builds_body_only():
    model = tm.qdq_conv_with_plugin_tail()
    whole = trt_rtx.build_with_trt_rtx(model)
    assert not whole.parsed and any("Plugin not found" in e for e in whole.parse_errors)
    body = trt_rtx.build_with_trt_rtx(model, build_body_only=True)
    assert body.ok, body.summary()
    assert body.body_only and body.plugin_nodes == ["batched_nms"]
    assert "(body before plugin nodes batched_nms)" in body.summary()
    assert body.int8_convolutions == 1


@needs_trt_rtx
def test_dynamic_non_batch_dims_need_shapes():
    model = tm.qdq_conv()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param = "H"
    with pytest.raises(XtrtError, match="dynamic dimensions .* besides the batch"):
        trt_rtx.build_with_trt_rtx(model)
    rep = trt_rtx.build_with_trt_rtx(
        model, shapes={"x": ((1, 8, 8, 16), (1, 8, 16, 16), (2, 8, 32, 16))})
    assert rep.ok, rep.summary()


@needs_trt_rtx
def test_engine_judge_counts_float_islands_and_half_layers():
    """The float conv of an FP32 Q/DQ graph builds as a Float layer; cast to FP16 it is Half."""
    from xtrt.quant.fp16 import convert_fp16

    m = tm.qdq_conv_then_float_conv()
    fp32, fp16 = trt_rtx.engine_judge(m), trt_rtx.engine_judge(convert_fp16(m))
    assert fp32["label"] == "TensorRT-RTX 1.7 AOT build, SM89" and fp32["accepted"]
    assert fp32["int8_convolutions"] == 1 and fp32["convolutions"] == 2
    assert [x["onnx_nodes"] for x in fp32["fp32_islands"]] == [["conv2"]]
    assert fp32["half_layers"] == 0
    assert fp16["accepted"] and fp16["int8_convolutions"] == 1 and fp16["fp32_islands"] == []
    assert fp16["half_layers"] >= 1
    assert any("conv" in x["onnx_nodes"] and "x_DQ" in x["onnx_nodes"]
               for x in fp16["engine_layers"])       # the ONNX nodes fused into the Int8 conv
    body = trt_rtx.engine_judge(tm.qdq_conv_with_plugin_tail())
    assert body["accepted"] and body["body_only"] and body["plugin_nodes"] == ["batched_nms"]


@needs_trt_rtx
def test_fp16_export_at_opset_19_leaves_no_float_layer_after_the_last_int8_gemm():
    """qdq_gemm_softmax: with Casts around its Q/DQ (opset 13) TensorRT-RTX runs the Int8 Gemm's
    epilogue, bias and Softmax in one kernel Float in and out (a Float layer beside the Gemm, as
    on five corpus models); with float16 Q/DQ scales (opset 19) the Gemm writes Half and no
    layer runs Float in and out."""
    from xtrt.quant.fp16 import convert_fp16

    m = tm.qdq_gemm_softmax()
    old, new = (trt_rtx.engine_judge(convert_fp16(m, qdq_opset=o)) for o in (13, 19))
    for j in (old, new):
        assert j["accepted"]
        (gemm,) = [x for x in j["engine_layers"] if x["type"] == "gemm"]
        assert gemm["in"] == ["Int8"] and "fc" in gemm["onnx_nodes"]
    assert [sorted(x["onnx_nodes"]) for x in old["fp32_islands"]] == [
        ["bias", "fc", "softmax", "w_DQ", "x_DQ", "y_Cast"]]
    assert new["fp32_islands"] == []
    (gemm,) = [x for x in new["engine_layers"] if x["type"] == "gemm"]
    assert gemm["out"] == ["Half"]


@needs_trt_rtx
def test_two_gemm_heads_on_one_qdq_build_without_float_layers():
    """qdq_two_gemm_heads (MTCNN ONet's head): the Gemm whose bias keeps float32 scales has its
    own Q/DQ pair, so TensorRT-RTX builds it (one scale type per pair and per GEMM) and the
    Softmax head's Gemm writes Half: no layer runs Float in and out."""
    from xtrt.quant.fp16 import convert_fp16

    j = trt_rtx.engine_judge(convert_fp16(tm.qdq_two_gemm_heads()))
    assert j["accepted"], j["errors"]
    gemms = [x for x in j["engine_layers"] if x["type"] == "gemm"]
    assert len(gemms) == 2 and all(x["in"] == ["Int8"] for x in gemms)
    assert j["fp32_islands"] == []


def test_explain_islands_needs_a_reason_for_every_node_it_computes():
    """Glue (Q/DQ/Cast) and the nodes of an Int8 layer need none; one reasoned node does not
    explain an island that computes another node without a reason."""
    import copy

    m = tm.qdq_conv_then_float_conv()
    judged = {"engine_layers": [{"in": ["Int8"], "onnx_nodes": ["conv", "x_DQ"]},
                                {"in": ["Float"], "onnx_nodes": ["conv", "conv2"]}],
              "fp32_islands": [{"layer": "L", "onnx_nodes": ["conv", "x_DQ", "conv2"]}]}
    got = trt_rtx.explain_islands(copy.deepcopy(judged), {"conv2": "kept FP32: big"}, m)
    assert got["fp32_islands"][0]["reason"] == "conv2: kept FP32: big"
    assert got["unexplained_fp32_islands"] == 0
    got = trt_rtx.explain_islands(copy.deepcopy(judged), {"conv": "INT8"}, m)
    assert got["fp32_islands"][0]["reason"] is None
    assert got["fp32_islands"][0]["unexplained"] == ["conv2"]
    assert got["unexplained_fp32_islands"] == 1

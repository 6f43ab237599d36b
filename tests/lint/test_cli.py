"""``python -m xtrt.lint`` driven in-process through main(argv) / run_main."""
from __future__ import annotations

import importlib.util
import json

import onnx
import pytest

from xtrt.cli import run_main
from xtrt.lint.__main__ import main

from . import tiny_models as tm


@pytest.fixture
def save(tmp_path):
    def _save(model, name="m.onnx"):
        path = tmp_path / name
        onnx.save(model, path)
        return str(path)
    return _save


def test_clean_model_passes(save, capsys):
    assert main([save(tm.qdq_conv())]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1].startswith("PASSED xtrt.lint in ")
    assert "0 errors, 0 warnings, 0 info | python -m xtrt.lint " in out[-1]


def test_errors_fail_with_exit_1(save, capsys):
    assert main([save(tm.qdq_conv(int32_bias=True))]) == 1
    out = capsys.readouterr().out
    assert "ERROR   b_DQ: DequantizeLinear of int32 tensor b_int32" in out
    assert out.strip().splitlines()[-1].startswith("FAILED xtrt.lint")


def test_strict_turns_float_layers_into_errors(save, capsys):
    path = save(tm.qdq_conv_then_float_conv())
    assert main([path]) == 0
    assert "WARNING conv2: input y1 of node conv2 is not quantized but should be" in \
        capsys.readouterr().out
    assert main([path, "--strict"]) == 1


def test_quant_cfg_beside_model_declares_float_ops(save, tmp_path, capsys):
    path = save(tm.qdq_conv_then_float_conv())
    (tmp_path / "quant_cfg.json").write_text(json.dumps({"float_ops": {"conv2": "fallback"},
                                                         "decode_tail": []}))
    assert main([path, "--strict", "--show-info"]) == 0
    assert "INFO    conv2: Conv kept in float as declared" in capsys.readouterr().out


def test_missing_quant_cfg_is_a_user_error(save, capsys):
    rc = run_main(main, [save(tm.qdq_conv()), "--quant-cfg", "/nonexistent/quant_cfg.json"])
    assert rc == 1
    assert "error: --quant-cfg '/nonexistent/quant_cfg.json' does not exist (fix: check the path)" \
        in capsys.readouterr().err


def test_missing_model_is_a_user_error(capsys):
    assert run_main(main, ["/nonexistent/model.onnx"]) == 1
    assert "model file '/nonexistent/model.onnx' does not exist" in capsys.readouterr().err


def test_usage_error_exits_2(capsys):
    assert run_main(main, []) == 2


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx_bindings") is None,
                    reason="tensorrt_rtx_bindings not installed")
def test_trt_rtx_flag_builds_plugin_models_by_their_body_and_says_so(save, capsys):
    assert main([save(tm.qdq_conv()), "--trt-rtx"]) == 0
    out = capsys.readouterr().out
    assert "TensorRT-RTX 1.7 AOT build, SM89: built in" in out
    assert "1/1 convolutions take Int8" in out and "built the body" not in out
    plugin = save(tm.qdq_conv_with_plugin_tail(), "e2e.onnx")
    assert main([plugin, "--trt-rtx"]) == 0
    out = capsys.readouterr().out
    assert "built the body before the plugin nodes (batched_nms) automatically" in out
    assert "(body before plugin nodes batched_nms)" in out
    assert main([plugin, "--trt-rtx", "--body-only"]) == 0
    assert "(body before plugin nodes batched_nms)" in capsys.readouterr().out


def test_hazards_line_and_strongly_typed_flag(save, capsys):
    path = save(tm.qdq_conv_then_float_conv())
    assert main([path]) == 0
    assert "hazards: 1 (unquantized 1)" in capsys.readouterr().out
    assert main([path, "--strongly-typed"]) == 0
    out = capsys.readouterr().out
    assert "hazards: 2 (unquantized 1, fp32_region 1)" in out
    assert "FP32 region of 1 node(s) outside Q/DQ: conv2 [rule: a strongly-typed build" in out
    assert main([save(tm.float_conv(), "f.onnx")]) == 1          # no Q/DQ: never PASSED


def test_kept_float_by_the_exporter_is_its_own_count(save, capsys):
    from xtrt.trt.kept_float import write_kept_float

    model = tm.qdq_conv_then_float_conv()
    write_kept_float(model, {"conv2": "measured: INT8 costs 0.01 mAP"})
    assert main([save(model)]) == 0
    out = capsys.readouterr().out
    assert "hazards: 0; kept float by the exporter: 1" in out
    assert "conv2: Conv conv2 kept float by the exporter: measured: INT8 costs 0.01 mAP" in out

"""Real models, real photos: quantize with ``python -m xtrt.quant`` (in-process), then check the
Q/DQ model on ONNX Runtime (batch 1 and 4), with the lint, and with the TensorRT-RTX builder."""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import onnx
import pytest

pytestmark = pytest.mark.slow

MODELS = ["effnet_ts13", "effnet_dynamo18", "yolov8n"]
# Conv layers TensorRT-RTX must run on Int8 (EfficientNet-Lite0: all 49; YOLOv8n: all but the
# DFL conv of the decode tail, which xtrt keeps in float on purpose)
MIN_INT8_CONVS = {"effnet_ts13": 49, "effnet_dynamo18": 49, "yolov8n": 63}


@pytest.fixture(params=MODELS)
def result(request):
    return request.getfixturevalue(request.param), request.param


def _session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def test_quant_exit_code_and_files(result):
    q, _ = result
    assert q.rc == 0
    for name in ("quantized.onnx", "quant_cfg.json", "report.json", "report.md",
                 "calibration.cache", "dynamic_range.json", "resolved_config.yaml"):
        assert (q.out_dir / name).is_file(), name
    assert not list(q.out_dir.glob(".xtrt-staging-*"))


def test_outputs_keep_names_and_order(result):
    q, _ = result
    src = [o.name for o in onnx.load(str(q.source), load_external_data=False).graph.output]
    assert [o.name for o in onnx.load(str(q.quantized)).graph.output] == src


def test_runs_on_ort_at_batch_1_and_4(result):
    q, _ = result
    sess = _session(q.quantized)
    inp = sess.get_inputs()[0]
    assert not isinstance(inp.shape[0], int) or inp.shape[0] <= 0, "batch axis must stay dynamic"
    h, w = q.input_hw
    x4 = np.random.default_rng(0).uniform(-1, 1, (4, 3, h, w)).astype(np.float32)
    out4 = sess.run(None, {inp.name: x4})
    out1 = sess.run(None, {inp.name: x4[:1]})
    for a1, a4 in zip(out1, out4):
        assert a4.shape[0] == 4 and a1.shape[0] == 1
        assert np.all(np.isfinite(a4))
        np.testing.assert_allclose(a1[0], a4[0], rtol=1e-4, atol=1e-4)


def test_fidelity_numbers_are_sane(result):
    q, name = result
    report = json.loads((q.out_dir / "report.json").read_text())
    sqnr = [o["sqnr_db"] for o in report["outputs"].values()]
    assert all(s > 5.0 for s in sqnr), sqnr
    task = report["task"]
    if name.startswith("effnet"):
        assert task["kind"] == "classification" and task["top1_agreement"] >= 0.5
    else:
        assert task["kind"] == "detection"


def test_lint_finds_no_errors(result):
    from xtrt.lint.qdq import errors, lint_qdq

    q, _ = result
    cfg = json.loads((q.out_dir / "quant_cfg.json").read_text())
    floats = list(cfg.get("float_ops") or {}) + list(cfg.get("decode_tail") or [])
    found = lint_qdq(onnx.load(str(q.quantized)), float_nodes=floats)
    assert errors(found) == [], "\n".join(map(str, errors(found)))


@pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx_bindings") is None,
                    reason="tensorrt_rtx_bindings not installed")
def test_trt_rtx_builds_with_int8_convolutions(result):
    from xtrt.lint.trt_rtx import build_with_trt_rtx

    q, name = result
    # body only: the graph before any plugin node (none in these three, so the whole model)
    rep = build_with_trt_rtx(q.quantized, build_body_only=True)
    assert rep.ok, rep.summary() + "\n" + "\n".join(rep.parse_errors + rep.build_errors)
    assert rep.int8_convolutions >= MIN_INT8_CONVS[name], rep.summary()

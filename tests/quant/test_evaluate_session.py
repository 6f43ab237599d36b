"""INT8 models are scored on ONNX Runtime with Q/DQ semantics, not ORT's fused int8 kernels."""
from __future__ import annotations

import xtrt.runtime.split as split
from xtrt.quant.evaluate import Evaluator


def test_evaluate_model_runs_ort_at_basic_optimization(monkeypatch):
    seen = {}

    class FakeRunner:
        def __init__(self, model, device="cpu", **kwargs):
            seen.update(kwargs, device=device)

        def run(self, feeds):
            return []

    monkeypatch.setattr(split, "SplitRunner", FakeRunner)
    monkeypatch.setattr("xtrt.quant.evaluate.evaluate", lambda fn, data, rtol, atol, batches=None: "scored")
    ev = Evaluator(data=None, device="cpu", rtol=1e-2, atol=1e-3, judged_on="held-out images")
    assert ev.evaluate_model(object()) == "scored"
    # ORT's extended level fuses Q/DQ into QLinearConv, whose u8s8 AVX2 kernels saturate
    assert seen == {"device": "cpu", "optimization": "basic"}

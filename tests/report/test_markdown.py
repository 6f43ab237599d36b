"""Markdown rendering of a quant report dict: every section, and robustness to missing/odd keys."""
from __future__ import annotations

import math

from xtrt.report import REPORT_SCHEMA_VERSION
from xtrt.report.markdown import md_table, render_report_md

REPORT = {
    "schema_version": REPORT_SCHEMA_VERSION,
    "summary": {"model": "yolov8n.onnx", "status": "PASSED", "runtime_s": 41.27, "calib_images": 32},
    "outputs": {"output0": {"shape": [22, 2100], "sqnr_db": 24.513, "cosine": 0.99812, "isclose": 0.412,
                            "max_abs": 3.2, "mean_abs": 0.041, "nonfinite": 0,
                            "rank": [{"rank": 1, "mae": 0.02, "disagree_pct": 3.0}]},
                "identical": {"sqnr_db": math.inf, "cosine": 1.0, "rank": []}},
    "task": {"kind": "detect", "metrics": [{"name": "mAP50-95 vs FP32", "fp32": 1.0, "int8": 0.55,
                                             "delta": -0.45, "note": "1234 reference boxes"}]},
    "worst_layers": [{"name": "/model.22/cv3|2/Conv", "op_type": "Conv", "snr_db": 12.3}],
    "fallback": {"metric_name": "mAP50-95 vs FP32", "target": 0.9,
                 "trials": [{"n_fp32_layers": 0, "metric": 0.55, "passed": False},
                            {"n_fp32_layers": 3, "metric": 0.93, "passed": True, "chosen": True}]},
    "placement": {"quantized": 61, "kept_fp32": ["/model.22/Concat_5", "/model.22/Sigmoid"],
                  "notes": [{"tensor": "output0", "why": "mixes box pixels and scores"}]},
    "plots": {"worst layers": "plots/layer_snr.png"},
    "extra_section": [{"a": 1}],
}


def test_render_full_report():
    md = render_report_md(REPORT)
    assert md.startswith("# xtrt quantization report\n")
    order = ["## Summary", "## Output fidelity", "## Task metric", "## Worst layers", "## Fallback trials",
             "## Placement", "## Plots", "## extra_section"]
    positions = [md.index(h) for h in order]
    assert positions == sorted(positions)
    assert "- **status**: PASSED" in md and "- **runtime_s**: 41.27" in md
    assert "| output0 | 24.5 | 0.99812 | 41.2% | 3.2 | 0.041 |" in md
    assert "| identical | inf | 1.00000 |" in md
    assert "Rank agreement of `output0`" in md and "| 1 | 0.02 | 3.0 |" in md
    assert "| mAP50-95 vs FP32 | 1.0000 | 0.5500 | -0.4500 | 1234 reference boxes |" in md
    assert "/model.22/cv3\\|2/Conv" in md  # pipe escaped inside a table cell
    assert "| 3 | 0.9300 | yes | yes |" in md
    assert "### kept_fp32\n\n- /model.22/Concat_5\n- /model.22/Sigmoid" in md
    assert "| output0 | mixes box pixels and scores |" in md
    assert "![worst layers](plots/layer_snr.png)" in md
    assert "report schema 1" in md


def test_render_tolerates_missing_and_odd_keys():
    assert render_report_md({}) == "# xtrt quantization report\n"
    md = render_report_md({"model": "m.onnx", "outputs": {"y": {"sqnr_db": "inf"}}, "worst_layers": [],
                           "task": {"top1_agreement": "27/35"}, "fallback": [], "placement": "none needed"})
    assert "- **model**: m.onnx" in md and "| y | inf |" in md
    assert "- **top1_agreement**: 27/35" in md and "none needed" in md


def test_md_table_default_columns():
    assert md_table([{"a": 1, "b": "x"}, {"c": 2.5}]).splitlines() == [
        "| a | b | c |", "|---:|---|---:|", "| 1 | x | - |", "| - | - | 2.5 |"]


def test_fallback_result_dict_renders_added_layers():
    fb = {"trials": [{"trial": 0, "n_fp32_layers": 0, "fp32_layers": [], "metric": 0.4, "passed": False},
                     {"trial": 1, "n_fp32_layers": 2, "fp32_layers": ["a", "b"], "added": ["a", "b"],
                      "metric": 0.8, "passed": True}],
          "chosen": 1, "reached": True, "reason": "target met with 2 layer(s) in float"}
    md = render_report_md({"fallback": fb})
    assert "- **reason**: target met with 2 layer(s) in float" in md
    assert "| trial | FP32 layers | metric | passed | added |" in md
    assert "| 1 | 2 | 0.8000 | yes | a, b |" in md

"""Pure decision rules and figures: no model is run."""
from __future__ import annotations

import pytest

from xtrt.profile.ortprof import ort_top_ops
from xtrt.profile.session import device_busy_from_trace
from xtrt.profile.verdict import STAGES, decide, latency_stats, stage_shares, union_busy


def test_latency_stats_in_ms():
    st = latency_stats([0.010, 0.020, 0.030, 0.040])
    assert st.mean == pytest.approx(25.0)
    assert st.median == pytest.approx(25.0)
    assert st.min == pytest.approx(10.0) and st.max == pytest.approx(40.0)
    assert 39.0 < st.p99 <= 40.0
    assert st.count == 4


def test_union_busy_counts_overlaps_once():
    assert union_busy([(0, 10), (5, 15), (20, 25), (30, 30)]) == pytest.approx(20.0)
    assert union_busy([]) == 0.0


def test_stage_shares_cover_all_stages():
    sh = stage_shares({"decode": 1.0, "inference": 3.0}, 5.0)
    assert set(sh) == set(STAGES)
    assert sh["decode"] == pytest.approx(0.2) and sh["inference"] == pytest.approx(0.6)


@pytest.mark.parametrize("pre,inf,label", [
    (0.7, 0.2, "preprocessing-bound"),
    (0.1, 0.8, "inference-bound"),
    (0.4, 0.45, "balanced"),
])
def test_cpu_verdicts(pre, inf, label):
    v = decide({"decode": pre / 2, "preprocess": pre / 2, "inference": inf}, device="cpu", batch=8)
    assert v.label == label
    assert v.line.startswith(f"{label} at batch 8 on CPU: ")
    assert f"inference {inf:.0%}" in v.line
    assert "biggest stage:" in v.line


@pytest.mark.parametrize("busy,label", [(0.85, "GPU-bound"), (0.10, "CPU-bound"), (0.45, "balanced")])
def test_cuda_verdicts_use_gpu_busy_share(busy, label):
    v = decide({"preprocess": 0.5, "inference": 0.4}, device="cuda", batch=1, gpu_busy_share=busy)
    assert v.label == label
    assert f"GPU busy {busy:.0%} of wall time" in v.line
    assert "transfers" in v.line


def test_device_busy_from_trace_clips_to_steps():
    events = [
        {"name": "ProfilerStep#3", "ph": "X", "ts": 0, "dur": 100, "cat": "user_annotation"},
        {"name": "ProfilerStep#4", "ph": "X", "ts": 100, "dur": 100, "cat": "user_annotation"},
        {"name": "k1", "ph": "X", "ts": 10, "dur": 30, "cat": "kernel"},
        {"name": "k2", "ph": "X", "ts": 20, "dur": 30, "cat": "kernel"},     # overlaps k1
        {"name": "cp", "ph": "X", "ts": 190, "dur": 50, "cat": "gpu_memcpy"},  # half outside
        {"name": "op", "ph": "X", "ts": 0, "dur": 200, "cat": "cpu_op"},
    ]
    busy, wall = device_busy_from_trace(events)
    assert wall == pytest.approx(200e-6)
    assert busy == pytest.approx(50e-6)


def test_ort_top_ops_aggregates_by_op_type_over_chosen_runs():
    ev = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
          {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
          {"cat": "Node", "name": "a_kernel_time", "ts": 10, "dur": 1000,
           "args": {"op_name": "Conv", "provider": "CPUExecutionProvider"}},
          {"cat": "Node", "name": "b_kernel_time", "ts": 210, "dur": 3000,
           "args": {"op_name": "Conv", "provider": "CPUExecutionProvider"}},
          {"cat": "Node", "name": "c_kernel_time", "ts": 220, "dur": 500,
           "args": {"op_name": "Relu", "provider": "CPUExecutionProvider"}},
          {"cat": "Node", "name": "c_fence_before", "ts": 220, "dur": 9}]
    rows = ort_top_ops(ev, [1])
    assert [(r.name, r.calls, r.self_cpu_ms, r.provider) for r in rows] == \
        [("Conv", 1, 3.0, "CPU"), ("Relu", 1, 0.5, "CPU")]
    assert sum(r.calls for r in ort_top_ops(ev)) == 3

"""ONNX Runtime's own per-node profile, aggregated by op type for the top-ops table."""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Sequence

from xtrt.profile.session import OpRow

__all__ = ["load_ort_profile", "ort_top_ops", "run_windows"]

log = logging.getLogger(__name__)


def load_ort_profile(path: str | Path) -> list[dict]:
    """Events of an ORT profile JSON (a list of Chrome-trace events)."""
    with open(path) as f:
        data = json.load(f)
    return data if isinstance(data, list) else data.get("traceEvents", [])


def run_windows(events: list[dict]) -> list[tuple[float, float]]:
    """(start, end) in µs of every ``model_run`` of the session, in order."""
    runs = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events
            if e.get("cat") == "Session" and e.get("name") == "model_run"]
    return sorted(runs)


def ort_top_ops(events: list[dict], run_indices: Sequence[int] | None = None) -> list[OpRow]:
    """Per op type: calls and summed node time (ms) over the chosen runs (None: all runs).

    ORT reports host time per node; with the CUDA EP that is launch time, and device time is
    read from the torch trace's kernels instead.
    """
    windows = run_windows(events)
    if run_indices is not None:
        windows = [windows[i] for i in run_indices if 0 <= i < len(windows)]
    agg: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0, 0.0])
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        ts = float(e.get("ts", 0))
        if run_indices is not None and not any(a <= ts <= b for a, b in windows):
            continue
        args = e.get("args", {})
        key = (args.get("op_name", "?"), args.get("provider", ""))
        agg[key][0] += 1
        agg[key][1] += float(e.get("dur", 0)) / 1e3
    rows = [OpRow(op, "ort", int(c), ms, 0.0, provider.replace("ExecutionProvider", ""))
            for (op, provider), (c, ms) in agg.items()]
    rows.sort(key=lambda r: r.self_cpu_ms, reverse=True)
    return rows

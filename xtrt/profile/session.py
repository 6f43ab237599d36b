"""The torch profiler session: schedule, trace files, top ops and device busy time.

This is the one module that starts ``torch.profiler``.  Traces are written in the layout that
``tensorboard --logdir`` + torch-tb-profiler reads (``RUN/WORKER.<ns>.pt.trace.json``) and that
Perfetto / chrome://tracing open directly.

torch >= 2 files ``record_function`` ranges under the ``user_annotation`` category, which
torch-tb-profiler 0.4.3 drops from its Operator and Overview views.  The stage ranges are
therefore also filed as ``cpu_op`` (the category torch 1.x used for them), so that TensorBoard
lists ``decode`` / ``preprocess`` / ``inference`` ... with their host times; Perfetto shows the
same ranges either way.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ContextManager

from xtrt.profile.verdict import STAGES, union_busy

__all__ = ["ProfilerSession", "OpRow", "device_busy_from_trace", "STAGE_CATEGORY"]

log = logging.getLogger(__name__)

STAGE_CATEGORY = "cpu_op"
DEVICE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


@dataclass
class OpRow:
    """One row of the top-ops table (times in ms, summed over the active steps)."""

    name: str
    source: str            # torch | ort
    calls: int
    self_cpu_ms: float
    self_device_ms: float = 0.0
    provider: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def device_busy_from_trace(events: list[dict]) -> tuple[float, float]:
    """(device busy seconds, wall seconds) over the profiler steps of a Chrome trace.

    Busy is the union of kernel / memcpy / memset intervals (overlapping streams counted once),
    clipped to the ``ProfilerStep#`` ranges; wall is the sum of those ranges.
    """
    steps = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events
             if str(e.get("name", "")).startswith("ProfilerStep#") and e.get("ph") == "X"]
    dev = [(float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0))) for e in events
           if e.get("cat") in DEVICE_CATEGORIES and e.get("ph") == "X"]
    wall = sum(b - a for a, b in steps)
    if not steps:
        return 0.0, 0.0
    clipped = []
    for s, e in dev:
        for a, b in steps:
            lo, hi = max(s, a), min(e, b)
            if hi > lo:
                clipped.append((lo, hi))
    return union_busy(clipped) * 1e-6, wall * 1e-6


def _write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


@dataclass
class ProfilerSession:
    """``torch.profiler`` over the pipeline with a wait / warm-up / active schedule.

    Use as a context manager; call :meth:`step` after every pipeline step and wrap stages in
    :meth:`range`.  When ``enabled`` is False nothing is profiled (the plain baseline run).
    After exit: ``trace_path``, ``top_ops``, ``device_busy_s`` and ``wall_s`` are filled.
    """

    trace_dir: Path
    worker: str
    device: str = "cpu"
    wait: int = 1
    warmup: int = 2
    active: int = 20
    enabled: bool = True
    trace_path: Path | None = None
    top_ops: list[OpRow] = field(default_factory=list)
    device_busy_s: float | None = None
    wall_s: float = 0.0
    _prof: object = None

    @property
    def total_steps(self) -> int:
        return self.wait + self.warmup + self.active

    def is_measured(self, index: int) -> bool:
        """True for the steps the profiler records (and whose timings are reported)."""
        return index >= self.wait + self.warmup

    def range(self, name: str) -> ContextManager:
        if not self.enabled:
            return contextlib.nullcontext()
        import torch

        return torch.profiler.record_function(name)

    def __enter__(self) -> "ProfilerSession":
        if not self.enabled:
            return self
        import torch
        from torch.profiler import ProfilerActivity, profile, schedule

        acts = [ProfilerActivity.CPU]
        if self.device == "cuda":
            acts.append(ProfilerActivity.CUDA)
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        self._prof = profile(activities=acts,
                             schedule=schedule(wait=self.wait, warmup=self.warmup,
                                               active=self.active, repeat=1),
                             on_trace_ready=self._on_trace_ready,
                             record_shapes=True, profile_memory=True, with_stack=False)
        self._prof.__enter__()
        del torch
        return self

    def step(self) -> None:
        if self._prof is not None:
            self._prof.step()

    def __exit__(self, *exc) -> None:
        if self._prof is not None:
            self._prof.__exit__(*exc)

    # -- results ----------------------------------------------------------------------------------
    def _on_trace_ready(self, prof) -> None:
        path = self.trace_dir / f"{self.worker}.{time.time_ns()}.pt.trace.json"
        tmp = self.trace_dir / f".{self.worker}.raw.json"
        prof.export_chrome_trace(str(tmp))
        try:
            with open(tmp) as f:
                data = json.load(f)
        finally:
            tmp.unlink(missing_ok=True)
        events = data.get("traceEvents", [])
        for e in events:
            if e.get("cat") == "user_annotation" and e.get("name") in STAGES:
                e["cat"] = STAGE_CATEGORY
                e.setdefault("args", {})["xtrt_stage"] = True
        busy, wall = device_busy_from_trace(events)
        self.wall_s = wall
        self.device_busy_s = busy if self.device == "cuda" else None
        _write_json_atomic(path, data)
        self.trace_path = path
        self.top_ops = _torch_top_ops(prof)


def _torch_top_ops(prof) -> list[OpRow]:
    rows = []
    for ev in prof.key_averages():
        name = ev.key
        if name.startswith("ProfilerStep") or name in STAGES or name.startswith("[memory]"):
            continue
        dev = getattr(ev, "self_device_time_total", None)
        if dev is None:
            dev = getattr(ev, "self_cuda_time_total", 0.0)
        rows.append(OpRow(name, "torch", int(ev.count), ev.self_cpu_time_total / 1e3,
                          float(dev or 0.0) / 1e3))
    rows.sort(key=lambda r: (r.self_cpu_ms + r.self_device_ms), reverse=True)
    return rows

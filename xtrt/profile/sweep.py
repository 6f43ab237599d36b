"""Profile one model over a sweep of batch sizes: timings, verdict, traces, top ops."""
from __future__ import annotations

import logging
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from xtrt.profile.session import OpRow, ProfilerSession
from xtrt.profile.stages import Postprocess, run_step
from xtrt.profile.verdict import STAGES, LatencyStats, Verdict, decide, latency_stats, stage_shares

__all__ = ["BatchResult", "ModelProfile", "profile_batches"]

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """Everything measured at one batch size (latencies per batch, in ms)."""

    batch: int
    latency_all: LatencyStats           # whole pipeline: decode .. postprocess, transfers included
    latency_model: LatencyStats         # inference stage only
    throughput_ips: float               # images/s of the whole pipeline (batch / mean latency-all)
    model_throughput_ips: float         # images/s of inference alone
    stage_ms: dict[str, float]          # mean ms per step in each stage
    verdict: Verdict
    peak_device_mem_mb: float | None = None
    peak_host_rss_mb: float = 0.0
    trace: str | None = None            # Chrome/TensorBoard trace file (absolute until written)
    ort_profile: str | None = None
    top_ops: list[OpRow] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "batch": self.batch,
            "latency_all_ms": self.latency_all.as_dict(),
            "latency_model_ms": self.latency_model.as_dict(),
            "throughput_ips": self.throughput_ips,
            "model_throughput_ips": self.model_throughput_ips,
            "stage_ms": self.stage_ms,
            "verdict": self.verdict.as_dict(),
            "peak_device_mem_mb": self.peak_device_mem_mb,
            "peak_host_rss_mb": self.peak_host_rss_mb,
            "trace": self.trace,
            "ort_profile": self.ort_profile,
            "top_ops": [r.as_dict() for r in self.top_ops],
        }


@dataclass
class ModelProfile:
    """One model's sweep (the FP32 model, or the ``--compare`` one)."""

    run_name: str                       # TensorBoard run name
    path: str
    backend: str
    device: str
    postprocess: str
    plugin_nodes: list[str]
    batches: list[BatchResult]
    workers: list = field(default_factory=list)   # WorkersRow: today's (1 thread), then N's
    workers_line: str | None = None                # what the N-worker row says (verdict.workers_line)
    feed_line: str | None = None                   # the whole feed table in one line (verdict.feed_line)

    def as_dict(self) -> dict:
        return {"run": self.run_name, "path": self.path, "backend": self.backend,
                "device": self.device, "postprocess": self.postprocess,
                "plugin_nodes": self.plugin_nodes, "batches": [b.as_dict() for b in self.batches],
                "workers": {"rows": [r.as_dict() for r in self.workers], "line": self.workers_line,
                            "feed_line": self.feed_line}
                if self.workers else None}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def profile_batches(backend, feed, post: Postprocess | None, batches: Sequence[int], *,
                    run_name: str, tb_dir: Path, steps: int, warmup: int, trace: bool,
                    device: str, extra_feeds: Callable[[int], dict[str, np.ndarray]] | None = None,
                    memory=None, progress: Callable[[str], None] | None = None
                    ) -> list[BatchResult]:
    """Run ``steps`` measured steps (after 1 wait + ``warmup`` steps) at every batch size.

    With ``trace`` the torch profiler records the measured steps into ``tb_dir/run_name``;
    without it the same loop runs unprofiled (the baseline for the overhead benchmark).
    """
    results: list[BatchResult] = []
    ort_runs: dict[int, list[int]] = {}
    for b in batches:
        sess = ProfilerSession(tb_dir / run_name, f"bs{b}", device=device, wait=1,
                               warmup=warmup, active=steps, enabled=trace)
        extra = extra_feeds(b) if extra_feeds else None
        walls, stage_sum = [], {s: 0.0 for s in STAGES}
        model_times = []
        ort_runs[b] = []
        if memory is not None and device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
        with sess:
            for i in range(sess.total_steps):
                st = run_step(feed, backend, post, b, extra, rf=sess.range if trace else None)
                if sess.is_measured(i):
                    walls.append(st.wall)
                    model_times.append(st.stages["inference"])
                    ort_runs[b].append(backend.runs - 1)
                    for k, v in st.stages.items():
                        stage_sum[k] += v
                    if memory is not None:
                        memory.sample()
                sess.step()
        n = len(walls)
        lat_all, lat_model = latency_stats(walls), latency_stats(model_times)
        wall_total = float(sum(walls))
        shares = stage_shares(stage_sum, wall_total)
        busy = None
        if device == "cuda" and sess.device_busy_s is not None and sess.wall_s > 0:
            busy = min(1.0, sess.device_busy_s / sess.wall_s)
        verdict = decide(shares, device=device, batch=b, gpu_busy_share=busy)
        mem = memory.value() if memory is not None else None
        res = BatchResult(
            batch=b, latency_all=lat_all, latency_model=lat_model,
            throughput_ips=b / (lat_all.mean / 1e3) if lat_all.mean else 0.0,
            model_throughput_ips=b / (lat_model.mean / 1e3) if lat_model.mean else 0.0,
            stage_ms={s: stage_sum[s] / n * 1e3 for s in STAGES},
            verdict=verdict, peak_device_mem_mb=None if mem is None else mem / 2**20,
            peak_host_rss_mb=_peak_rss_mb(),
            trace=str(sess.trace_path) if sess.trace_path else None,
            top_ops=list(sess.top_ops))
        results.append(res)
        if progress:
            progress(f"{run_name} batch {b}: latency-all median {lat_all.median:.2f} ms, "
                     f"{res.throughput_ips:.1f} img/s")
    ort_path = backend.end_profiling() if trace else None
    if ort_path:
        from xtrt.profile.ortprof import load_ort_profile, ort_top_ops

        events = load_ort_profile(ort_path)
        for res in results:
            res.ort_profile = str(ort_path)
            res.top_ops = sorted(ort_top_ops(events, ort_runs[res.batch]) + res.top_ops,
                                 key=lambda r: r.self_cpu_ms + r.self_device_ms, reverse=True)
    return results

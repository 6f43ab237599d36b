"""Pure functions that turn measured timings into figures and the one-line verdict.

Nothing here runs a model or touches a file: everything takes numbers and returns numbers, so the
decision rules are unit-tested on synthetic timings (including the CUDA wording on a CPU machine).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "STAGES", "HOST_INPUT_STAGES", "MODEL_STAGES", "LatencyStats", "Verdict", "latency_stats",
    "stage_shares", "union_busy", "decide", "GPU_BOUND_BUSY", "CPU_BOUND_BUSY", "DOMINANCE",
    "WorkersRow", "workers_line", "feed_line", "ROW_NAMES",
]

#: Pipeline stages in order; each is a ``record_function`` range of this name in the trace.
STAGES = ("decode", "preprocess", "h2d", "inference", "d2h", "postprocess")
#: Stages that make up the host-side input pipeline.
HOST_INPUT_STAGES = ("decode", "preprocess")
#: Stages counted in "latency-model" (inference only, without transfers).
MODEL_STAGES = ("inference",)

#: CUDA: GPU busy share of wall time at or above which the run is GPU-bound.
GPU_BOUND_BUSY = 0.60
#: CUDA: GPU busy share below which the run is CPU-bound (the device waits for the host).
CPU_BOUND_BUSY = 0.30
#: CPU only: one side must take this many times the other's share to win the verdict.
DOMINANCE = 1.5


@dataclass
class LatencyStats:
    """Latency figures in milliseconds over the measured steps."""

    mean: float
    median: float
    p99: float
    min: float
    max: float
    count: int

    def as_dict(self) -> dict:
        return asdict(self)


def latency_stats(seconds: Sequence[float]) -> LatencyStats:
    """mean / median / p99 / min / max in ms of per-step times given in seconds."""
    a = np.asarray(list(seconds), dtype=np.float64) * 1e3
    if a.size == 0:
        return LatencyStats(0.0, 0.0, 0.0, 0.0, 0.0, 0)
    return LatencyStats(float(a.mean()), float(np.median(a)), float(np.percentile(a, 99)),
                        float(a.min()), float(a.max()), int(a.size))


def stage_shares(stage_seconds: Mapping[str, float], wall_seconds: float) -> dict[str, float]:
    """Share of wall time spent in each stage (0..1); stages missing from the input get 0."""
    if wall_seconds <= 0:
        return {s: 0.0 for s in STAGES}
    return {s: float(stage_seconds.get(s, 0.0)) / wall_seconds for s in STAGES}


def union_busy(intervals: Iterable[tuple[float, float]]) -> float:
    """Total length covered by the union of ``(start, end)`` intervals (overlaps counted once)."""
    total, cur_s, cur_e = 0.0, None, None
    for s, e in sorted((float(a), float(b)) for a, b in intervals if b > a):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        total += cur_e - cur_s
    return total


@dataclass
class Verdict:
    """The decision and the numbers behind it."""

    label: str                         # CPU-bound | GPU-bound | balanced | preprocessing-bound | inference-bound
    device: str                        # cpu | cuda
    batch: int
    shares: dict[str, float]           # stage -> share of wall time
    biggest_stage: str
    gpu_busy_share: float | None = None
    reasons: list[str] = field(default_factory=list)

    @property
    def line(self) -> str:
        """The one line users read first."""
        pre = sum(self.shares.get(s, 0.0) for s in HOST_INPUT_STAGES)
        inf = self.shares.get("inference", 0.0)
        parts = []
        if self.gpu_busy_share is not None:
            parts.append(f"GPU busy {self.gpu_busy_share:.0%} of wall time")
        parts.append(f"decode+preprocess {pre:.0%}")
        parts.append(f"inference {inf:.0%}")
        parts.append(f"postprocess {self.shares.get('postprocess', 0.0):.0%}")
        if self.device == "cuda":
            parts.append(f"transfers {self.shares.get('h2d', 0.0) + self.shares.get('d2h', 0.0):.0%}")
        big = self.shares.get(self.biggest_stage, 0.0)
        return (f"{self.label} at batch {self.batch} on {self.device.upper()}: " + ", ".join(parts)
                + f"; biggest stage: {self.biggest_stage} ({big:.0%})")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["line"] = self.line
        return d


def decide(shares: Mapping[str, float], *, device: str, batch: int,
           gpu_busy_share: float | None = None) -> Verdict:
    """Decide what limits the pipeline.

    CUDA (``gpu_busy_share`` known): GPU-bound when the device is busy at least
    :data:`GPU_BOUND_BUSY` of the wall time, CPU-bound below :data:`CPU_BOUND_BUSY`, else balanced.
    CPU only: preprocessing (decode + preprocess) against inference; the side with at least
    :data:`DOMINANCE` times the other's share wins, else balanced.
    """
    shares = {s: float(shares.get(s, 0.0)) for s in STAGES}
    biggest = max(STAGES, key=lambda s: shares[s])
    pre = sum(shares[s] for s in HOST_INPUT_STAGES)
    inf = shares["inference"]
    reasons: list[str] = []
    if device == "cuda" and gpu_busy_share is not None:
        if gpu_busy_share >= GPU_BOUND_BUSY:
            label = "GPU-bound"
            reasons.append(f"GPU busy {gpu_busy_share:.0%} >= {GPU_BOUND_BUSY:.0%} of wall time")
        elif gpu_busy_share < CPU_BOUND_BUSY:
            label = "CPU-bound"
            reasons.append(f"GPU busy only {gpu_busy_share:.0%} < {CPU_BOUND_BUSY:.0%}: "
                           f"the device waits for the host (biggest stage {biggest})")
        else:
            label = "balanced"
            reasons.append(f"GPU busy {gpu_busy_share:.0%}, between {CPU_BOUND_BUSY:.0%} "
                           f"and {GPU_BOUND_BUSY:.0%}")
    else:
        if pre >= DOMINANCE * inf and pre > 0:
            label = "preprocessing-bound"
        elif inf >= DOMINANCE * pre and inf > 0:
            label = "inference-bound"
        else:
            label = "balanced"
        reasons.append(f"decode+preprocess {pre:.0%} vs inference {inf:.0%} of wall time "
                       f"(a side wins at {DOMINANCE:g}x the other)")
    return Verdict(label, device, batch, shares, biggest, gpu_busy_share, reasons)


#: labels that mean the host input pipeline (decode + preprocess) is the limit
INPUT_BOUND = ("CPU-bound", "preprocessing-bound")
#: labels that mean the model is the limit
MODEL_BOUND = ("GPU-bound", "inference-bound")


@dataclass
class WorkersRow:
    """One row of the decode-workers table: the pipeline with ``workers`` decode threads.

    ``input_share`` is decode + preprocess for the serial run (1 worker) and the wait for the
    workers for N; ``gpu_busy_estimated`` says the busy share is the inference share (untraced).
    """

    workers: int
    batch: int
    throughput_ips: float
    step_ms: float
    input_share: float
    inference_share: float
    gpu_busy_share: float | None
    label: str
    biggest_stage: str = ""
    gpu_busy_estimated: bool = False
    kind: str = ""                     # today | workers | pinned | gpu_decode (ROW_NAMES)

    @property
    def name(self) -> str:
        """The row's name in the table, e.g. "8 workers + pinned/async"."""
        kind = self.kind or ("today" if self.workers == 1 else "workers")
        return ROW_NAMES[kind].format(n=self.workers)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["name"] = self.name
        return d


#: the feed table's rows, in the order each adds one step to the one before
ROW_NAMES = {"today": "as you run it today (1 thread)", "workers": "{n} workers",
             "pinned": "{n} workers + pinned/async", "gpu_decode": "GPU decode ({n} readers)"}


def workers_line(today: WorkersRow, row: WorkersRow) -> str:
    """What the N-worker row says against today's: the bound, the speed-up and what to fix.

    e.g. "CPU-bound at batch 32 with 1 decode thread (decode+preprocess 87%); with 8 workers:
    GPU-bound, 3.1x more images/s (210 -> 650); fix: ..."
    """
    ratio = row.throughput_ips / today.throughput_ips if today.throughput_ips > 0 else 0.0
    head = (f"{today.label} at batch {today.batch} with 1 decode thread "
            f"(decode+preprocess {today.input_share:.0%})")
    gain = f"{ratio:.1f}x more images/s" if ratio >= 1 else f"{ratio:.1f}x the images/s (slower)"
    tail = (f"with {row.workers} workers: {row.label}, {gain} "
            f"({today.throughput_ips:.1f} -> {row.throughput_ips:.1f})")
    fix = _fix(today, row, ratio)
    return f"{head}; {tail}; fix: {fix}"


def _fix(today: WorkersRow, row: WorkersRow, ratio: float) -> str:
    """What to fix after ``row`` (the best pipeline measured), against today's."""
    if row.label in INPUT_BOUND:
        fix = (f"the input pipeline is still the limit (the step waits {row.input_share:.0%} for "
               "decode+preprocess): more cores/workers or cheaper decoding and preprocessing")
    elif row.label in MODEL_BOUND and today.label not in MODEL_BOUND:
        fix = (f"feed it as '{row.name}'; then the model is the limit (inference "
               f"{row.inference_share:.0%} of the step): a faster model (INT8, a TensorRT engine)")
    elif row.label in MODEL_BOUND:
        fix = (f"the model is the limit (inference {row.inference_share:.0%} of the step): a faster "
               "model (INT8, a TensorRT engine); more decode workers change little")
    else:
        fix = (f"input ({row.input_share:.0%} waiting) and inference ({row.inference_share:.0%}) "
               f"are close: both matter (biggest stage: {row.biggest_stage})")
    if ratio < 1.05 and today.label in INPUT_BOUND:
        fix += f"; '{row.name}' gains nothing here: the cores are already busy"
    elif ratio < 0.95:
        fix += f"; '{row.name}' is slower than today (its threads share the cores with inference)"
    return fix


def feed_line(rows: Sequence[WorkersRow]) -> str:
    """The feed table in one line: each row's images/s and its gain over the row before, the
    best row's bound and next bottleneck, and what to fix.

    e.g. "1 thread 54.0 img/s (CPU-bound) -> 8 workers 356.0 (x6.6) -> 8 workers + pinned/async
    420.0 (x1.18) -> GPU decode (8 readers) 1500.0 (x3.57); best: GPU decode (8 readers), x27.8
    over today, GPU-bound, next bottleneck: inference (81%); fix: ..."
    """
    today, rest = rows[0], list(rows[1:])
    parts = [f"1 thread {today.throughput_ips:.1f} img/s ({today.label})"]
    prev = today
    for r in rest:
        gain = r.throughput_ips / prev.throughput_ips if prev.throughput_ips > 0 else 0.0
        parts.append(f"{r.name} {r.throughput_ips:.1f} (x{gain:.2f})")
        prev = r
    best = max(rows, key=lambda r: r.throughput_ips)
    ratio = best.throughput_ips / today.throughput_ips if today.throughput_ips > 0 else 0.0
    big = best.biggest_stage or "?"
    head = (f"best: {best.name}, x{ratio:.1f} over today, {best.label}, next bottleneck: "
            f"{'waiting for decode+preprocess' if big == 'decode' and best.kind else big}")
    return " -> ".join(parts) + f"; {head}; fix: {_fix(today, best, ratio)}"

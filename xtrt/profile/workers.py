"""The ``--workers N`` row: the same pipeline with decode + preprocess in N threads, ahead of the model.

The serial sweep (:func:`xtrt.profile.sweep.profile_batches`) is the "as you run it today" row:
one thread decodes, preprocesses, copies, infers and post-processes in turn.  Here the same
images, preprocessing and model run again at the headline batch size with a
:class:`~xtrt.profile.prefetch.PrefetchFeed`, untraced; its ``decode`` stage is the time the
step waited for the workers.  :func:`xtrt.profile.verdict.workers_line` turns the two rows into
what to fix and by how much.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np

from xtrt.profile.verdict import HOST_INPUT_STAGES, STAGES, WorkersRow, decide, stage_shares

__all__ = ["row_from_result", "measure_workers", "measure_row", "run_loop"]

log = logging.getLogger(__name__)


def row_from_result(res, workers: int, device: str) -> WorkersRow:
    """A :class:`WorkersRow` from one batch size's :class:`~xtrt.profile.sweep.BatchResult`.

    On CUDA the GPU busy share is the traced one when the profiler ran, else the share of the
    step spent in (synchronised) inference, an upper bound of the device's busy time.
    """
    shares = res.verdict.shares
    busy = res.verdict.gpu_busy_share
    estimated = False
    verdict = res.verdict
    if device == "cuda" and busy is None:
        busy, estimated = shares.get("inference", 0.0), True
        verdict = decide(shares, device=device, batch=res.batch, gpu_busy_share=busy)
    return WorkersRow(workers=workers, batch=res.batch, throughput_ips=res.throughput_ips,
                      step_ms=res.latency_all.mean,
                      input_share=sum(shares.get(s, 0.0) for s in HOST_INPUT_STAGES),
                      inference_share=shares.get("inference", 0.0),
                      gpu_busy_share=busy, gpu_busy_estimated=estimated, label=verdict.label,
                      biggest_stage=verdict.biggest_stage, kind="today" if workers == 1 else "")


def _row_from_stages(stage_sum: dict, walls: list[float], kind: str, workers: int, batch: int,
                     device: str) -> WorkersRow:
    """A row from the summed stage times and step walls of an untraced loop."""
    wall = float(sum(walls))
    shares = stage_shares(stage_sum, wall)
    busy = shares.get("inference", 0.0) if device == "cuda" else None
    v = decide(shares, device=device, batch=batch, gpu_busy_share=busy)
    step_ms = wall / max(1, len(walls)) * 1e3
    return WorkersRow(workers=workers, batch=batch,
                      throughput_ips=batch / (step_ms / 1e3) if step_ms else 0.0, step_ms=step_ms,
                      input_share=sum(shares.get(s, 0.0) for s in HOST_INPUT_STAGES),
                      inference_share=shares.get("inference", 0.0), gpu_busy_share=busy,
                      gpu_busy_estimated=busy is not None, label=v.label,
                      biggest_stage=v.biggest_stage, kind=kind)


def _finish_step(backend, post, feeds, dev, t: dict, wait: bool):
    """inference, d2h and postprocess of one step (times into ``t``); returns the host outputs."""
    pc = time.perf_counter
    t0 = pc()
    out = backend.infer(dev, wait=wait)
    if backend.device == "cuda" and getattr(backend, "name", "") == "ppq":
        backend.sync()
    t["inference"] = pc() - t0
    t0 = pc()
    outs = backend.to_host(out)
    t["d2h"] = pc() - t0
    t0 = pc()
    if backend.tail is not None:
        outs = backend.tail(feeds, outs)
    elif post is not None:
        post.fn(outs)
    t["postprocess"] = pc() - t0
    return outs


def _pageable(feeds: dict, device: str) -> dict:
    """The copy as a plain program does it: ``torch.from_numpy(a).to('cuda')`` from pageable
    memory, synchronous; on the CPU the arrays as they are."""
    if device != "cuda":
        return feeds
    import torch

    out = {n: torch.from_numpy(np.ascontiguousarray(a)).to("cuda") for n, a in feeds.items()}
    torch.cuda.synchronize()
    return out


def run_loop(kind: str, backend, src, post, batch: int, *, steps: int, warmup: int,
             extra: dict | None = None, on_output: Callable | None = None
             ) -> tuple[dict[str, float], list[float]]:
    """``warmup`` + ``steps`` untraced steps of one pipeline; (summed stage seconds, step walls).

    kind "workers": wait for the workers' batch, copy it (pageable, synchronous), infer.
    kind "pinned": the batch is already in a pinned buffer; batch k+1's copy starts on a side
    stream before batch k's inference and is waited for at the start of step k+1 (the h2d stage
    is that wait), so the copy overlaps inference.  kind "gpu_decode": ``src`` gives device
    tensors (decoded and preprocessed on the device); nothing image-sized is copied.
    ``on_output(step, outputs)`` sees each step's host outputs (tests: the order).
    """
    pc = time.perf_counter
    extra = extra or {}
    name = src.input_name
    sums = {s: 0.0 for s in STAGES}
    walls: list[float] = []
    ahead = None
    if kind == "pinned":                   # the first batch's copy starts before the loop
        ahead = backend.to_device({name: src.next(batch), **extra})
    elif kind == "gpu_decode":
        extra = _pageable(extra, backend.device)
    for i in range(warmup + steps):
        t: dict[str, float] = {}
        start = pc()
        if kind == "pinned":
            t0 = pc()
            backend.sync()                 # batch i's copy has landed ...
            dev, feeds = ahead, ahead
            t["h2d"] = pc() - t0
            t0 = pc()
            x = src.next(batch)            # ... so its pinned buffer goes back to the workers
            t["decode"] = pc() - t0
            t0 = pc()
            ahead = backend.to_device({name: x, **extra})   # batch i+1's copy, beside inference
            t["h2d"] += pc() - t0
        else:
            t0 = pc()
            x = src.next(batch)
            t["decode"] = pc() - t0
            feeds = {name: x, **extra}
            t0 = pc()
            dev = feeds if kind == "gpu_decode" else _pageable(feeds, backend.device)
            t["h2d"] = pc() - t0
        outs = _finish_step(backend, post, feeds, dev, t, wait=kind != "pinned")
        if on_output is not None:
            on_output(i, outs)
        if i >= warmup:
            walls.append(pc() - start)
            for k, v in t.items():
                sums[k] += v
    if kind == "pinned":
        backend.sync()
    return sums, walls


def measure_row(kind: str, backend, feed, post, batch: int, *, workers: int, steps: int,
                warmup: int, device: str, extra_feeds: Callable[[int], dict] | None = None,
                device_pre: Callable | None = None,
                progress: Callable[[str], None] | None = None) -> WorkersRow:
    """One row of the feed table at ``batch`` with ``workers`` threads (see :func:`run_loop`)."""
    from xtrt.profile.prefetch import PrefetchFeed

    extra = extra_feeds(batch) if extra_feeds else None
    if kind == "gpu_decode":
        from xtrt.runtime.feed_gpu import GpuDecodeFeed

        src = GpuDecodeFeed(feed.files, device_pre, feed.input_name, feed.sample_shape, batch,
                            workers, device=device, dtype=feed.dtype)
    else:
        host_buffer = getattr(backend, "host_buffer", None) if kind == "pinned" else None

        def alloc(tag: int, shape, dtype) -> np.ndarray:
            if host_buffer is None:
                return np.empty(shape, dtype)
            return host_buffer(feed.input_name, shape, dtype, tag)   # pinned on CUDA

        src = PrefetchFeed(feed.files, feed.preprocess_one, feed.input_name, feed.sample_shape,
                           feed.dtype, batch, workers, alloc=alloc)
    with src:
        sums, walls = run_loop(kind, backend, src, post, batch, steps=steps, warmup=warmup,
                               extra=extra)
    row = _row_from_stages(sums, walls, kind, workers, batch, device)
    if progress:
        progress(f"batch {batch}, {row.name}: {row.throughput_ips:.1f} img/s, {row.label}")
    return row


def measure_workers(backend, feed, post, batch: int, *, workers: int, steps: int, warmup: int,
                    device: str, extra_feeds: Callable[[int], dict] | None = None,
                    progress: Callable[[str], None] | None = None) -> WorkersRow:
    """The "N workers" row: ``workers`` decode/preprocess threads, a pageable synchronous copy."""
    return measure_row("workers", backend, feed, post, batch, workers=workers, steps=steps,
                       warmup=warmup, device=device, extra_feeds=extra_feeds, progress=progress)

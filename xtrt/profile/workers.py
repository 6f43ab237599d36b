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
from pathlib import Path
from typing import Callable

import numpy as np

from xtrt.profile.verdict import HOST_INPUT_STAGES, WorkersRow, decide

__all__ = ["row_from_result", "measure_workers"]

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
                      biggest_stage=verdict.biggest_stage)


def measure_workers(backend, feed, post, batch: int, *, workers: int, steps: int, warmup: int,
                    device: str, extra_feeds: Callable[[int], dict] | None = None,
                    progress: Callable[[str], None] | None = None) -> WorkersRow:
    """Run ``steps`` untraced steps at ``batch`` with ``workers`` decode/preprocess threads."""
    from xtrt.profile.prefetch import PrefetchFeed
    from xtrt.profile.sweep import profile_batches

    host_buffer = getattr(backend, "host_buffer", None)

    def alloc(tag: int, shape, dtype) -> np.ndarray:
        if host_buffer is None:
            return np.empty(shape, dtype)
        return host_buffer(feed.input_name, shape, dtype, tag)   # pinned on CUDA

    with PrefetchFeed(feed.files, feed.preprocess_one, feed.input_name, feed.sample_shape,
                      feed.dtype, batch, workers, alloc=alloc) as pf:
        res = profile_batches(backend, pf, post, [batch], run_name=f"workers{workers}",
                              tb_dir=Path("."), steps=steps, warmup=warmup, trace=False,
                              device=device, extra_feeds=extra_feeds)[0]
    row = row_from_result(res, workers, device)
    if progress:
        progress(f"batch {batch} with {workers} decode workers: {row.throughput_ips:.1f} img/s, "
                 f"{row.label}")
    return row

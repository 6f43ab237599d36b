"""Activation statistics for calibration, collected on ONNX Runtime.

Calibration time is statistics code, not inference: PPQ's runtime calibration runs its own torch
executor (slow convolutions on CPU) and its observers on every batch.  For ``percentile`` and
``minmax`` xtrt runs the prepared model once per batch on ONNX Runtime with the tensors it needs as
extra outputs, and reduces each tensor to two numbers per batch, with PPQ's exact definitions:

* percentile: per batch, the k-th smallest and largest values (k from the 0.9999 quantile, as
  ``torch.kthvalue`` in PPQ's TorchPercentileObserver), averaged over batches;
* minmax: the minimum and maximum over all batches.

Only those two numbers per tensor and batch are kept: memory does not grow with the data.
"""
from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np

__all__ = ["FAST_METHODS", "PERCENTILE", "collect_ranges", "batch_range"]

log = logging.getLogger(__name__)

FAST_METHODS = ("percentile", "minmax")
PERCENTILE = 0.9999  # PPQ's OBSERVER_PERCENTILE


def batch_range(x: np.ndarray, method: str, percentile: float = PERCENTILE) -> tuple[float, float]:
    """(low, high) of one batch of one tensor, as PPQ's observer computes it."""
    flat = np.asarray(x, dtype=np.float32).reshape(-1)
    if method == "minmax":
        return float(flat.min()), float(flat.max())
    n = flat.size
    lo = max(0, int(n * (1 - percentile)))          # 0-based k of torch.kthvalue(k = idx + 1)
    hi = min(int(n * percentile), n - 1)
    part = np.partition(flat, (lo, hi))
    return float(part[lo]), float(part[hi])


def collect_ranges(model, tensors: Sequence[str], batches: Iterable[dict[str, np.ndarray]], *,
                   method: str = "percentile", device: str = "cpu",
                   progress: str | None = None) -> dict[str, tuple[float, float]]:
    """(low, high) per tensor of ``model`` over ``batches`` (see the module docstring)."""
    import onnx
    from onnx import helper

    from xtrt.runtime.session import make_session

    if method not in FAST_METHODS:
        raise ValueError(f"collect_ranges supports {FAST_METHODS}, not {method!r}")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    names = list(dict.fromkeys(tensors))
    existing = {o.name for o in work.graph.output}
    inputs = {i.name for i in work.graph.input}
    del work.graph.output[:]
    for t in names:
        work.graph.output.append(helper.make_empty_tensor_value_info(t))
    del work.graph.value_info[:]
    # every requested tensor must be produced by the (body) graph or be a graph input
    produced = {o for n in work.graph.node for o in n.output} | inputs
    missing = [t for t in names if t not in produced]
    if missing:
        raise ValueError(f"tensors not in the graph: {missing[:3]}")
    del existing
    sess = make_session(work, device)
    lows: dict[str, list[float]] = {t: [] for t in names}
    highs: dict[str, list[float]] = {t: [] for t in names}
    it = batches
    if progress:
        from tqdm import tqdm
        it = tqdm(batches, desc=progress, unit="batch", leave=False)
    for feeds in it:
        values = sess.run(names, feeds)
        for t, v in zip(names, values):
            lo, hi = batch_range(v, method)
            lows[t].append(lo)
            highs[t].append(hi)
    out = {}
    for t in names:
        if not lows[t]:
            continue
        if method == "minmax":
            out[t] = (min(lows[t]), max(highs[t]))
        else:
            out[t] = (float(np.mean(lows[t])), float(np.mean(highs[t])))
    return out

"""Activation statistics for calibration, collected on ONNX Runtime.

Calibration time is statistics code, not inference: PPQ's runtime calibration runs its own torch
executor (slow convolutions on CPU) and its observers on every batch.  For ``percentile`` and
``minmax`` xtrt runs the prepared model once per batch on ONNX Runtime with the tensors it needs as
extra outputs, and reduces each tensor to two numbers per batch, with PPQ's exact definitions:

* percentile: per batch, the k-th smallest and largest values (k from the 0.9999 quantile, as
  ``torch.kthvalue`` in PPQ's TorchPercentileObserver), averaged over batches;
* minmax: the minimum and maximum over all batches;
* kl / mse: a second pass builds the histogram of ``|x|`` over ``[0, max(|min|, |max|)]`` (4096 /
  2048 bins, ``torch.histc`` semantics, as PPQ's TorchHistObserver / TorchMSEObserver), from which
  PPQ's own ``hist_to_scale_offset`` picks the clip.

Only a few numbers (or one histogram) per tensor are kept: memory does not grow with the data.
"""
from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np

__all__ = ["FAST_METHODS", "PERCENTILE", "collect_ranges", "batch_range"]

log = logging.getLogger(__name__)

FAST_METHODS = ("percentile", "minmax", "kl", "mse")
HIST_BINS = {"kl": 4096, "mse": 2048}  # PPQ's OBSERVER_KL_HIST_BINS / OBSERVER_MSE_HIST_BINS
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
    sess, names = _stats_session(model, tensors, device)
    if method not in ("percentile", "minmax"):
        raise ValueError(f"collect_ranges supports percentile and minmax, not {method!r}")
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


def _stats_session(model, tensors: Sequence[str], device: str):
    """An ORT session of ``model`` whose outputs are exactly ``tensors``."""
    import onnx
    from onnx import helper

    from xtrt.runtime.session import make_session

    work = onnx.ModelProto()
    work.CopyFrom(model)
    names = list(dict.fromkeys(tensors))
    produced = {o for n in work.graph.node for o in n.output} | {i.name for i in work.graph.input}
    missing = [t for t in names if t not in produced]
    if missing:
        raise ValueError(f"tensors not in the graph: {missing[:3]}")
    del work.graph.output[:]
    for t in names:
        work.graph.output.append(helper.make_empty_tensor_value_info(t))
    del work.graph.value_info[:]
    return make_session(work, device), names


def collect_histograms(model, tensors: Sequence[str], batches: Sequence[dict[str, np.ndarray]], *,
                       method: str = "mse", device: str = "cpu", progress: str | None = None
                       ) -> dict[str, tuple[np.ndarray, float]]:
    """Per tensor: (histogram of |x| as int64 [bins], bin width), over two passes of ``batches``."""
    bins = HIST_BINS[method]
    sess, names = _stats_session(model, tensors, device)
    batches = list(batches)
    amax = {t: 0.0 for t in names}
    steps = batches + batches
    it = iter(steps)
    if progress:
        from tqdm import tqdm
        it = iter(tqdm(steps, desc=progress, unit="batch", leave=False))
    for _ in batches:                                    # pass 1: the range
        for t, v in zip(names, sess.run(names, next(it))):
            amax[t] = max(amax[t], float(np.abs(v).max()) if v.size else 0.0)
    hists = {t: np.zeros(bins, np.int64) for t in names}
    for _ in batches:                                    # pass 2: the histogram
        for t, v in zip(names, sess.run(names, next(it))):
            top = amax[t] if amax[t] > 0 else 1.0
            h, _ = np.histogram(np.abs(v).reshape(-1), bins=bins, range=(0.0, top))
            hists[t] += h
    return {t: (hists[t], (amax[t] if amax[t] > 0 else 1.0) / bins) for t in names}

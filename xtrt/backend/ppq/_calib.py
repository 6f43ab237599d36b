"""Calibration: PPQ's graph with scales from xtrt's statistics (the fast path), or PPQ's own
runtime calibration (``calibration.engine: ppq``, LSQ)."""
from __future__ import annotations

import itertools
import time
from typing import Sequence

import numpy as np

from xtrt.backend.ppq import _graph, _scales
from xtrt.backend.ppq._result import CalibrationResult, _collect_scales
from xtrt.backend.ppq._runtime import (_collate, _install_handlers, _ppq, _to_torch,
                                       _torch_threads)
from xtrt.errors import QuantizationError


def calibrate(model, batches: Sequence[dict[str, np.ndarray]], *, device: str = "cpu",
              method: str = "percentile", fp32_ops: Sequence[str] = (),
              lsq: dict | None = None, progress: bool = True,
              act_ranges: dict[str, tuple[float, float]] | None = None,
              act_hists: dict[str, tuple[np.ndarray, float]] | None = None,
              reference: bool = False, keep_graph: bool = True) -> CalibrationResult:
    """Calibrate ``model`` (a prepared onnx.ModelProto) with PPQ's TensorRT input-only quantizer.

    Args:
        batches: calibration feeds (numpy, keyed by input name); materialised once here.
        method: percentile | kl | mse | minmax | entropy (entropy: with statistics only).
        fp32_ops: node names PPQ must leave in float.
        lsq: None, or dict(steps, lr, block_size, seed) to run LSQ fine-tuning after calibration.
        act_ranges: tensor -> (low, high) collected elsewhere (xtrt.quant.observe, on ONNX
            Runtime); PPQ's runtime calibration pass is then skipped and each activation scale is
            set with PPQ's own ``minmax_to_scale_offset``.  Ignored with LSQ (which needs PPQ's
            calibrated executor state end to end).
        act_hists: tensor -> (histogram of |x|, bin width), for kl / mse: scales then come from
            PPQ's ``hist_to_scale_offset`` of that method's observer (batched, same choice).
        reference: with statistics, build PPQ's graph with PPQ's own quantizer and passes and
            use PPQ's per-tensor histogram search, nothing kept (tests compare the two paths).
        keep_graph: with statistics, keep PPQ's graph of the model for the next call (off: a
            new graph is neither kept nor copied).

    With statistics, PPQ's graph of the model is built once and copied for the next call on the
    same model (:mod:`xtrt.backend.ppq._graph`); ``result.timings`` splits the seconds.
    """
    _ppq()
    _install_handlers()
    with _torch_threads(device):
        if (act_ranges is not None or act_hists is not None) and not lsq:
            return _from_stats(model, batches, device=device, method=method,
                               fp32_ops=fp32_ops, ranges=act_ranges or {},
                               hists=act_hists or {}, progress=progress, reference=reference,
                               keep=keep_graph)
        return _ppq_engine(model, batches, device=device, method=method, fp32_ops=fp32_ops,
                           lsq=lsq, progress=progress)


def _sample(data):
    first = data[0]
    return {k: v[:1] for k, v in first.items()} if isinstance(first, dict) else first[:1]


def _from_stats(model, batches, *, device, method, fp32_ops, ranges, hists, progress,
                reference, keep) -> CalibrationResult:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    data = _to_torch(itertools.islice(batches, 1), [i.name for i in model.graph.input
                                   if i.name not in {t.name for t in model.graph.initializer}],
                     device)
    if not data:
        raise QuantizationError("no calibration batches", "give calibration images")
    graph = _graph.build(model, _sample(data), device=device, fp32_ops=list(fp32_ops),
                         progress=progress, reference=reference, keep=keep, timings=timings)
    t = time.perf_counter()
    _scales.apply_stats(graph, method, ranges, hists,
                        search=_scales.ppq_hist_scales if reference else _scales.hist_scales)
    _scales.weight_scales(graph)
    timings["scales_s"] = time.perf_counter() - t
    res = CalibrationResult(graph=graph)
    _collect_scales(res)
    res.seconds = time.perf_counter() - t0
    res.timings = {k: round(v, 4) for k, v in timings.items()}
    return res


def _ppq_engine(model, batches, *, device, method, fp32_ops, lsq, progress) -> CalibrationResult:
    """PPQ's own runtime calibration on its torch executor (and LSQ when asked)."""
    t0 = time.perf_counter()
    graph = _graph._load_graph(model)
    data = _to_torch(batches, list(graph.inputs.keys()), device)
    if not data:
        raise QuantizationError("no calibration batches", "give calibration images")
    setting = _graph.setting_for(method, fp32_ops, quantize_activation=True, lsq=lsq,
                                 device=device)
    if lsq:
        # PPQ's LSQ picks its training batches with the global ``random`` module (and torch
        # initialises nothing at random here): calibration.seed makes that repeatable
        import random

        import torch

        random.seed(int(lsq.get("seed", 0)))
        torch.manual_seed(int(lsq.get("seed", 0)))
    graph = _graph.run_quantizer(graph, setting, _collate(device)(_sample(data)), data,
                                 device=device, progress=progress)
    if not lsq:
        _scales.weight_scales(graph)
    res = CalibrationResult(graph=graph)
    _collect_scales(res)
    res.seconds = time.perf_counter() - t0
    return res


def rescale(result: CalibrationResult, method: str, *,
            ranges: dict | None = None, hists: dict | None = None) -> CalibrationResult:
    """Re-derive every activation scale of a calibrated result from other statistics (another
    calibration method), in place: PPQ's graph (simulation, analysis) and ``act_scales`` agree."""
    _ppq()
    _scales.apply_stats(result.graph, method, ranges or {}, hists or {}, reapply=True)
    _collect_scales(result)
    return result

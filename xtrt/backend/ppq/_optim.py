"""PPQ's optimisation passes on a float model (equalization) and on a calibrated one (LSQ,
AdaRound, bias correction)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from xtrt.backend.ppq._result import CalibrationResult, _collect_scales
from xtrt.backend.ppq._runtime import (_collate, _install_handlers, _load_graph, _ppq, _quiet,
                                       _to_torch, _torch_threads)


def equalize(model, *, iterations: int = 10, threshold: float = 0.5, opt_level: int = 2,
             including_bias: bool = False) -> tuple[dict[str, np.ndarray], int]:
    """Cross-layer equalization of a float model with PPQ's ``LayerwiseEqualizationPass``
    (data-free: weights and, optionally, biases).

    Returns (the changed parameter values by initializer name, the number of equalized pairs);
    the caller writes them into the ONNX model before calibration, so statistics, scales and
    the export all see the equalized network.
    """
    _ppq()
    _install_handlers()
    import torch
    from ppq.quantization.optim import LayerwiseEqualizationPass
    from ppq.quantization.optim.equalization import EQUALIZATION_OPERATION_TYPE

    graph = _load_graph(model)
    before = {n: v.value.detach().clone() for n, v in graph.variables.items()
              if v.is_parameter and isinstance(v.value, torch.Tensor)}
    cle = LayerwiseEqualizationPass(iterations=iterations, weight_threshold=threshold,
                                    including_bias=including_bias, optimize_level=opt_level)
    ops = [op for op in graph.operations.values() if op.type in EQUALIZATION_OPERATION_TYPE]
    with _quiet(False), torch.no_grad():
        pairs = len(cle.find_equalization_pair(graph=graph, interested_operations=ops))
        cle.optimize(graph=graph, dataloader=[], executor=None, collate_fn=None)
    changed = {}
    for name, old in before.items():
        new = graph.variables[name].value
        if isinstance(new, torch.Tensor) and new.shape == old.shape and not torch.equal(new, old):
            changed[name] = new.detach().float().cpu().numpy()
    return changed, pairs


def optimize(result: CalibrationResult, batches: Sequence[dict[str, np.ndarray]], *,
             device: str = "cpu", lsq: dict | None = None, adaround: dict | None = None,
             bias_correction: dict | None = None, progress: bool = True) -> dict[str, float]:
    """Run PPQ's post-calibration passes on a calibrated result, in place, in this order:
    LSQ (``LearnedStepSizePass``: weights, biases and scales trained block by block),
    AdaRound (``AdaroundPass``: weight rounding learned, weights left on the INT8 grid),
    bias correction (``BiasCorrectionPass``: each layer's mean output error moved into its bias).

    Each setting is a dict of the pass's own arguments (steps, lr, block_size, gamma) plus
    ``batches``: how many of ``batches`` the pass trains/measures on.  Every PPQ pass keeps a
    block's change only when the block's output error went down.  Afterwards the result's
    weights, biases and scales are re-read, so the export writes what the passes produced.
    Returns seconds per pass.
    """
    _ppq()
    _install_handlers()
    with _torch_threads(device):
        return _optimize(result, batches, device, lsq, adaround, bias_correction, progress)


def _optimize(result, batches, device, lsq, adaround, bias_correction, progress):
    import time

    from ppq import TorchExecutor
    from ppq.quantization.optim import (AdaroundPass, BiasCorrectionPass, LearnedStepSizePass,
                                        PassiveParameterQuantizePass)

    graph = result.graph
    executor = TorchExecutor(graph=graph, device=device)
    names = list(graph.inputs.keys())
    data_all = _to_torch(batches, names, device)
    first = data_all[0]
    executor.tracing_operation_meta(
        inputs={k: v[:1] for k, v in first.items()} if isinstance(first, dict) else first[:1])
    plan = []
    if lsq is not None:
        plan.append(("lsq", lsq, lambda s: LearnedStepSizePass(
            steps=int(s.get("steps", 100)), lr=float(s.get("lr", 1e-5)),
            block_size=int(s.get("block_size", 4)), gamma=float(s.get("gamma", 0.0)),
            is_scale_trainable=True, collecting_device=device)))
    if adaround is not None:
        plan.append(("adaround", adaround, lambda s: AdaroundPass(
            steps=int(s.get("steps", 500)), lr=float(s.get("lr", 1e-3)),
            block_size=int(s.get("block_size", 4)), gamma=float(s.get("gamma", 1.0)),
            is_scale_trainable=False, collecting_device=device)))
    if bias_correction is not None:
        plan.append(("bias_correction", bias_correction, lambda s: BiasCorrectionPass(
            block_size=int(s.get("block_size", 1)), collecting_device=device)))
    seconds = {}
    for name, s, make in plan:
        t0 = time.perf_counter()
        data = data_all[:max(1, int(s.get("batches", len(data_all))))]
        with _quiet(progress):
            make(s).optimize(graph=graph, dataloader=data, executor=executor,
                             collate_fn=_collate(device))
            PassiveParameterQuantizePass().optimize(graph=graph)
        seconds[name] = round(time.perf_counter() - t0, 3)
    _collect_scales(result)
    return seconds


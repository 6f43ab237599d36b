"""PPQ's graph-wise and layer-wise error analyses, and the per-layer choice of calibration
method (``quantization.per_tensor``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from xtrt.backend.ppq._result import CalibrationResult, _collect_scales
from xtrt.backend.ppq._runtime import (QUANTIZED_OP_TYPES, _collate, _install_handlers, _ppq,
                                       _quiet, _to_torch, _torch_threads)

def _analyse(fn, result: CalibrationResult, batches, device: str, steps: int,
             progress: bool = True) -> dict:
    data = _to_torch(batches, list(result.graph.inputs.keys()), device)
    with _quiet(progress), _torch_threads(device):
        return fn(graph=result.graph, running_device=device, dataloader=data,
                  collate_fn=_collate(device), steps=min(steps, len(data)), verbose=False)

def graphwise_error(result: CalibrationResult, batches, *, device: str = "cpu",
                    steps: int = 4, progress: bool = True) -> dict[str, float]:
    """PPQ's graph-wise analysis: per quantized op, the noise-to-signal ratio of its output with
    every quantizer in the graph active (error accumulated through the graph)."""
    _ppq()
    from ppq.quantization.analyse.graphwise import graphwise_error_analyse

    out = _analyse(graphwise_error_analyse, result, batches, device, steps, progress)
    return {k: float(v) for k, v in out.items()}

def layerwise_error(result: CalibrationResult, batches, *, device: str = "cpu",
                    steps: int = 4, progress: bool = True) -> dict[str, float]:
    """PPQ's layer-wise analysis: per quantized op, the noise-to-signal ratio at the graph outputs
    when only that op is quantized."""
    _ppq()
    from ppq.quantization.analyse.layerwise import layerwise_error_analyse

    out = _analyse(layerwise_error_analyse, result, batches, device, steps, progress)
    return {k: float(v[0] if isinstance(v, (tuple, list)) else v) for k, v in out.items()}

def choose_per_tensor(result: CalibrationResult, candidates: dict[str, dict],
                      batches: Sequence[dict[str, np.ndarray]], *,
                      device: str = "cpu") -> dict[str, dict]:
    """For every quantized layer's activation input, pick the calibration method whose scale
    gives the smallest mean squared error of that layer's output (layer run with INT8
    weights and the candidate activation scale, against the float layer on float inputs).

    ``candidates``: method -> {"ranges": ..., "hists": ...} (the statistics of
    ``xtrt.quant.observe``).  Sets the scales in place; returns, per (op name) the chosen method
    and every candidate's error.
    """
    _ppq()
    _install_handlers()
    with _torch_threads(device):
        return _choose_per_tensor(result, candidates, batches, device)

def _candidate_scales(var, qc, candidates: dict[str, dict]) -> dict[str, float]:
    """The scale each candidate method's statistics give ``var`` (PPQ's rules, as calibration)."""
    from ppq.quantization.observer.range import minmax_to_scale_offset

    from xtrt.backend.ppq._scales import HIST_METHODS, hist_scales

    out = {}
    for m, st in candidates.items():
        hists, ranges = st.get("hists") or {}, st.get("ranges") or {}
        if m in HIST_METHODS and var.name in hists:
            hist, width = hists[var.name]
            scale, _ = hist_scales(m, [(np.asarray(hist), width, qc, var)])[0]
        elif var.name in ranges:
            scale, _ = minmax_to_scale_offset(float(ranges[var.name][0]),
                                              float(ranges[var.name][1]), qc)
        else:
            continue
        out[m] = float(scale)
    return out

def _choose_per_tensor(result, candidates, batches, device):
    import torch
    from ppq import TorchExecutor
    from ppq.core import QuantizationStates, TargetPlatform

    graph = result.graph
    executor = TorchExecutor(graph=graph, device=device)
    names = list(graph.inputs.keys())
    data = _to_torch(batches, names, device)
    ops = [op for op in graph.operations.values() if getattr(op, "config", None) is not None
           and op.platform != TargetPlatform.FP32 and op.type in QUANTIZED_OP_TYPES]
    acts = list(dict.fromkeys(v.name for op in ops for v in op.inputs if not v.is_parameter))
    chosen: dict[str, dict] = {}
    with torch.no_grad():
        for op in graph.operations.values():   # float inputs: the float graph's activations
            if hasattr(op, "dequantize"):
                op.dequantize()
        inputs = [dict(zip(acts, executor.forward(inputs=_collate(device)(d), output_names=acts)))
                  for d in data]
        for op in graph.operations.values():
            if hasattr(op, "restore_quantize_state"):
                op.restore_quantize_state()
        for op in ops:
            out_name = op.outputs[0].name
            act_idx = [i for i, v in enumerate(op.inputs) if not v.is_parameter]
            ref = []
            op.dequantize()
            for feed in inputs:
                ref.append(executor.partial_graph_forward(
                    operations=[op], feed_dict={op.inputs[i].name: feed[op.inputs[i].name]
                                                for i in act_idx}, output_names=[out_name])[0])
            op.restore_quantize_state()
            for i in act_idx:
                var, qc = op.inputs[i], op.config.input_quantization_config[i]
                if qc.state != QuantizationStates.ACTIVATED:
                    continue
                errors = {}
                for m, scale in _candidate_scales(var, qc, candidates).items():
                    qc.scale = torch.tensor(scale, dtype=torch.float32)
                    err = 0.0
                    for feed, r in zip(inputs, ref):
                        y = executor.partial_graph_forward(
                            operations=[op], feed_dict={op.inputs[j].name: feed[op.inputs[j].name]
                                                        for j in act_idx}, output_names=[out_name])[0]
                        err += float(torch.mean((y - r) ** 2))
                    errors[m] = err / max(1, len(inputs))
                if not errors:
                    continue
                best = min(errors, key=errors.get)
                qc.scale = torch.tensor(_candidate_scales(var, qc, {best: candidates[best]})[best],
                                        dtype=torch.float32)
                chosen[f"{op.name}:{i}"] = {"method": best, "mse": errors}
    _collect_scales(result)
    return chosen


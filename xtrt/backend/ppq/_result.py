"""What calibration returns, in plain numbers, and how it is read out of PPQ's graph."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from xtrt.backend.ppq._runtime import QUANTIZED_OP_TYPES


@dataclass
class CalibrationResult:
    """What calibration produced, in plain numbers.

    ``act_scales[(node, i)]``: per-tensor symmetric INT8 scale for input ``i`` of ``node``.
    ``weight_scales[(node, i)]``: (scale array, channel axis) for a weight input.
    ``weights[name]``: the (possibly LSQ-tuned) float weight values by initializer name.
    ``biases[name]``: the float bias values of the quantized ops (bias correction, LSQ change them).
    """

    act_scales: dict[tuple[str, int], float] = field(default_factory=dict)
    weight_scales: dict[tuple[str, int], tuple[np.ndarray, int]] = field(default_factory=dict)
    weights: dict[str, np.ndarray] = field(default_factory=dict)
    biases: dict[str, np.ndarray] = field(default_factory=dict)
    quantized_ops: list[str] = field(default_factory=list)
    fp32_ops: list[str] = field(default_factory=list)
    seconds: float = 0.0
    techniques: dict = field(default_factory=dict)  # what xtrt.quant.techniques ran, for the report
    graph: object = None  # opaque PPQ graph for analysis/simulation; never touched outside
    timings: dict = field(default_factory=dict)     # seconds per calibration step (benchmarks)


def _positive(scale: np.ndarray) -> np.ndarray:
    """A scale as TensorRT accepts it: LSQ can learn a negative or zero step (TensorRT-RTX:
    "Scale coefficients must all be positive").  With a zero point of 0, ``round(x / s) * s`` is
    the same for ``s`` and ``-s``, so the magnitude is kept, floored at the weight-scale epsilon."""
    from xtrt.trt.rules import SCALE_EPS

    return np.maximum(np.abs(scale), np.float32(SCALE_EPS)).astype(np.float32)


def _collect_scales(res: CalibrationResult) -> None:
    """Read the scales of every quantized Conv/Gemm/MatMul/pool input out of the PPQ graph.

    An overlapped config reads its dominant config's scale (PPQ's ``scale`` follows
    ``dominated_by``); a tensor read by several quantized ops gets one scale, the first met."""
    import torch
    from ppq.core import QuantizationStates, TargetPlatform

    res.act_scales.clear(), res.weight_scales.clear(), res.weights.clear(), res.biases.clear()
    res.quantized_ops.clear(), res.fp32_ops.clear()
    per_tensor: dict[str, float] = {}   # one scale per tensor, shared by all its consumers
    for op in res.graph.operations.values():
        cfg = getattr(op, "config", None)
        if cfg is None or op.platform == TargetPlatform.FP32 or op.type not in QUANTIZED_OP_TYPES:
            if op.type in QUANTIZED_OP_TYPES:
                res.fp32_ops.append(op.name)
            continue
        res.quantized_ops.append(op.name)
        for i, (var, qc) in enumerate(zip(op.inputs, cfg.input_quantization_config)):
            if i == 2 and var.is_parameter and isinstance(var.value, torch.Tensor):
                res.biases[var.name] = var.value.detach().float().cpu().numpy()
            if qc.state == QuantizationStates.FP32 or qc.scale is None:
                continue
            scale = _positive(qc.scale.detach().float().cpu().numpy())
            if var.is_parameter:
                value = var.value
                if isinstance(value, torch.Tensor):
                    res.weights[var.name] = value.detach().float().cpu().numpy()
                axis = qc.channel_axis if qc.channel_axis is not None else 0
                res.weight_scales[(op.name, i)] = (scale.reshape(-1), int(axis))
            else:
                res.act_scales[(op.name, i)] = per_tensor.setdefault(
                    var.name, float(scale.reshape(-1)[0]))

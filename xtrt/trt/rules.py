"""TensorRT's explicit-quantization rules: the one copy every other xtrt module imports.

* :data:`INT8_OP_TYPES`: the ops TensorRT runs in INT8 when their inputs arrive through
  DequantizeLinear (the ops xtrt places Q/DQ in front of); :data:`WEIGHTED_OP_TYPES` the ones with a
  weight input.
* :func:`weight_input` / :func:`weight_axis`: which input is the weight and its output-channel axis
  (per-channel scales run along it): Conv 0; ConvTranspose 1 (weight ``[C_in, C_out/g, k...]``);
  Gemm by ``transB`` (``transB=1``: B is ``[N, K]``, axis 0; ``transB=0``: ``[K, N]``, axis 1);
  MatMul by which input is the constant: constant B ``[..., K, N]`` -> its last axis (N, the
  output's last axis), constant A ``[..., M, K]`` -> its second-last axis (M).
* :func:`weight_scale`: ``max|w| / 127`` per output channel (TensorRT's symmetric rule; PPQ's
  ``max / 127.5`` clips each channel's largest weight), floored at :data:`SCALE_EPS`.
* :func:`padded_channels`: the channel counts TensorRT pads for an INT8 convolution (fewer than 8,
  not a multiple of 4): placement keeps such a convolution float (the image stem aside), lint
  reports one quantized anyway.
* :func:`commutes`: ops Q/DQ commute with (TensorRT moves Q/DQ across them, and they carry one
  scale unchanged from input to output): MaxPool, Resize nearest, Slice, Reshape, Transpose, Split,
  Pad constant 0, Flatten, Squeeze, Unsqueeze, Identity.
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

__all__ = ["QMAX", "SCALE_EPS", "INT8_OP_TYPES", "WEIGHTED_OP_TYPES", "POOL_OP_TYPES",
           "COMMUTING_OP_TYPES", "FUSIBLE_ACTIVATIONS", "attr", "weight_input", "weight_axis",
           "weight_scale", "padded_channels", "commutes"]

QMAX = 127.0
# one floor for every scale xtrt writes: a dead channel (all-zero weights) gets this, not 0; it is
# also above FP16's smallest normal number (6.1e-5 / 127 would not be), so an FP16 scale stays > 0
SCALE_EPS = 1e-7
WEIGHTED_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
POOL_OP_TYPES = ("AveragePool", "GlobalAveragePool")
INT8_OP_TYPES = WEIGHTED_OP_TYPES + POOL_OP_TYPES
COMMUTING_OP_TYPES = ("MaxPool", "Resize", "Slice", "Reshape", "Transpose", "Split", "Pad",
                      "Flatten", "Squeeze", "Unsqueeze", "Identity")
# pointwise ops TensorRT fuses into a convolution's epilogue (SiLU is Sigmoid + Mul)
FUSIBLE_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
                       "Mul", "Elu", "Selu", "PRelu")


def attr(node, name: str, default=None):
    """Attribute ``name`` of an ONNX node, or ``default``."""
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def weight_input(node, is_constant: Callable[[str], bool]) -> Optional[int]:
    """Index of ``node``'s weight input, or None (not a weighted op, or MatMul of two activations).

    ``is_constant(name)`` says whether a tensor is an initializer / constant-computed."""
    op = node.op_type
    if op in ("Conv", "ConvTranspose", "Gemm"):
        return 1 if len(node.input) > 1 and node.input[1] else None
    if op == "MatMul" and len(node.input) == 2:
        if is_constant(node.input[1]):
            return 1
        if is_constant(node.input[0]):
            return 0
    return None


def weight_axis(node, rank: int, index: int = 1) -> Optional[int]:
    """Output-channel axis of ``node``'s weight (input ``index``, ``rank`` dims), or None."""
    op = node.op_type
    if op == "Conv":
        return 0
    if op == "ConvTranspose":
        return 1
    if op == "Gemm":
        if index != 1:
            return None
        return 0 if attr(node, "transB", 0) else 1
    if op == "MatMul":
        if rank < 2:
            return None
        return rank - 1 if index == 1 else rank - 2
    return None


def weight_scale(w: np.ndarray, axis: Optional[int]) -> np.ndarray:
    """``max|w| / QMAX`` per output channel along ``axis`` (per tensor when ``axis`` is None),
    floored at :data:`SCALE_EPS`; float32, shape ``[w.shape[axis]]`` (or ``[]``)."""
    w = np.asarray(w, dtype=np.float32)
    if axis is None or w.ndim == 0:
        amax = np.abs(w).max() if w.size else np.float32(0)
    else:
        red = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.abs(w).max(axis=red) if red else np.abs(w)
    return np.maximum(np.asarray(amax, np.float32) / np.float32(QMAX),
                      np.float32(SCALE_EPS)).astype(np.float32)


def padded_channels(node, weight_shape) -> list[str]:
    """The channel counts TensorRT pads for an INT8 Conv/ConvTranspose with weight shape
    ``weight_shape`` (``["input channels 6", ...]``): fewer than 8 and not a multiple of 4.
    Conv weights are ``[C_out, C_in/g, k...]``, ConvTranspose ``[C_in, C_out/g, k...]``."""
    if node.op_type not in ("Conv", "ConvTranspose") or len(weight_shape) < 2:
        return []
    group = int(attr(node, "group", 1) or 1)
    cout, cin = (weight_shape[0], weight_shape[1] * group) if node.op_type == "Conv" else \
        (weight_shape[1] * group, weight_shape[0])
    return [f"{k} {c}" for k, c in (("input channels", cin), ("output channels", cout))
            if c < 8 and c % 4]


def commutes(node, const: Callable[[str], Optional[np.ndarray]] = lambda _n: None) -> bool:
    """True when Q/DQ commutes with ``node`` (its output carries its data input's scale).

    Resize only in ``nearest`` mode; Pad only in ``constant`` mode with value 0 (a missing or
    unreadable pad value counts as 0 only when the input is absent)."""
    op = node.op_type
    if op not in COMMUTING_OP_TYPES:
        return False
    if op == "Resize":
        return attr(node, "mode", b"nearest") in (b"nearest", "nearest")
    if op == "Pad":
        if attr(node, "mode", b"constant") not in (b"constant", "constant"):
            return False
        if len(node.input) > 2 and node.input[2]:
            v = const(node.input[2])
            return v is not None and not np.any(np.asarray(v) != 0)
        return float(attr(node, "value", 0.0)) == 0.0
    return True

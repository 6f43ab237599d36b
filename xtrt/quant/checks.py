"""Checks that a run's numbers are real before it may say PASSED.

* :func:`check_input_type` after preparation: the calibrated input takes float32.
* :func:`check_scales` after calibration: every activation scale finite and > 0 (a NaN scale
  is written as ``null`` in quant_cfg.json and ``7fc00000`` in the calibration cache; a zero
  scale divides by zero in TensorRT).
* :func:`check_reference` once the FP32 model ran on the held-out data: its outputs are finite.
* :func:`check_evaluation` on the evaluation that is reported: the INT8 outputs are finite and
  every SQNR / cosine is a number.

Bad calibration *data* (NaN/Inf in a tensor file or after preprocessing) is skipped file by
file in :class:`xtrt.data.source.BatchSource`; a constant input (``preprocess.std`` 0) is a
config error at load (:mod:`xtrt.config`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from xtrt.errors import DataError, ModelError, QuantizationError

__all__ = ["check_input_type", "check_scales", "check_reference", "check_evaluation"]


def check_input_type(model, input_name: str | None) -> None:
    """Raise ModelError unless the model input ``input_name`` (None: the first) takes float32.

    Calibration and evaluation feed preprocessed float32 images; an integer (or float16) input
    would reach ONNX Runtime as a type error in the middle of the run.
    """
    import onnx

    inits = {i.name for i in model.graph.initializer}
    inputs = [vi for vi in model.graph.input if vi.name not in inits]
    for vi in inputs:
        if input_name is None:
            input_name = vi.name
        if vi.name != input_name:
            continue
        elem = vi.type.tensor_type.elem_type
        if elem in (onnx.TensorProto.FLOAT, onnx.TensorProto.UNDEFINED):
            return
        dtype = onnx.TensorProto.DataType.Name(elem).lower()
        raise ModelError(f"model input {input_name!r} takes {dtype} tensors; xtrt.quant feeds it "
                         "preprocessed float32 images",
                         "export the model with a float32 image input (preprocessing, casts and "
                         "normalisation outside the graph)")


def _bad_scale(v: Any) -> str | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return f"{v!r}"
    if not math.isfinite(f):
        return "nan" if math.isnan(f) else "inf"
    if f <= 0.0:
        return "0" if f == 0.0 else f"{f:g}"
    return None


def check_scales(scales: Mapping | Any) -> None:
    """Raise QuantizationError if an activation scale is NaN, infinite, zero or negative.

    Args:
        scales: ``{tensor name: scale}`` (``xtrt.quant.export.tensor_scales``) or a calibration
            result with ``act_scales`` keyed ``(node, input index)``.
    """
    items = scales.act_scales.items() if hasattr(scales, "act_scales") else scales.items()
    bad = []
    for key, value in items:
        why = _bad_scale(value)
        if why is not None:
            name = f"input {key[1]} of node {key[0]!r}" if isinstance(key, tuple) else repr(key)
            bad.append((name, why))
    if not bad:
        return
    name, why = bad[0]
    more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
    reason = ("the calibration data never gives it a non-zero value" if why == "0" else
              "the calibration data or the activations hold NaN/Inf")
    raise QuantizationError(
        f"activation scale of tensor {name} is {why}{more}: {reason}",
        "check the calibration data (NaN/Inf, all-zero or constant tensors, preprocess.mean/std) "
        "or keep that node float with quantization.exclude_nodes")


def check_reference(ref_outputs, output_names, batches) -> None:
    """Raise DataError if the FP32 model gives NaN/Inf on the held-out data.

    Args:
        ref_outputs: per batch, the FP32 outputs in ``output_names`` order.
        output_names: the model's output names.
        batches: the held-out :class:`~xtrt.data.source.Batch` objects (for the file names).
    """
    for outs, batch in zip(ref_outputs, batches):
        for name, arr in zip(output_names, outs):
            a = np.asarray(arr)
            if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
                where = f" (batch of {batch.paths[0].name}, ...)" if batch.paths else ""
                raise DataError(f"the FP32 model's output {name!r} holds NaN/Inf on the held-out "
                                f"data{where}: fidelity figures would be meaningless",
                                "check the model and its preprocessing on those inputs")


def check_evaluation(outputs: Mapping[str, Mapping], what: str = "the INT8 model") -> None:
    """Raise QuantizationError unless every output is finite and its SQNR/cosine are numbers.

    Args:
        outputs: ``Evaluation.outputs`` (``OutputComparer.result()``): per output name a dict
            with ``nonfinite``, ``sqnr_db``, ``cosine``.
        what: the model the figures describe, for the message.
    """
    for name, o in outputs.items():
        n_bad = int(o.get("nonfinite") or 0)
        if n_bad:
            raise QuantizationError(
                f"{what}'s output {name!r} holds {n_bad} NaN/Inf values on the held-out data; "
                "its SQNR would be meaningless",
                "check the calibration data and the activation scales in quant_cfg.json, or keep "
                "the layers feeding it float (quantization.exclude_nodes)")
        for key in ("sqnr_db", "cosine"):
            v = o.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                raise QuantizationError(
                    f"{key} of {what}'s output {name!r} is not a number (the FP32 or the "
                    "quantized output is zero or not finite on every held-out sample)",
                    "check the held-out data (evaluation.data) and the preprocessing")

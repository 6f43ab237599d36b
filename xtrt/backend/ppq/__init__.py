"""The only package that imports PPQ.

It holds the compatibility shim call, installs xtrt's op handlers into PPQ, runs calibration
(optionally LSQ), PPQ's graph-wise / layer-wise analysis, and builds PPQ executors for profiling.
Everything it returns is plain Python / numpy: nothing else in xtrt knows PPQ's names.

Quantizer choice: ``TensorRTQuantizer_InputOnly`` (PPQ's own TRT variant) quantizes the inputs of
Conv/ConvTranspose/Gemm/MatMul/AveragePool/GlobalAveragePool only, with per-channel weights and
float biases.  That is the placement TensorRT fuses (Q/DQ in front of weighted layers; activations
such as SiLU fuse into the convolution), so PPQ's simulation and our exported Q/DQ graph agree,
and elementwise decode tails (box coordinates concatenated with scores) are never squeezed into
one INT8 scale.

Modules, one job each:

* ``_runtime``: PPQ's import behind the shim, its prints, torch threads, op handlers, the parser.
* ``_graph``: PPQ's quantized graph of a model, built once per model and copied per call.
* ``_scales``: weight and activation scales from statistics, PPQ's rules vectorised.
* ``_calib``: ``calibrate`` / ``rescale``.
* ``_result``: ``CalibrationResult`` and reading the scales out of the graph.
* ``_optim``: equalization, LSQ, AdaRound, bias correction.
* ``_analysis``: graph-wise / layer-wise errors, the per-layer method choice.
* ``_executor``: INT8 simulation and the profiling executor.
"""
from __future__ import annotations

from xtrt.backend.ppq._analysis import choose_per_tensor, graphwise_error, layerwise_error
from xtrt.backend.ppq._calib import calibrate, rescale
from xtrt.backend.ppq._executor import PpqExecutor, build_executor, simulate, simulator
from xtrt.backend.ppq._graph import release as release_graphs
from xtrt.backend.ppq._optim import equalize, optimize
from xtrt.backend.ppq._result import CalibrationResult, _collect_scales, _positive
from xtrt.backend.ppq._runtime import (QUANTIZED_OP_TYPES, _op_execution_error, _ppq, _quiet,
                                       _torch_threads, ppq_version)
from xtrt.backend.ppq._scales import weight_scales as _weight_scales

__all__ = ["ppq_version", "CalibrationResult", "calibrate", "rescale", "graphwise_error",
           "layerwise_error", "equalize", "optimize", "choose_per_tensor",
           "simulate", "simulator", "build_executor", "QUANTIZED_OP_TYPES", "PpqExecutor", "release_graphs"]

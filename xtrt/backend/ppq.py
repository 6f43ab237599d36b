"""The only module that imports PPQ.

It holds the compatibility shim call, installs xtrt's op handlers into PPQ, runs calibration
(optionally LSQ), PPQ's graph-wise / layer-wise analysis, and builds PPQ executors for profiling.
Everything it returns is plain Python / numpy: nothing else in xtrt knows PPQ's names.

Quantizer choice: ``TensorRTQuantizer_InputOnly`` (PPQ's own TRT variant) quantizes the inputs of
Conv/ConvTranspose/Gemm/MatMul/AveragePool/GlobalAveragePool only, with per-channel weights and
float biases.  That is the placement TensorRT fuses (Q/DQ in front of weighted layers; activations
such as SiLU fuse into the convolution), so PPQ's simulation and our exported Q/DQ graph agree,
and elementwise decode tails (box coordinates concatenated with scores) are never squeezed into
one INT8 scale.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np

from xtrt.errors import QuantizationError, UnsupportedOpError
from xtrt.trt.rules import INT8_OP_TYPES, weight_scale

__all__ = ["ppq_version", "CalibrationResult", "calibrate", "rescale", "graphwise_error",
           "layerwise_error", "equalize", "optimize", "choose_per_tensor",
           "simulate", "build_executor", "QUANTIZED_OP_TYPES"]

log = logging.getLogger(__name__)

QUANTIZED_OP_TYPES = INT8_OP_TYPES
_INSTALLED_HANDLERS: set[str] = set()


class _LogWriter(io.StringIO):
    """Collects PPQ's prints and forwards them to our logger at debug level."""

    def getvalue_lines(self) -> list[str]:
        return [ln for ln in self.getvalue().splitlines() if ln.strip()]


@contextlib.contextmanager
def _torch_threads(device: str):
    """PPQ's executor runs op by op in torch.  On CPU, torch's OpenMP pool stalls at every op's
    barrier when another process or ONNX Runtime holds a core (measured on 2 cores: one YOLOv8n
    320 forward 0.2-2.6 s with 2 threads, 0.057 s with 1), so use half the cores."""
    if device != "cpu":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(before, (os.cpu_count() or 2) // 2)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def _quiet(progress: bool = True):
    """PPQ prints to stdout (library code must not); its tqdm bars go to stderr and are kept only
    when ``progress`` is on."""
    buf = _LogWriter()
    with contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(buf))
        if not progress:
            stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
        yield buf
    for line in buf.getvalue_lines()[-200:]:
        log.debug("ppq: %s", line)


def _ppq():
    """Import ppq once, behind the shim, without its banner on stdout."""
    from xtrt.backend import _ppq_compat

    _ppq_compat.install()
    with _quiet():
        import ppq  # noqa: F401
        import ppq.api  # noqa: F401
        import ppq.lib  # noqa: F401
    return ppq


def ppq_version() -> str:
    return str(getattr(_ppq(), "__version__", "0.6.6"))


def _prelu_forward(op, values, ctx=None, **kwargs):
    """ONNX PRelu (slope broadcast to X, e.g. [C, 1, 1] from torch): PPQ 0.6.6 calls
    ``F.prelu``, which takes only a scalar or 1-D slope and fails on every torch export."""
    import torch

    x, slope = values
    return torch.where(x >= 0, x, x * slope.to(x.dtype))


def _install_handlers() -> None:
    """Register every xtrt op handler with PPQ's TorchExecutor, on every platform (idempotent)."""
    ppq = _ppq()
    from ppq.api import register_operation_handler
    from ppq.core import TargetPlatform

    import xtrt.ops as ops

    if "PRelu" not in _INSTALLED_HANDLERS:
        for platform in TargetPlatform:
            with contextlib.suppress(Exception):
                register_operation_handler(_prelu_forward, "PRelu", platform)
        _INSTALLED_HANDLERS.add("PRelu")
    for name in ops.REGISTRY.names():
        if name in _INSTALLED_HANDLERS:
            continue
        handler = ops.REGISTRY.get(name)

        def forward(op, values, ctx=None, _h=handler, **kwargs):
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in op.attributes.items()}
            out = _h.forward(list(values), attrs)
            return out if len(out) != 1 else out[0]

        for platform in TargetPlatform:
            with contextlib.suppress(Exception):
                register_operation_handler(forward, name, platform)
        _INSTALLED_HANDLERS.add(name)
    del ppq


def _load_graph(model):
    """Load an onnx.ModelProto as a PPQ graph (PPQ's parser reads files)."""
    _ppq()
    from ppq.api import load_onnx_graph
    import onnx

    try:
        fd, tmp = tempfile.mkstemp(suffix=".onnx", prefix="xtrt_ppq_")
        os.close(fd)
    except OSError as exc:
        from xtrt.errors import OutputError
        raise OutputError(f"cannot create a temporary file for PPQ: {exc.strerror or exc}",
                          "free disk space in the temp folder (TMPDIR)") from exc
    try:
        onnx.save(model, tmp)
        with _quiet():
            return load_onnx_graph(tmp)
    except KeyError as exc:
        op = str(exc.args[0]) if exc.args else "?"
        nodes = [n.name for n in model.graph.node if n.op_type == op]
        where = f" (node {nodes[0]!r}{f' and {len(nodes) - 1} more' if len(nodes) > 1 else ''})" \
            if nodes else ""
        raise UnsupportedOpError(f"PPQ cannot parse op {op!r}{where}",
                                 "register a handler for it with --plugin my_ops.py") from exc
    except OSError as exc:
        from xtrt.errors import OutputError
        raise OutputError(f"cannot write a temporary file for PPQ: {exc.strerror or exc}",
                          "free disk space in the temp folder (TMPDIR)") from exc
    finally:
        os.unlink(tmp)


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


def _to_torch(batches: Iterable[dict[str, np.ndarray]], input_names: Sequence[str], device: str):
    import torch

    out = []
    for feeds in batches:
        if len(input_names) == 1:
            out.append(torch.from_numpy(np.ascontiguousarray(feeds[input_names[0]])))
        else:
            out.append({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()})
    return out


def _collate(device: str) -> Callable:
    def collate(x):
        if isinstance(x, dict):
            return {k: v.to(device) for k, v in x.items()}
        return x.to(device)
    return collate


def calibrate(model, batches: Sequence[dict[str, np.ndarray]], *, device: str = "cpu",
              method: str = "percentile", fp32_ops: Sequence[str] = (),
              lsq: dict | None = None, progress: bool = True,
              act_ranges: dict[str, tuple[float, float]] | None = None,
              act_hists: dict[str, tuple[np.ndarray, float]] | None = None) -> CalibrationResult:
    """Calibrate ``model`` (a prepared onnx.ModelProto) with PPQ's TensorRT input-only quantizer.

    Args:
        batches: calibration feeds (numpy, keyed by input name); materialised once here.
        method: percentile | kl | mse | minmax.
        fp32_ops: node names PPQ must leave in float.
        lsq: None, or dict(steps, lr, block_size, seed) to run LSQ fine-tuning after calibration.
        act_ranges: tensor -> (low, high) collected elsewhere (xtrt.quant.observe, on ONNX
            Runtime); PPQ's runtime calibration pass is then skipped and each activation scale is
            set with PPQ's own ``minmax_to_scale_offset``.  Ignored with LSQ (which needs PPQ's
            calibrated executor state end to end).
        act_hists: tensor -> (histogram of |x|, bin width), for kl / mse: scales then come from
            PPQ's own ``hist_to_scale_offset`` of that method's observer.
    """
    _ppq()
    _install_handlers()
    with _torch_threads(device):
        return _calibrate(model, batches, device=device, method=method, fp32_ops=fp32_ops,
                          lsq=lsq, act_ranges=act_ranges, act_hists=act_hists, progress=progress)


def _calibrate(model, batches, *, device, method, fp32_ops, lsq, act_ranges,
               act_hists, progress) -> CalibrationResult:
    import time

    from ppq import QuantizationSettingFactory, TargetPlatform, TorchExecutor
    from ppq.quantization.quantizer.TensorRTQuantizer import TensorRTQuantizer_InputOnly

    t0 = time.perf_counter()
    graph = _load_graph(model)
    input_names = list(graph.inputs.keys())
    data = _to_torch(batches, input_names, device)
    if not data:
        raise QuantizationError("no calibration batches", "give calibration images")
    setting = QuantizationSettingFactory.trt_setting()
    setting.quantize_activation_setting.calib_algorithm = method
    fast = (act_ranges is not None or act_hists is not None) and not lsq
    if fast:
        setting.quantize_activation = False
    if not lsq:
        # keep float weights in the graph: xtrt sets the weight scales itself (see _weight_scales)
        setting.quantize_parameter_setting.baking_parameter = False
    for name in fp32_ops:
        setting.dispatching_table.append(operation=name, platform=TargetPlatform.FP32)
    if lsq:
        setting.lsq_optimization = True
        s = setting.lsq_optimization_setting
        s.steps = int(lsq.get("steps", 200))
        s.lr = float(lsq.get("lr", 1e-5))
        s.block_size = int(lsq.get("block_size", 4))
        s.collecting_device = device
        s.is_scale_trainable = True
        # PPQ's LSQ picks its training batches with the global ``random`` module (and torch
        # initialises nothing at random here): calibration.seed makes that repeatable
        import random

        import torch

        random.seed(int(lsq.get("seed", 0)))
        torch.manual_seed(int(lsq.get("seed", 0)))
    quantizer_cls = TensorRTQuantizer_InputOnly
    # dispatch with the input-only quantizer's op types, then apply our FP32 table
    graph = _dispatch(graph, quantizer_cls, setting)
    quantizer = quantizer_cls(graph=graph)
    executor = TorchExecutor(graph=quantizer._graph, device=device)
    try:
        with _quiet(progress):
            # one sample is enough for PPQ's shape tracing and dummy forward (each a full torch
            # forward pass, slow on CPU): not a whole calibration batch
            first = data[0]
            sample = {k: v[:1] for k, v in first.items()} if isinstance(first, dict) else first[:1]
            quantizer.quantize(inputs=_collate(device)(sample),
                               calib_dataloader=data, executor=executor, setting=setting,
                               calib_steps=max(8, len(data)), collate_fn=_collate(device))
    except NotImplementedError as exc:
        raise UnsupportedOpError(f"PPQ cannot execute an op: {exc}",
                                 "register a handler with --plugin my_ops.py") from exc
    except RuntimeError as exc:
        raise _op_execution_error(exc, graph) from exc
    graph = quantizer._graph
    if fast:
        _apply_stats(graph, method, act_ranges or {}, act_hists or {})
    if not lsq:
        _weight_scales(graph)
    res = CalibrationResult(graph=graph)
    _collect_scales(res)
    res.seconds = time.perf_counter() - t0
    return res


def _op_execution_error(exc: RuntimeError, graph) -> Exception:
    """PPQ's ``Op Execution Error: <node>(Type: <op>, ...)`` as one actionable line (the torch
    error under it says why); any other RuntimeError is returned unchanged (a bug: traceback)."""
    import re

    m = re.match(r"Op Execution Error: (.+?)\(Type: ([^,]+),", str(exc))
    if m is None:
        return exc
    name, op_type = m.group(1), m.group(2)
    cause = exc.__cause__
    why = " ".join(str(cause).split()) if cause is not None else "no reason given"
    hint = ("if the node reshapes with a fixed batch, re-export the model with a dynamic batch or "
            "set calibration.batch_size: 1; otherwise report the model to xtrt")
    if op_type in QUANTIZED_OP_TYPES:
        hint = f"keep it float with quantization.exclude_nodes: [{name}], or " + hint
    return QuantizationError(f"PPQ's executor failed at node {name!r} ({op_type}): "
                             f"{type(cause).__name__ if cause else 'RuntimeError'}: {why}", hint)


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


def rescale(result: CalibrationResult, method: str, *,
            ranges: dict | None = None, hists: dict | None = None) -> CalibrationResult:
    """Re-derive every activation scale of a calibrated result from other statistics (another
    calibration method), in place: PPQ's graph (simulation, analysis) and ``act_scales`` agree."""
    _ppq()
    _apply_stats(result.graph, method, ranges or {}, hists or {}, reapply=True)
    _collect_scales(result)
    return result


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
    import torch
    from ppq.quantization.observer.range import (TorchHistObserver, TorchMSEObserver,
                                                 minmax_to_scale_offset)

    out = {}
    for m, st in candidates.items():
        hists, ranges = st.get("hists") or {}, st.get("ranges") or {}
        if m in ("kl", "mse") and var.name in hists:
            hist, width = hists[var.name]
            obs = {"kl": TorchHistObserver, "mse": TorchMSEObserver}[m](watch_on=var, quant_cfg=qc)
            scale, _ = obs.hist_to_scale_offset(
                histogram=torch.from_numpy(hist.astype(np.int64)), hist_bins=len(hist),
                hist_scale=float(width), config=qc)
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


def _weight_scales(graph) -> None:
    """Per-output-channel weight scale = max|w| / 127, as TensorRT computes it
    (:func:`xtrt.trt.rules.weight_scale`).

    PPQ divides the range by 127.5 (``(quant_max - quant_min) / 2``), so each channel's largest
    weight rounds to 128 and is clipped to 127: with 9 weights per depthwise channel that clipped
    maximum dominates the error (EfficientNet-Lite0: 15.3 -> 19.3 dB weight-only SQNR)."""
    import torch
    from ppq.core import QuantizationStates

    for op in graph.operations.values():
        cfg = getattr(op, "config", None)
        if cfg is None:
            continue
        for var, qc in zip(op.inputs, cfg.input_quantization_config):
            if not var.is_parameter or qc.state == QuantizationStates.FP32 or qc.scale is None:
                continue
            w = var.value
            if not isinstance(w, torch.Tensor) or w.ndim < 1 or qc.scale.numel() <= 1 and w.ndim > 1:
                continue
            axis = qc.channel_axis if qc.channel_axis is not None else 0
            scale = torch.from_numpy(weight_scale(w.detach().float().cpu().numpy(), axis))
            if scale.numel() == qc.scale.numel():
                qc.scale = scale.to(qc.scale.device).reshape(qc.scale.shape)


def _activation_configs(graph):
    """(variable, config, consuming op) for every activation input config, in graph order.

    PPQ overlaps a config when another one owns the tensor's quantization (the output config of a
    GlobalAveragePool/AveragePool feeding a Conv, the configs of a fused pair): such a config is
    ``OVERLAPPED`` and ``dominated_by`` points at its owner, whose scale it shares."""
    for op in graph.operations.values():
        cfg = getattr(op, "config", None)
        if cfg is None:
            continue
        for var, qc in zip(op.inputs, cfg.input_quantization_config):
            if not var.is_parameter:
                yield var, qc, op


def _apply_stats(graph, method: str, ranges: dict, hists: dict, reapply: bool = False) -> None:
    """Activate every activation quant config from statistics collected on ONNX Runtime, with
    PPQ's own rules: ``minmax_to_scale_offset`` for ranges, the kl / mse observer's
    ``hist_to_scale_offset`` for histograms.

    The scale is set on the dominant config (``dominated_by``), once, from the statistics of the
    tensor its consumers read; overlapped configs then share it, as PPQ intends."""
    import torch
    from ppq.core import QuantizationStates
    from ppq.quantization.observer.range import (TorchHistObserver, TorchMSEObserver,
                                                 minmax_to_scale_offset)

    observer_cls = {"kl": TorchHistObserver, "mse": TorchMSEObserver}.get(method)
    missing: list[str] = []
    done: set[int] = set()
    for var, qc, op in _activation_configs(graph):
        root = qc.dominated_by
        if id(root) in done:
            continue
        if root.state != QuantizationStates.INITIAL and not (
                reapply and root.state == QuantizationStates.ACTIVATED):
            continue
        if observer_cls is not None and var.name in hists:
            hist, width = hists[var.name]
            obs = observer_cls(watch_on=var, quant_cfg=root)
            scale, offset = obs.hist_to_scale_offset(
                histogram=torch.from_numpy(hist.astype(np.int64)), hist_bins=len(hist),
                hist_scale=float(width), config=root)
        elif var.name in ranges:
            lo, hi = ranges[var.name]
            scale, offset = minmax_to_scale_offset(float(lo), float(hi), root)
        else:
            missing.append(f"{op.name} ({op.type}) input {var.name!r}")
            continue
        root.scale = torch.tensor(scale, dtype=torch.float32)
        root.offset = torch.tensor(offset, dtype=torch.float32)
        root.state = QuantizationStates.ACTIVATED
        done.add(id(root))
    if missing:
        raise QuantizationError(
            f"no calibration statistics for {len(missing)} quantized input(s), e.g. node "
            f"{missing[0]}: ONNX Runtime did not report that tensor",
            "report the model to xtrt; meanwhile exclude the node with "
            f"quantization.exclude_nodes: [{missing[0].split(' ')[0]}]")


def _dispatch(graph, quantizer_cls, setting):
    from ppq.core import TargetPlatform
    from ppq.scheduler import DISPATCHER_TABLE

    dispatcher = DISPATCHER_TABLE[setting.dispatcher](graph)
    quant_types = quantizer_cls(graph=graph).quant_operation_types
    table = dispatcher.dispatch(graph=graph, quant_types=quant_types,
                                quant_platform=TargetPlatform.UNSPECIFIED,
                                fp32_platform=TargetPlatform.FP32,
                                SOI_platform=TargetPlatform.FP32)
    # PPQ's dispatcher is conservative about ops near the graph end (it sent a classifier's last
    # GlobalAveragePool and Gemm to FP32); xtrt's placement decides instead, so every op of a
    # quantizable type goes to the quantizer unless the FP32 table names it.
    for op in graph.operations.values():
        if op.type in quant_types and table.get(op.name) == TargetPlatform.FP32:
            table[op.name] = TargetPlatform.UNSPECIFIED
    for name, platform in setting.dispatching_table.dispatchings.items():
        if name in graph.operations:
            table[name] = TargetPlatform(platform)
    for op in graph.operations.values():
        op.platform = table[op.name]
    return graph


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


def simulate(result: CalibrationResult, feeds: dict[str, np.ndarray], *,
             device: str = "cpu") -> list[np.ndarray]:
    """Run PPQ's INT8-simulating executor; outputs in the graph's output order."""
    _ppq()
    import torch
    from ppq import TorchExecutor

    ex = TorchExecutor(graph=result.graph, device=device)
    names = list(result.graph.inputs.keys())
    inp = {k: torch.from_numpy(np.ascontiguousarray(feeds[k])).to(device) for k in names}
    with torch.no_grad(), _quiet(), _torch_threads(device):
        outs = ex.forward(inputs=inp, output_names=list(result.graph.outputs.keys()))
    return [o.detach().cpu().numpy() for o in outs]


def _range_hooks(graph) -> dict:
    """PPQ runtime hooks that wrap every op in a profiler range named ``OpType:node``, so a torch
    profiler trace attributes time to each ONNX op."""
    import torch
    from ppq.executor.base import RuntimeHook

    class _Range(RuntimeHook):
        def __init__(self, operation):
            super().__init__(operation)
            self._name = f"{operation.type}:{operation.name}"
            self._rf = None

        def pre_forward_hook(self, inputs, **kwargs):
            self._rf = torch.autograd.profiler.record_function(self._name)
            self._rf.__enter__()
            return inputs

        def post_forward_hook(self, outputs, **kwargs):
            if self._rf is not None:
                self._rf.__exit__(None, None, None)
                self._rf = None
            return outputs

    return {name: _Range(op) for name, op in graph.operations.items()}


class PpqExecutor:
    """PPQ's TorchExecutor behind a small interface (used by xtrt.profile --backend ppq).

    With ``op_ranges`` every op runs inside a ``record_function("OpType:node")`` range.
    """

    def __init__(self, graph, device: str, op_ranges: bool = True):
        from ppq import TorchExecutor

        self._graph = graph
        self._ex = TorchExecutor(graph=graph, device=device)
        self._hooks = _range_hooks(graph) if op_ranges else None
        self.device = device
        self.input_names = list(graph.inputs.keys())
        self.output_names = list(graph.outputs.keys())

    def forward(self, feeds: dict) -> list:
        import torch

        with torch.no_grad(), _quiet(), _torch_threads(self.device):
            return self._ex.forward(inputs={k: feeds[k] for k in self.input_names},
                                    output_names=self.output_names, hooks=self._hooks)


def build_executor(model, device: str = "cpu", int8: bool = False,
                   calib_batches: Sequence[dict[str, np.ndarray]] | None = None) -> PpqExecutor:
    """A PPQ executor for ``model`` (onnx.ModelProto or path): FP32, or INT8-simulating after a
    quick calibration on ``calib_batches``."""
    import onnx

    _ppq()
    _install_handlers()
    if not hasattr(model, "graph"):
        model = onnx.load(str(model))
    if int8:
        if not calib_batches:
            raise QuantizationError("the INT8-simulating PPQ executor needs calibration data",
                                    "pass --images DIR")
        res = calibrate(model, calib_batches, device=device)
        return PpqExecutor(res.graph, device)
    graph = _load_graph(model)
    return PpqExecutor(graph, device)

"""PPQ's graph for a model, quantization configs initialised, built once and copied per call.

Building it is most of PPQ's fixed cost of a calibration (parse, dispatch, one config per tensor,
PPQ's fusion / alignment passes, a traced forward for the variables' shapes, the weight scales),
and none of it depends on the method or on the activation statistics.  So :func:`build` keeps
the last graph built, untouched, and hands out a deep copy with fresh config identities: each
caller owns its copy and can rescale, tune or analyse it.  The key is the model's bytes (SHA-1),
the float ops, the device and the tracing sample's shape, so an edited model builds anew.

Two changes to PPQ's own ``quantize`` make the build itself cheaper, with the same graph:
its ``@empty_ppq_cache`` collections are skipped (:func:`_runtime.no_cache_flush`), and the
per-channel weight scales of ``ParameterQuantizePass`` (a dummy forward plus a Python loop over
every output channel) are computed with one vectorised reduction per weight
(:func:`xtrt.backend.ppq._scales.weight_pass`), bit for bit PPQ's ``minmax_to_scale_offset``.
``reference=True`` runs PPQ's own quantizer unchanged (the tests compare the two).
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import time

from xtrt.backend.ppq._runtime import (_load_graph, _op_execution_error, _quiet,
                                       no_cache_flush)
from xtrt.errors import UnsupportedOpError

_CACHE: dict[tuple, object] = {}   # one pristine graph (its parameters are memory)


def release() -> None:
    """Drop the kept graph."""
    _CACHE.clear()


def _dispatch(graph, quantizer_cls, setting):
    """Every op's platform: PPQ's dispatcher, every quantizable op to the quantizer, then the
    FP32 table of ``setting``."""
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


def setting_for(method: str, fp32_ops, *, quantize_activation: bool, lsq: dict | None,
                device: str):
    """PPQ's TensorRT setting as xtrt runs it: float weights kept (xtrt sets the weight scales
    and the export writes float weights) unless LSQ trains them, ``fp32_ops`` in float."""
    from ppq import QuantizationSettingFactory, TargetPlatform

    setting = QuantizationSettingFactory.trt_setting()
    setting.quantize_activation_setting.calib_algorithm = method
    setting.quantize_activation = quantize_activation
    if not lsq:
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
    return setting


def quantizer_class(reference: bool = False):
    """PPQ's ``TensorRTQuantizer_InputOnly``; unless ``reference``, with xtrt's vectorised
    weight pass in place of ``ParameterQuantizePass``."""
    from ppq.quantization.optim import ParameterQuantizePass
    from ppq.quantization.quantizer.TensorRTQuantizer import TensorRTQuantizer_InputOnly

    from xtrt.backend.ppq._scales import weight_pass

    if reference:
        return TensorRTQuantizer_InputOnly

    class Quantizer(TensorRTQuantizer_InputOnly):
        def build_quant_pipeline(self, setting):
            pipeline = super().build_quant_pipeline(setting)
            pipeline._pipeline = [weight_pass() if isinstance(p, ParameterQuantizePass) else p
                                  for p in pipeline._pipeline]
            return pipeline

    return Quantizer


def run_quantizer(graph, setting, sample, data, *, device: str, progress: bool,
                  reference: bool = False):
    """PPQ's quantize on ``graph`` (in place; its runtime calibration only when the setting
    asks): the one-line errors for ops PPQ cannot run.  Returns the graph."""
    from ppq import TorchExecutor

    cls = quantizer_class(reference)
    graph = _dispatch(graph, cls, setting)
    quantizer = cls(graph=graph)
    executor = TorchExecutor(graph=quantizer._graph, device=device)
    flush = no_cache_flush() if not reference else _nothing()
    try:
        with _quiet(progress), flush:
            # one sample is enough for PPQ's shape tracing (a full torch forward, slow on CPU)
            quantizer.quantize(inputs=sample, calib_dataloader=data, executor=executor,
                               setting=setting, calib_steps=max(8, len(data)),
                               collate_fn=_collate_to(device))
    except NotImplementedError as exc:
        raise UnsupportedOpError(f"PPQ cannot execute an op: {exc}",
                                 "register a handler with --plugin my_ops.py") from exc
    except RuntimeError as exc:
        raise _op_execution_error(exc, graph) from exc
    return quantizer._graph


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _collate_to(device: str):
    from xtrt.backend.ppq._runtime import _collate

    return _collate(device)


def build(model, sample, *, device: str, fp32_ops, progress: bool = True,
          reference: bool = False, keep: bool = True, timings: dict | None = None):
    """A graph of ``model`` with every quantization config initialised and the weight scales set,
    no activation scale yet (:func:`xtrt.backend.ppq._scales.apply_stats` sets them).  A fresh
    deep copy of the kept graph when the same model, float ops, device and sample come again;
    with ``keep`` off a new graph is not kept (nor copied: the caller gets it)."""
    t0 = time.perf_counter()
    data = model.SerializeToString()
    shape = {k: (tuple(v.shape), str(v.dtype)) for k, v in sample.items()} \
        if isinstance(sample, dict) else (tuple(sample.shape), str(sample.dtype))
    key = (hashlib.sha1(data).hexdigest(), tuple(sorted(fp32_ops)), device, repr(shape))
    kept = None if reference else _CACHE.get(key)
    if kept is not None:
        graph = _fresh_copy(kept)
        _note(timings, "graph_copy_s", t0)
        return graph
    graph = _load_graph(model, data)
    _note(timings, "graph_parse_s", t0)
    t1 = time.perf_counter()
    setting = setting_for("minmax", fp32_ops, quantize_activation=False, lsq=None, device=device)
    graph = run_quantizer(graph, setting, _collate_to(device)(sample), [sample],
                          device=device, progress=progress, reference=reference)
    _note(timings, "graph_quantize_s", t1)
    if reference or not keep:
        return graph
    t2 = time.perf_counter()
    _CACHE.clear()
    _CACHE[key] = graph
    graph = _fresh_copy(graph)
    _note(timings, "graph_copy_s", t2)
    return graph


def _note(timings: dict | None, what: str, since: float) -> None:
    if timings is not None:
        timings[what] = timings.get(what, 0.0) + time.perf_counter() - since


def _fresh_copy(graph):
    """A deep copy of ``graph`` whose quantization configs have identities of their own (PPQ
    compares and hashes configs by a serial number, which a deep copy would share)."""
    from ppq.core import TensorQuantizationConfig
    from ppq.IR import QuantableOperation

    with _plain_state():
        clone = copy.deepcopy(graph)
    new_hash = TensorQuantizationConfig._TensorQuantizationConfig__create_hash
    for op in clone.operations.values():
        if isinstance(op, QuantableOperation):
            for cfg, _ in op.config_with_variable:
                cfg._hash = new_hash()
    return clone


def _getstate(self) -> dict:
    return self.__dict__


def _setstate(self, state: dict) -> None:
    self.__dict__.update(state)


@contextlib.contextmanager
def _plain_state():
    """PPQ's ``Serializable`` pickles links as names and, unless configured otherwise, drops
    tensor values: right for its files, wrong for a copy in memory.  Inside this block its
    objects copy their ``__dict__`` as it is (links, tensors and all)."""
    from ppq.core.storage import Serializable
    from ppq.IR.base.graph import BaseGraph, Operation, Variable

    saved = [(c, n, c.__dict__[n]) for c in (Serializable, Variable, Operation, BaseGraph)
             for n in ("__getstate__", "__setstate__") if n in c.__dict__]
    for c, n, _ in saved:
        setattr(c, n, _getstate if n == "__getstate__" else _setstate)
    try:
        yield
    finally:
        for c, n, f in saved:
            setattr(c, n, f)

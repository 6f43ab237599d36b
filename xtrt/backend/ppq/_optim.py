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
             bias_correction: dict | None = None, progress: bool = True) -> dict[str, dict]:
    """Run PPQ's post-calibration passes on a calibrated result, in place, in this order:
    LSQ (``LearnedStepSizePass``: weights, biases and scales trained block by block; with
    ``train: activation_scales`` the activation scales only, see :func:`_lsq`; with
    ``after_adaround`` it runs after AdaRound instead),
    AdaRound (``AdaroundPass``: weight rounding learned, weights left on the INT8 grid),
    bias correction (``BiasCorrectionPass``: each layer's mean output error moved into its bias).

    Each setting is a dict of the pass's own arguments (steps, lr, block_size, gamma) plus
    ``batches``: how many of ``batches`` the pass trains/measures on.  Every PPQ pass keeps a
    block's change only when the block's output error went down; AdaRound runs without PPQ's
    weight-scale tuning and is judged on the hard rounding the export writes
    (:func:`_hard_checked_adaround`).  Afterwards the result's weights, biases and scales are
    re-read, so the export writes what the passes produced.
    Returns per pass ``{"seconds", "batches"}`` (batches: how many it used); AdaRound adds
    ``blocks`` (trained), ``withdrawn`` (of them, left at nearest rounding) and
    ``withdrawn_on_hard`` (of those, the blocks PPQ's soft-rounding check would have kept).
    """
    _ppq()
    _install_handlers()
    with _torch_threads(device):
        return _optimize(result, batches, device, lsq, adaround, bias_correction, progress)


def _hard_checked_adaround(device: str, settings: dict):
    """PPQ's ``AdaroundPass`` with two changes (benchmarks/techniques.md, "Cause, from PPQ
    0.6.6's source"): the weight scales are never tuned (PPQ's ``tune_block_weight_scale`` runs
    900 Adam steps on every per-channel scale and keeps the result even when the block got worse;
    xtrt's scales stay TensorRT's ``max|w| / 127``), and after each block's training the block's
    output error is measured again with the hard rounding the export writes (PPQ compares only
    the soft rounding's loss): a block worse than with nearest rounding gets its weights back."""
    from ppq.quantization.optim import AdaroundPass

    class HardCheckedAdaroundPass(AdaroundPass):
        """AdaRound without weight-scale tuning, withdrawn per block on the hard rounding."""

        blocks = 0              # blocks trained
        withdrawn = 0           # of them, blocks left at nearest rounding
        withdrawn_on_hard = 0   # of those, blocks PPQ would have kept (soft loss went down)

        def tune_block_weight_scale(self, block, *args, **kwargs) -> None:
            return None

        def finetune(self, steps, learning_rate, block, executor, qt_inputs, fp_outputs,
                     optimizer=None, scheduler=None):
            import torch

            params = [v for op in block.rps if op.is_computing_op
                      for v in op.inputs[1:] if v.is_parameter]
            backup = {id(v): v.value.clone() for v in params}
            pre, soft = super().finetune(steps, learning_rate, block, executor, qt_inputs,
                                         fp_outputs, optimizer, scheduler)
            if all(torch.equal(v.value, backup[id(v)]) for v in params):
                # nothing trainable, or PPQ withdrew it (the soft rounding was worse)
                self.blocks += int(soft != 0 or pre != 0)
                self.withdrawn += int(soft > pre)
                return pre, pre
            self.blocks += 1
            hard = self.compute_block_loss(block=block, qt_inputs=qt_inputs,
                                           fp_outputs=fp_outputs, executor=executor,
                                           loss_fn=self.loss_fn)
            if hard > pre:       # the exported (hard) rounding is worse: back to nearest
                for v in params:
                    v.value = backup[id(v)]
                self.withdrawn += 1
                self.withdrawn_on_hard += 1
                return pre, pre
            return pre, hard

    return HardCheckedAdaroundPass(
        steps=int(settings.get("steps", 500)), lr=float(settings.get("lr", 1e-3)),
        block_size=int(settings.get("block_size", 4)), gamma=float(settings.get("gamma", 1.0)),
        is_scale_trainable=False, collecting_device=device)


def _detach_parameters(graph) -> None:
    """Parameters as plain tensors again (a later pass would fail to train a non-leaf one)."""
    import torch

    for var in graph.variables.values():
        if var.is_parameter and isinstance(var.value, torch.Tensor) and var.value.requires_grad:
            var.value = var.value.detach()


def _lsq(device: str, settings: dict):
    """PPQ's ``LearnedStepSizePass``; with ``train: activation_scales`` only the activation
    scales get gradients: weights, biases and weight scales stay as they are (after AdaRound:
    as it rounded them; PPQ's LSQ would move the weights off that grid and the export would round
    them to nearest again)."""
    import torch
    from ppq.core import QuantizationStates
    from ppq.IR import QuantableOperation
    from ppq.quantization.optim import LearnedStepSizePass

    train = settings.get("train", "all")
    if train not in ("all", "activation_scales"):
        raise ValueError(f"lsq train {train!r}: use all or activation_scales")

    class ActivationScaleLSQ(LearnedStepSizePass):
        """LSQ on the activation scales only."""

        def enable_block_gradient(self, block) -> None:
            for op in block.rps:
                if not isinstance(op, QuantableOperation):
                    continue
                for cfg, var in op.config_with_variable:
                    if not var.is_parameter and isinstance(cfg.scale, torch.Tensor) and \
                            cfg.state == QuantizationStates.ACTIVATED:
                        cfg.scale.requires_grad = True

    cls = LearnedStepSizePass if train == "all" else ActivationScaleLSQ
    return cls(steps=int(settings.get("steps", 100)), lr=float(settings.get("lr", 1e-5)),
               block_size=int(settings.get("block_size", 4)),
               gamma=float(settings.get("gamma", 0.0)), is_scale_trainable=True,
               collecting_device=device)


def _optimize(result, batches, device, lsq, adaround, bias_correction, progress):
    import time

    from ppq import TorchExecutor
    from ppq.quantization.optim import BiasCorrectionPass, PassiveParameterQuantizePass

    graph = result.graph
    executor = TorchExecutor(graph=graph, device=device)
    names = list(graph.inputs.keys())
    data_all = _to_torch(batches, names, device)
    first = data_all[0]
    executor.tracing_operation_meta(
        inputs={k: v[:1] for k, v in first.items()} if isinstance(first, dict) else first[:1])
    plan = []
    if lsq is not None:
        plan.append(("lsq", lsq, lambda s: _lsq(device, s)))
    if adaround is not None:
        plan.append(("adaround", adaround, lambda s: _hard_checked_adaround(device, s)))
    if lsq is not None and adaround is not None and lsq.get("after_adaround"):
        plan = plan[1:2] + plan[:1]
    if bias_correction is not None:
        plan.append(("bias_correction", bias_correction, lambda s: BiasCorrectionPass(
            block_size=int(s.get("block_size", 1)), collecting_device=device)))
    record = {}
    for name, s, make in plan:
        t0 = time.perf_counter()
        data = data_all[:max(1, int(s.get("batches", len(data_all))))]
        p = make(s)
        with _quiet(progress):
            p.optimize(graph=graph, dataloader=data, executor=executor,
                       collate_fn=_collate(device))
            PassiveParameterQuantizePass().optimize(graph=graph)
        _detach_parameters(graph)       # AdaRound leaves weights that are not autograd leaves
        record[name] = {"seconds": round(time.perf_counter() - t0, 3), "batches": len(data)}
        if hasattr(p, "withdrawn"):
            record[name].update(blocks=p.blocks, withdrawn=p.withdrawn,
                                withdrawn_on_hard=p.withdrawn_on_hard)
    _collect_scales(result)
    return record

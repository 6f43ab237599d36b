"""PPQ's executors: INT8 simulation of a calibrated graph, and the op-by-op executor of
``xtrt.profile --backend ppq``."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from xtrt.backend.ppq._result import CalibrationResult
from xtrt.backend.ppq._runtime import _install_handlers, _load_graph, _ppq, _quiet, _torch_threads
from xtrt.errors import QuantizationError


def simulator(result: CalibrationResult, *, device: str = "cpu", outputs: int | None = None):
    """``run(feeds) -> outputs``: PPQ's INT8-simulating executor, built once for every batch;
    outputs in the graph's output order (the first ``outputs`` of them when given)."""
    _ppq()
    import torch
    from ppq import TorchExecutor

    ex = TorchExecutor(graph=result.graph, device=device)
    names = list(result.graph.inputs.keys())
    wanted = list(result.graph.outputs.keys())[:outputs]

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        inp = {k: torch.from_numpy(np.ascontiguousarray(feeds[k])).to(device) for k in names}
        with torch.no_grad(), _quiet(), _torch_threads(device):
            outs = ex.forward(inputs=inp, output_names=wanted)
        return [o.detach().cpu().numpy() for o in outs]
    return run


def simulate(result: CalibrationResult, feeds: dict[str, np.ndarray], *,
             device: str = "cpu") -> list[np.ndarray]:
    """Run PPQ's INT8-simulating executor on one batch (:func:`simulator` for many)."""
    return simulator(result, device=device)(feeds)


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
        from xtrt.backend.ppq._calib import calibrate

        res = calibrate(model, calib_batches, device=device)
        return PpqExecutor(res.graph, device)
    graph = _load_graph(model)
    return PpqExecutor(graph, device)

"""Inference backends for the profiler: ONNX Runtime (deployment-like) and PPQ's executor.

Both expose the same small surface that :func:`xtrt.profile.stages.run_step` drives:
``to_device`` (host-to-device copy), ``infer``, ``to_host`` (device-to-host copy), ``tail``
(the plugin tail run on the host, or None) and ``sync`` (wait for the device, so that the
stage timings are honest on CUDA).  ORT sessions come from :mod:`xtrt.runtime.session` only;
ppq is reached only through :mod:`xtrt.backend.ppq`.
"""
from __future__ import annotations

import logging
from typing import Callable

import numpy as np

from xtrt.errors import DeviceError, XtrtError

__all__ = ["OrtBackend", "PpqBackend", "DeviceMemory", "make_backend", "check_device", "plugin_nodes_of"]

log = logging.getLogger(__name__)


def check_device(device: str, backend: str) -> None:
    """Fail with one clear line when ``device`` cannot be used by ``backend``."""
    if device not in ("cpu", "cuda"):
        raise DeviceError(f"unknown device {device!r}", "use --device cpu or --device cuda")
    if device == "cpu":
        return
    import torch

    if not torch.cuda.is_available():
        raise DeviceError("--device cuda was asked for, but no CUDA device is available "
                          "(torch.cuda.is_available() is False)",
                          "run on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu")
    if backend == "ort":
        from xtrt.runtime.session import providers_for

        providers_for("cuda")  # raises DeviceError without onnxruntime-gpu


def plugin_nodes_of(model) -> list:
    """Plugin (non-ONNX-domain) nodes that ONNX Runtime cannot run, e.g. EfficientNMS_TRT."""
    from xtrt.model.split import find_plugin_nodes

    return list(find_plugin_nodes(model))


class OrtBackend:
    """ONNX Runtime (CPU EP, or CUDA EP with I/O binding); plugin tails run by the split runner."""

    name = "ort"

    def __init__(self, model, device: str = "cpu", *, threads: int | None = None,
                 profile_prefix: str | None = None):
        from xtrt.runtime.session import make_session

        self.device = device
        self.tail: Callable | None = None
        self.plugin_nodes = plugin_nodes_of(model)
        kwargs = dict(threads=threads, enable_profiling=profile_prefix is not None,
                      profile_prefix=profile_prefix)
        if self.plugin_nodes:
            from xtrt.runtime.split import SplitRunner

            # The split runner owns the body session (made by make_session with our kwargs) and
            # runs the plugin tail through the xtrt.ops handlers in torch.
            runner = SplitRunner(model, device=device, **kwargs)
            self.session = runner.session
            self.tail = lambda feeds, outs: runner.run_tail(feeds, dict(zip(self.body_outputs, outs)))
        else:
            self.session = make_session(model, device, **kwargs)
        self.profiling = profile_prefix is not None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.body_outputs = [o.name for o in self.session.get_outputs()]
        self.output_shapes = [o.shape for o in self.session.get_outputs()]
        self.runs = 0
        self._feeder = None

    def to_device(self, feeds: dict[str, np.ndarray]):
        """CPU: the arrays as they are.  CUDA: pinned host buffers and an asynchronous copy on a
        side stream (:mod:`xtrt.runtime.feed`); :meth:`sync` waits for it."""
        if self.device == "cpu":
            return feeds
        return self.feeder.put(feeds)

    @property
    def feeder(self):
        """The CUDA :class:`xtrt.runtime.feed.DeviceFeed` (made on first use)."""
        if self._feeder is None:
            from xtrt.runtime.feed import DeviceFeed

            self._feeder = DeviceFeed("cuda")
        return self._feeder

    def host_buffer(self, name: str, shape, dtype, tag: int = 0) -> np.ndarray:
        """A host buffer a producer can fill for :meth:`to_device` (pinned on CUDA)."""
        if self.device == "cpu":
            return np.empty(shape, dtype)
        return self.feeder.host_buffer(name, shape, dtype, tag)

    def infer(self, dev, wait: bool = True):
        """Run on ``dev`` (CUDA: device tensors, bound in place).  ``wait=False``: the caller has
        already waited for ``dev``'s copy, and a later copy may still be in flight (overlap)."""
        self.runs += 1
        if self.device == "cpu":
            return self.session.run(self.body_outputs, dev)
        from xtrt.runtime.feed import bind_inputs

        if wait:
            self.feeder.wait()   # the input copy has landed before ORT's stream reads it
        binding = self.session.io_binding()
        bind_inputs(binding, dev, self.feeder.device_id)
        for n in self.body_outputs:
            binding.bind_output(n, "cuda")
        self.session.run_with_iobinding(binding)
        return binding

    def to_host(self, out) -> list[np.ndarray]:
        return out if self.device == "cpu" else out.copy_outputs_to_cpu()

    def sync(self) -> None:
        """Wait for the input copy; ORT's Run itself returns after its stream is synchronised."""
        if self._feeder is not None:
            self._feeder.wait()

    def end_profiling(self) -> str | None:
        """Stop ORT's per-node profiler and return its JSON path (None when it was off)."""
        return self.session.end_profiling() if self.profiling else None


class PpqBackend:
    """PPQ's TorchExecutor, op by op (optionally the INT8-simulating one), via xtrt.backend.ppq."""

    name = "ppq"

    def __init__(self, model, device: str = "cpu", *, int8: bool = False, calib_batches=None,
                 input_shape=None):
        try:
            from xtrt.backend import ppq as ppq_backend
        except ImportError as exc:
            raise XtrtError(f"--backend ppq is not available: {exc}",
                            "install ppq==0.6.6, or use --backend ort") from exc
        build = getattr(ppq_backend, "build_executor", None)
        if build is None:
            raise XtrtError("--backend ppq needs xtrt.backend.ppq.build_executor, which this xtrt "
                            "does not have yet", "use --backend ort")
        import torch

        self._torch = torch
        self.device = device
        self.tail = None
        self.plugin_nodes = plugin_nodes_of(model)
        if input_shape is not None:
            # PPQ needs what xtrt.quant gives it: opset 13 (Resize), folded shapes
            from xtrt.model.prepare import prepare_model

            model = prepare_model(model, list(input_shape), check=False).model
        self.ex = build(model, device=device, int8=int8, calib_batches=calib_batches) if int8 \
            else build(model, device=device)
        self.input_names = list(self.ex.input_names)
        self.body_outputs = list(self.ex.output_names)
        from xtrt.model.load import dims_of

        dims = {o.name: dims_of(o) for o in model.graph.output}
        self.output_shapes = [dims.get(n, []) for n in self.body_outputs]
        self.runs = 0
        self._feeder = None

    def to_device(self, feeds: dict[str, np.ndarray]):
        t = self._torch
        if self.device == "cuda":   # pinned buffers, asynchronous copy (xtrt.runtime.feed)
            if self._feeder is None:
                from xtrt.runtime.feed import DeviceFeed

                self._feeder = DeviceFeed("cuda")
            return self._feeder.put(feeds)
        return {n: t.from_numpy(np.ascontiguousarray(a)).to(self.device) for n, a in feeds.items()}

    def host_buffer(self, name: str, shape, dtype, tag: int = 0) -> np.ndarray:
        """A host buffer a producer can fill for :meth:`to_device` (pinned on CUDA)."""
        if self.device != "cuda":
            return np.empty(shape, dtype)
        self.to_device({})    # makes the feeder
        return self._feeder.host_buffer(name, shape, dtype, tag)

    def infer(self, dev, wait: bool = True):
        self.runs += 1
        if self._feeder is not None and wait:
            self._feeder.wait()      # the side-stream copy has landed before PPQ reads it
        with self._torch.no_grad():
            return self.ex.forward(dev)

    def to_host(self, out) -> list[np.ndarray]:
        res = [o.detach().cpu().numpy() for o in out]
        return res

    def sync(self) -> None:
        if self.device == "cuda":
            if self._feeder is not None:
                self._feeder.wait()
            self._torch.cuda.synchronize()

    def end_profiling(self) -> str | None:
        return None


def make_backend(kind: str, model, device: str, *, threads: int | None = None,
                 profile_prefix: str | None = None, int8: bool = False, calib_batches=None,
                 input_shape=None):
    """Build the backend named ``kind`` ('ort' or 'ppq') for ``model`` (an onnx.ModelProto);
    ``input_shape`` (batch included) lets the ppq backend prepare the model as xtrt.quant does."""
    check_device(device, kind)
    if kind == "ort":
        if int8:
            log.warning("--int8 only applies to --backend ppq; ignored")
        return OrtBackend(model, device, threads=threads, profile_prefix=profile_prefix)
    if kind == "ppq":
        return PpqBackend(model, device, int8=int8, calib_batches=calib_batches,
                          input_shape=input_shape)
    raise XtrtError(f"unknown backend {kind!r}", "use --backend ort or --backend ppq")


class DeviceMemory:
    """Peak device memory of a run in bytes (None on CPU).

    torch's allocator statistics see PPQ's tensors; ORT's CUDA arena is outside torch, so the
    device-wide used memory is sampled as well and the larger increase over the baseline wins.
    """

    def __init__(self, device: str):
        self.device = device
        self.peak = 0
        self.base = 0
        if device == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            free, total = torch.cuda.mem_get_info()
            self.base = total - free

    def sample(self) -> None:
        if self.device != "cuda":
            return
        import torch

        free, total = torch.cuda.mem_get_info()
        self.peak = max(self.peak, total - free - self.base, torch.cuda.max_memory_allocated())

    def value(self) -> int | None:
        return None if self.device != "cuda" else int(self.peak)

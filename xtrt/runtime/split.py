"""Run a plugin-terminated model on ONNX Runtime: the body on ORT, the plugin tail with xtrt handlers.

    runner = SplitRunner("yolo_e2e.onnx", device="cpu")
    num_dets, boxes, scores, classes = runner.run({"images": batch})

The body (everything before the plugin nodes, see :func:`xtrt.model.split.split_model`) runs in one
ONNX Runtime session on the CPU or CUDA execution provider.  Tail nodes run in graph order: plugin
nodes through their :mod:`xtrt.ops` handler in torch (on CUDA when ``device='cuda'`` and torch has
CUDA), standard ONNX ops that follow a plugin (a Cast, an Identity) through a cached one-node ORT
session on the CPU, so their semantics are exactly ONNX Runtime's.  Outputs come back under the
model's own names and in its own order.  Works the same for the FP32 model and a Q/DQ export.
"""
from __future__ import annotations

import contextlib

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from xtrt.errors import DataError, ModelError, XtrtError
from xtrt.runtime.session import make_session

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from xtrt.model.split import SplitPlan
    from xtrt.ops.registry import OpRegistry

__all__ = ["SplitRunner", "load_model"]

log = logging.getLogger(__name__)


def load_model(model: "str | Path | onnx.ModelProto") -> "onnx.ModelProto":
    """An ``onnx.ModelProto`` from a path or a proto; a missing or corrupt file raises ModelError."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise ModelError(f"model file '{path}' does not exist", "check the path")
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise ModelError(f"cannot read ONNX model '{path}': {exc}", "re-export the model") from exc


def _dims(vi: "onnx.ValueInfoProto") -> list[int | str | None]:
    if not vi.type.tensor_type.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
            for d in vi.type.tensor_type.shape.dim]


@contextlib.contextmanager
def _torch_threads_for_tail(device: str):
    """On the CPU, run the (small) tail on one torch thread: torch's pool otherwise competes with
    ONNX Runtime's for the same cores (measured on 2 cores: NMS 3-64 ms -> 2.8 ms, and ORT's next
    batch slowed by half)."""
    if device == "cuda":
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SplitRunner:
    """Runs any ONNX model, plugin-terminated or not, on ONNX Runtime plus xtrt handlers.

    Args:
        model: path or ``onnx.ModelProto``.
        device: 'cpu' or 'cuda' (ORT execution provider; torch device of the plugin tail).
        registry: op handlers (default: the global :data:`xtrt.ops.REGISTRY`).
        **session_kwargs: passed to :func:`xtrt.runtime.session.make_session` for the body.

    Raises:
        UnsupportedOpError: a plugin node has no handler.
    """

    def __init__(self, model: "str | Path | onnx.ModelProto", device: str = "cpu", *,
                 registry: "OpRegistry | None" = None, **session_kwargs: Any):
        from xtrt.model.split import split_model
        from xtrt.ops import REGISTRY, node_attrs

        proto = load_model(model)
        self.device = device
        self.plan: SplitPlan = split_model(proto, registry)
        registry = REGISTRY if registry is None else registry
        graph = proto.graph
        inits = {t.name for t in graph.initializer}
        inputs = [i for i in graph.input if i.name not in inits]
        self.input_names: list[str] = [i.name for i in inputs]
        self.input_shapes: list[list[int | str | None]] = [_dims(i) for i in inputs]
        self.output_names: list[str] = list(self.plan.output_names)
        self._opsets = list(proto.opset_import)
        self._ir_version = proto.ir_version
        self._tail = [(node, registry.get(node.op_type) if node in self.plan.plugin_nodes else None,
                       node_attrs(node)) for node in self.plan.tail_nodes]
        body_outputs = self.plan.body_output_names
        self._session = make_session(self.plan.body, device, **session_kwargs) if body_outputs else None
        self._body_outputs = body_outputs
        self._std_sessions: dict[tuple, Any] = {}
        self._torch_device = None
        self._feeder = None
        if self._tail:
            log.info("plugin model: body on ONNX Runtime (%s), tail of %d node(s) [%s] on xtrt handlers",
                     device, len(self._tail), ", ".join(n.op_type for n in self.plan.tail_nodes))

    @property
    def session(self):
        """The ONNX Runtime session of the body (None when the model is all tail)."""
        return self._session

    @property
    def has_plugins(self) -> bool:
        """True when the model has a plugin tail."""
        return bool(self._tail)

    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> None:
        missing = [n for n in self.input_names if n not in feeds]
        unknown = [n for n in feeds if n not in self.input_names]
        if missing or unknown:
            what = f"missing input(s) {missing}" if missing else f"unknown input(s) {unknown}"
            raise DataError(f"feeds do not match the model: {what}",
                            f"feed exactly the model's inputs {self.input_names}")

    def run_body(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the ORT part only; returns the body outputs by name (all model outputs if no tail)."""
        self._check_feeds(feeds)
        if self._session is None:
            return {}
        try:
            if self.device == "cuda":   # pinned buffers, asynchronous copy (xtrt.runtime.feed)
                from xtrt.runtime.feed import DeviceFeed, run_fed

                self._feeder = self._feeder or DeviceFeed("cuda")
                values = run_fed(self._session, feeds, self._body_outputs, self._feeder)
            else:
                values = self._session.run(self._body_outputs, dict(feeds))
        except Exception as exc:  # ORT's InvalidArgument etc.: wrong dtype or shape in the feeds
            from xtrt.runtime.session import ort_message

            text = ort_message(exc)
            raise DataError(f"ONNX Runtime could not run the model: {text}",
                            f"check the feeds against input_names={self.input_names} "
                            f"and input_shapes={self.input_shapes}") from exc
        return dict(zip(self._body_outputs, values))

    def run_tail(self, feeds: dict[str, np.ndarray], body_outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the tail on the body outputs; returns the model outputs in their original order."""
        with _torch_threads_for_tail(self.device):
            return self._run_tail(feeds, body_outputs)

    def _run_tail(self, feeds, body_outputs) -> list[np.ndarray]:
        values: dict[str, Any] = dict(self.plan.tail_constants)
        values.update(feeds)
        values.update(body_outputs)
        for node, handler, attrs in self._tail:
            if handler is not None:
                outs = _call_handler(handler, node, [self._to_torch(values[i]) if i else None
                                                     for i in node.input], attrs)
                outs = tuple(outs) if isinstance(outs, (tuple, list)) else (outs,)
                wanted = [o for o in node.output]
                if len(outs) < len(wanted):
                    raise XtrtError(f"handler for op '{node.op_type}' returned {len(outs)} output(s), node "
                                    f"'{node.name}' has {len(wanted)}", "fix the handler's forward()")
            else:
                outs = self._run_standard(node, [values[i] if i else None for i in node.input])
            values.update((name, v) for name, v in zip(node.output, outs) if name)
        return [_to_numpy(values[name]) for name in self.output_names]

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the whole model; outputs in the model's own order, dtypes as ORT/the handler give them."""
        body = self.run_body(feeds)
        if not self._tail:
            return [body[name] for name in self.output_names]
        return self.run_tail(feeds, body)

    # -- helpers -------------------------------------------------------------------------------------

    def _to_torch(self, value):
        import torch

        if self._torch_device is None:
            use_cuda = self.device == "cuda" and torch.cuda.is_available()
            if self.device == "cuda" and not use_cuda:
                log.warning("torch has no CUDA here: the plugin tail runs on the CPU")
            self._torch_device = torch.device("cuda" if use_cuda else "cpu")
        if isinstance(value, torch.Tensor):
            return value
        arr = np.ascontiguousarray(value)
        if not arr.flags.writeable:
            arr = arr.copy()
        return torch.from_numpy(arr).to(self._torch_device)

    def _run_standard(self, node: "onnx.NodeProto", inputs: list) -> list[np.ndarray]:
        import onnx
        from onnx import helper

        arrays = [None if v is None else _to_numpy(v) for v in inputs]
        key = (id(node), tuple(None if a is None else (a.dtype.str, a.ndim) for a in arrays))
        session = self._std_sessions.get(key)
        if session is None:
            names = [n for n in node.input if n]
            typed = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), [None] * a.ndim)
                     for n, a in zip(node.input, arrays) if n]
            graph = helper.make_graph([node], f"tail_{node.op_type}", typed,
                                      [helper.make_value_info(o, onnx.TypeProto()) for o in node.output if o])
            model = helper.make_model(graph, opset_imports=self._opsets)
            model.ir_version = self._ir_version
            session = make_session(model, "cpu")
            self._std_sessions[key] = session
            log.debug("tail node %s (%s) runs on a one-node ORT session with inputs %s",
                      node.name, node.op_type, names)
        feeds = {n: a for n, a in zip(node.input, arrays) if n}
        outs = session.run(None, feeds)
        result, it = [], iter(outs)
        for name in node.output:
            result.append(next(it) if name else None)
        return result


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        return value.detach().cpu().numpy()
    except AttributeError:
        return np.asarray(value)


def _call_handler(handler, node, inputs, attrs):
    """``handler.forward``; sys.exit or an exception in a user's handler becomes one XtrtError
    (an exception in a built-in xtrt handler is a bug and keeps its traceback)."""
    where = f"the handler for op '{node.op_type}' ({type(handler).__module__}.{type(handler).__name__})"
    try:
        return handler.forward(inputs, attrs)
    except SystemExit as exc:
        raise XtrtError(f"{where} called sys.exit({exc.code!r}) on node '{node.name}'",
                        "return the outputs instead of exiting") from None
    except XtrtError:
        raise
    except Exception as exc:
        if type(handler).__module__.startswith("xtrt."):
            raise
        raise XtrtError(f"{where} raised {type(exc).__name__}: {exc} on node '{node.name}'",
                        "fix the handler's forward() (run with -v for the traceback)") from exc

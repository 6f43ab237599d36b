"""The op-handler registry: Python implementations of ops that ONNX Runtime or PPQ cannot run.

A handler computes a TensorRT plugin (``EfficientNMS_TRT``, ``ROIAlign_TRT``, ...) or an ONNX op that
PPQ 0.6.6 cannot execute, in torch, on whatever device its inputs live on.  The split runner
(:mod:`xtrt.runtime.split`) runs plugin tails with it, and the PPQ backend installs every handler into
PPQ's executor.

Writing one (``my_ops.py``, loaded with ``--plugin my_ops.py``)::

    import xtrt.ops

    @xtrt.ops.REGISTRY.register("Foo_TRT")
    class Foo(xtrt.ops.OpHandler):
        def forward(self, inputs, attrs):
            return (inputs[0] * attrs.get("alpha", 1.0),)

        def infer(self, input_shapes, input_dtypes, attrs):
            return [(input_shapes[0], input_dtypes[0])]

A plain function ``forward(inputs, attrs)`` can be registered too; it then has no shape inference.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from xtrt.errors import UnsupportedOpError, XtrtError

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import torch

__all__ = ["OpHandler", "OpRegistry", "REGISTRY", "node_attrs", "unknown_op_error"]

log = logging.getLogger(__name__)

Shape = list  # list[int | str | None]


class OpHandler:
    """Base class of an op handler.

    Attributes:
        op_type: the ONNX op type the handler was registered under first (set by ``register``).
        domain: the domain exporters usually give the op ("" or e.g. "TRT"); informative only, lookups
            go by op type.
    """

    op_type: str = ""
    domain: str = ""

    def forward(self, inputs: "list[torch.Tensor | None]", attrs: dict) -> "tuple[torch.Tensor, ...]":
        """Compute the op.

        Args:
            inputs: input tensors in node order, on any device; a missing optional input is ``None``
                or absent from the end of the list (PPQ drops them).
            attrs: node attributes as plain Python values (see :func:`node_attrs`).

        Returns:
            the outputs, in node order, on the inputs' device.
        """
        raise NotImplementedError

    def infer(self, input_shapes: list[Shape], input_dtypes: list[int],
              attrs: dict) -> list[tuple[Shape, int]]:
        """Output shapes and ONNX ``TensorProto`` dtypes, for writing value_info.

        Symbolic dims (strings) and unknown dims (None) pass through where the output inherits them.
        """
        raise UnsupportedOpError(
            f"the handler for op '{self.op_type}' has no shape inference",
            "implement infer(input_shapes, input_dtypes, attrs) on the handler class")

    def __repr__(self) -> str:
        return f"<{type(self).__module__}.{type(self).__qualname__} for '{self.op_type}'>"


class _FunctionHandler(OpHandler):
    """Adapter that turns a plain ``forward(inputs, attrs)`` function into a handler."""

    def __init__(self, fn: Callable):
        self._fn = fn

    def forward(self, inputs, attrs):
        out = self._fn(inputs, attrs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    def __repr__(self) -> str:
        return f"<function {self._fn.__module__}.{self._fn.__qualname__} for '{self.op_type}'>"


class OpRegistry:
    """Maps op type names to handlers.  Registering a name twice is an error."""

    def __init__(self) -> None:
        self._handlers: dict[str, OpHandler] = {}
        self._loaded: dict[str, str] = {}  # resolved plugin path or module name -> module name

    def register(self, op_type: str, *aliases: str) -> Callable:
        """Decorator registering an :class:`OpHandler` subclass (instantiated without arguments), a
        handler instance, or a ``forward(inputs, attrs)`` function under ``op_type`` and ``aliases``.

        Raises:
            XtrtError: a name is already registered.
        """
        names = (op_type, *aliases)

        def decorator(obj: Any) -> Any:
            if isinstance(obj, type) and issubclass(obj, OpHandler):
                handler = obj()
            elif isinstance(obj, OpHandler):
                handler = obj
            elif callable(obj):
                handler = _FunctionHandler(obj)
            else:
                raise XtrtError(f"cannot register {obj!r} for op '{op_type}': not a handler",
                                "register an OpHandler subclass or a function forward(inputs, attrs)")
            for name in names:
                if name in self._handlers:
                    raise XtrtError(
                        f"a handler for op '{name}' is already registered ({self._handlers[name]!r}); "
                        f"refusing to replace it with {handler!r}",
                        "register each op type once; drop the duplicate plugin or rename the op")
            if not handler.op_type:
                handler.op_type = op_type
            for name in names:
                self._handlers[name] = handler
            log.debug("registered %r under %s", handler, ", ".join(names))
            return obj

        return decorator

    def unregister(self, op_type: str) -> None:
        """Remove ``op_type`` (not its aliases); unknown names are ignored.  Meant for tests."""
        self._handlers.pop(op_type, None)

    def get(self, op_type: str) -> OpHandler | None:
        """The handler for ``op_type``, or None."""
        return self._handlers.get(op_type)

    def __contains__(self, op_type: object) -> bool:
        return op_type in self._handlers

    def names(self) -> list[str]:
        """All registered op type names (aliases included), sorted."""
        return sorted(self._handlers)

    def items(self) -> Iterator[tuple[str, OpHandler]]:
        """(name, handler) pairs, aliases included, sorted by name."""
        return iter(sorted(self._handlers.items()))

    def load_plugin(self, path_or_module: str) -> str:
        """Import a user file (``my_ops.py``) or module (``pkg.my_ops``) whose ``register`` calls add
        handlers.  Loading the same file twice is a no-op.  If the file fails, the handlers it had
        registered before failing are removed again.

        Returns:
            the name the module was imported under.

        Raises:
            XtrtError: missing file, or the file raised while importing.
        """
        spec_str = str(path_or_module)
        path = Path(spec_str).expanduser()
        is_file = spec_str.endswith(".py") or path.exists()
        key = str(path.resolve()) if is_file else spec_str
        if key in self._loaded:
            return self._loaded[key]
        if is_file and not path.is_file():
            raise XtrtError(f"plugin file '{spec_str}' does not exist",
                            "pass the path of a .py file that registers handlers with "
                            "@xtrt.ops.REGISTRY.register('OpType')")
        before = set(self._handlers)
        try:
            if is_file:
                digest = hashlib.sha1(key.encode()).hexdigest()[:8]
                mod_name = f"xtrt_plugin_{path.stem}_{digest}"
                spec = importlib.util.spec_from_file_location(mod_name, path)
                if spec is None or spec.loader is None:
                    raise ImportError(f"cannot import {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[mod_name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    sys.modules.pop(mod_name, None)
                    raise
            else:
                mod_name = importlib.import_module(spec_str).__name__
        except (Exception, SystemExit) as exc:
            for name in set(self._handlers) - before:
                del self._handlers[name]
            what = f"plugin file '{spec_str}'" if is_file else f"plugin module '{spec_str}'"
            if isinstance(exc, XtrtError):
                raise XtrtError(f"{what}: {exc.message}", exc.hint) from exc
            if isinstance(exc, SystemExit):
                raise XtrtError(f"{what} called sys.exit({exc.code!r}) while loading",
                                "remove the sys.exit call from that file") from None
            raise XtrtError(f"could not load {what}: {type(exc).__name__}: {exc}",
                            "fix the error in that file (run with -v for the traceback)") from exc
        self._loaded[key] = mod_name
        log.info("loaded plugin %s (new handlers: %s)", spec_str,
                 ", ".join(sorted(set(self._handlers) - before)) or "none")
        return mod_name


REGISTRY = OpRegistry()
"""The global registry; ``import xtrt.ops`` fills it with the built-in handlers."""


def node_attrs(node: "onnx.NodeProto") -> dict:
    """A node's attributes as plain Python values: ints, floats, str (bytes decoded), lists of those,
    numpy arrays for tensor attributes; graphs stay ``GraphProto``."""
    from onnx import AttributeProto, helper, numpy_helper

    out: dict[str, Any] = {}
    for attr in node.attribute:
        if attr.type == AttributeProto.TENSOR:
            out[attr.name] = numpy_helper.to_array(attr.t)
            continue
        if attr.type == AttributeProto.TENSORS:
            out[attr.name] = [numpy_helper.to_array(t) for t in attr.tensors]
            continue
        value = helper.get_attribute_value(attr)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        elif isinstance(value, list):
            value = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in value]
        out[attr.name] = value
    return out


def unknown_op_error(op_type: str, node_name: str) -> UnsupportedOpError:
    """The error for a node whose op neither ONNX Runtime nor a registered handler can run."""
    return UnsupportedOpError(
        f"no handler for op '{op_type}' (node '{node_name}')",
        f"register one with @xtrt.ops.REGISTRY.register('{op_type}') in a .py file and pass "
        f"--plugin my_ops.py")

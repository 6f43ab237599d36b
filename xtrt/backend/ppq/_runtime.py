"""PPQ behind the shim: its import, its prints, torch's threads, xtrt's op handlers, the ONNX
parser, and PPQ's errors as xtrt errors."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import tempfile
from typing import Callable, Iterable, Sequence

import numpy as np

from xtrt.errors import OutputError, QuantizationError, UnsupportedOpError
from xtrt.trt.rules import INT8_OP_TYPES

log = logging.getLogger("xtrt.backend.ppq")

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


class _NoCollect:
    """Stands in for the ``gc`` module inside ``ppq.core.defs`` (see :func:`no_cache_flush`)."""

    @staticmethod
    def collect(*args, **kwargs) -> int:
        return 0


@contextlib.contextmanager
def no_cache_flush():
    """PPQ's ``@empty_ppq_cache`` runs ``gc.collect()`` and ``torch.cuda.empty_cache()`` before
    every decorated call (the quantizer, the executor's meta tracing, several passes): three
    full collections a calibration, 1.0-1.4 s of 3.0-3.7 s on EfficientNet-Lite0 on this CPU,
    and on CUDA it hands torch's cached blocks back to the driver.  They only free memory, so
    inside this block they are skipped; nothing PPQ computes changes."""
    import ppq.core.defs as defs

    saved = defs.gc, defs.empty_cache
    defs.gc, defs.empty_cache = _NoCollect, (lambda: None)
    try:
        yield
    finally:
        defs.gc, defs.empty_cache = saved


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
    """The installed PPQ's version string."""
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


def _load_graph(model, data: bytes | None = None):
    """Load an onnx.ModelProto as a PPQ graph (PPQ's parser reads files); ``data``: the model
    already serialized (saves serializing it again)."""
    _ppq()
    from ppq.api import load_onnx_graph

    try:
        fd, tmp = tempfile.mkstemp(suffix=".onnx", prefix="xtrt_ppq_")
    except OSError as exc:
        raise OutputError(f"cannot create a temporary file for PPQ: {exc.strerror or exc}",
                          "free disk space in the temp folder (TMPDIR)") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString() if data is None else data)
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
        raise OutputError(f"cannot write a temporary file for PPQ: {exc.strerror or exc}",
                          "free disk space in the temp folder (TMPDIR)") from exc
    finally:
        os.unlink(tmp)


def _to_torch(batches: Iterable[dict[str, np.ndarray]], input_names: Sequence[str], device: str):
    """Calibration feeds as torch tensors (a tensor per batch for one input, else dicts)."""
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


def _op_execution_error(exc: RuntimeError, graph) -> Exception:
    """PPQ's ``Op Execution Error: <node>(Type: <op>, ...)`` as one actionable line (the torch
    error under it says why); any other RuntimeError is returned unchanged (a bug: traceback)."""
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

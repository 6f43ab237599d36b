"""Output buffers of the CUDA statistics session: made once per input shape, with their shapes
from ONNX shape inference where it tells every dimension (xtrt.quant.observe uses them)."""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np

__all__ = ["OutputBuffers", "inferred_specs"]

log = logging.getLogger(__name__)


class OutputBuffers:
    """Output buffers of a statistics session, one set per input shape, made once.

    ``specs(feeds)`` gives each output's (shape, dtype) for those feeds and ``allocate(specs)``
    the buffers.  A short last batch gets its own set, kept beside the full-batch one, so the
    next pass (which starts with a full batch again) neither learns the shapes again nor
    reallocates; at most ``keep`` shapes are held (the oldest dropped first).
    """

    def __init__(self, specs: Callable, allocate: Callable, keep: int = 2):
        self._specs, self._allocate, self.keep = specs, allocate, keep
        self._sets: dict[tuple, list] = {}
        self.made = 0                       # sets allocated (what the tests count)

    def get(self, feeds: dict[str, np.ndarray]) -> list:
        key = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in feeds.items())
        found = self._sets.get(key)
        if found is None:
            while len(self._sets) >= self.keep:
                self._sets.pop(next(iter(self._sets)))
            found = self._sets[key] = self._allocate(self._specs(feeds))
            self.made += 1
        return found


def inferred_specs(model, names: Sequence[str], feeds: dict[str, np.ndarray]):
    """(shape, dtype) of ``names`` for ``feeds`` from ONNX shape inference, or None when it
    leaves a dimension unknown (then the caller asks ORT)."""
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i in m.graph.input:
        if i.name in feeds:
            dims = i.type.tensor_type.shape.dim
            shape = np.shape(feeds[i.name])
            if len(dims) != len(shape):
                return None
            for d, v in zip(dims, shape):
                d.Clear()
                d.dim_value = int(v)
    del m.graph.value_info[:]
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception as exc:     # any failure: ORT tells the shapes instead
        log.debug("shape inference for the statistics buffers failed: %s", exc)
        return None
    infos = {v.name: v for v in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    out = []
    for n in names:
        if n in feeds:
            a = np.asarray(feeds[n])
            out.append((tuple(a.shape), a.dtype))
            continue
        info = infos.get(n)
        if info is None or not info.type.tensor_type.HasField("shape") \
                or not info.type.tensor_type.elem_type:
            return None
        dims = [d.dim_value if d.HasField("dim_value") else -1
                for d in info.type.tensor_type.shape.dim]
        if any(d <= 0 for d in dims):
            return None
        out.append((tuple(dims), np.dtype(tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))))
    return out

"""What one ``xtrt.quant`` run computes once and shares between its stages.

The method search, verify, the fallback trials, the float-precision stage and the resolution check
each score models on the same held-out images.  Several of them score the *same* model: the
fallback's chosen trial is the model the precision stage rebuilds, the all-INT8 export is scored
by verify and again by the precision stage, the written model by the fallback's test curve, the
precision stage and the final evaluation.  Everything here is keyed by the model's serialized
bytes, so a hit is the same computation on the same input, and the figures cannot change:

- :func:`model_digest`: sha256 of ``SerializeToString()`` (None for objects that are not protos);
- :class:`RunnerCache`: the last few ONNX Runtime runners (:class:`xtrt.runtime.split.SplitRunner`)
  by (model bytes, device, session options), so a model scored twice builds one session;
- :class:`Memo`: results of a pure function of a model (its evaluation on one data set, its FP16
  export on the same calibration batches), by model bytes.

``hits`` / ``misses`` count what was reused, for the report and the tests.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Callable, Hashable

__all__ = ["CUDA_SCORING", "FP16", "Memo", "RUNNERS", "RunnerCache", "batches_digest", "clear_run",
           "model_digest", "session_options"]


#: CUDA EP options of every session a run scores or analyses with: cuDNN's heuristic conv plans.
#: The default exhaustive search costs each new YOLOv8n 640 session about 1 s on an H200
#: (observe.STATS_CUDA_OPTIONS, measured) and a run builds dozens (trials, suffixes, exports).
#: The arena grows by what is asked, not to the next power of two: on an H200 a new session of
#: YOLOv8n's FP16 Q/DQ body (batch 8, 640) took 95 ms to build and 160 ms for its first run,
#: against 137-163 and 167-280 ms with the default, and 11.6 against 14 ms a later run.
CUDA_SCORING: dict[str, str] = {"cudnn_conv_algo_search": "HEURISTIC",
                                "arena_extend_strategy": "kSameAsRequested"}


def session_options(device: str) -> dict:
    """Extra :func:`xtrt.runtime.session.make_session` keywords for ``device``."""
    return {"cuda_options": dict(CUDA_SCORING)} if device == "cuda" else {}


def model_digest(model) -> str | None:
    """sha256 of the serialized model (None when ``model`` is not an ONNX proto)."""
    ser = getattr(model, "SerializeToString", None)
    if ser is None:
        return None
    return hashlib.sha256(ser()).hexdigest()


class Memo:
    """``get(model, compute, *key)``: ``compute()`` once per (model bytes, key); None digests
    (not a proto) are never cached."""

    def __init__(self, size: int = 32):
        self.size = size
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, model, compute: Callable[[], Any], *key: Hashable, digest: str | None = None):
        """The cached result for ``model`` (and ``key``), computing it on a miss."""
        d = digest if digest is not None else model_digest(model)
        if d is None:
            self.misses += 1
            return compute()
        k = (d, *key)
        if k in self._items:
            self.hits += 1
            self._items.move_to_end(k)
            return self._items[k]
        self.misses += 1
        value = compute()
        self._items[k] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        """Drop every entry."""
        self._items.clear()


class RunnerCache(Memo):
    """The last ``size`` ONNX Runtime runners by model bytes and session settings (each holds a
    session and its memory, so few are kept)."""

    def __init__(self, size: int = 3):
        super().__init__(size)

    def runner(self, model, device: str, **session_kwargs):
        """A :class:`xtrt.runtime.split.SplitRunner` for ``model``, reused for the same bytes."""
        from xtrt.runtime import split

        key = (device, tuple(sorted((k, repr(v)) for k, v in session_kwargs.items())))
        return self.get(model, lambda: split.SplitRunner(model, device=device, **session_kwargs),
                        *key)


RUNNERS = RunnerCache()
"""The process-wide runner cache the quant stages share (cleared at the end of a run)."""


def batches_digest(batches) -> str:
    """sha256 over the feeds of ``batches`` (names, dtypes, shapes, bytes)."""
    import numpy as np

    h = hashlib.sha256()
    for feeds in batches:
        for k in sorted(feeds):
            a = np.ascontiguousarray(feeds[k])
            h.update(f"{k}|{a.dtype}|{a.shape}|".encode())
            h.update(a.data)
    return h.hexdigest()


FP16 = Memo(size=16)
"""FP16 exports by (Q/DQ model bytes, calibration batches, plugin nodes, device)."""


def clear_run() -> None:
    """Forget the run's runners and FP16 exports (the end of a run)."""
    RUNNERS.clear()
    FP16.clear()

"""Keep a dynamic batch dynamic: find batch sizes baked into Reshape targets, and prove the
prepared model runs at a second batch size.

A fixed-batch export (or a folding pass run at batch 1) leaves ``Reshape(x, [1, 200])`` where
``x`` is ``[N, 200]``-shaped: right at batch 1, an error (or a silent mix of samples) at any other
batch.  PPQ's executor runs one sample for shape tracing and whole calibration batches after, so
such a constant crashes it.  :func:`unbake_batch` rewrites the leading target dim to ``0`` ("copy
the input's batch") where that is provably the batch; :func:`check_batch_runs` runs the prepared
model at another batch on ONNX Runtime and turns a failure into one error line that carries ONNX
Runtime's whole message (it names the node).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from xtrt.errors import ModelError
from xtrt.model.graph import const_values

__all__ = ["unbake_batch", "check_batch_runs"]

log = logging.getLogger(__name__)


def _inferred_dims(model) -> dict[str, list]:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # plugin or odd nodes: what could be inferred is enough
        inferred = model
    out = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = [d.dim_param if d.HasField("dim_param") else
                            (int(d.dim_value) if d.HasField("dim_value") else None)
                            for d in tt.shape.dim]
    return out


def _is_baked_batch(target: np.ndarray, data_dims: list) -> bool:
    """True when ``target[0]`` can only be the batch of a ``data_dims`` tensor whose dim 0 is
    the symbolic batch: the other target dims account for every non-batch element, or the target
    is ``[1, ..., -1, ...]`` (a batch-1 export flattening each sample)."""
    if target.ndim != 1 or target.size < 2 or int(target[0]) <= 0:
        return False
    rest = [int(v) for v in target[1:]]
    if 0 in rest:
        return False
    if -1 in rest:
        return int(target[0]) == 1 and rest.count(-1) == 1
    per_sample = data_dims[1:]
    if any(not isinstance(d, int) for d in per_sample):
        return False
    return int(np.prod(rest)) == int(np.prod(per_sample)) if per_sample else False


def unbake_batch(model, batch: str) -> list[str]:
    """Rewrite, in place, Reshape targets that bake in the batch of a tensor whose dim 0 is the
    symbolic ``batch``; returns one note per rewritten node."""
    from onnx import numpy_helper

    consts = const_values(model)
    dims = _inferred_dims(model)
    inits = {i.name: i for i in model.graph.initializer}
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    notes = []
    for n in model.graph.node:
        if n.op_type != "Reshape" or len(n.input) < 2 or n.input[1] not in consts:
            continue
        data = dims.get(n.input[0])
        target = np.asarray(consts[n.input[1]])
        if not data or data[0] != batch or not _is_baked_batch(target, data):
            continue
        fixed = target.copy()
        fixed[0] = 0
        name = n.input[1]
        if name not in inits or uses.get(name, 0) > 1:   # a Constant node or a shared initializer
            name = f"{n.name or 'reshape'}_shape_batch0"
            model.graph.initializer.append(numpy_helper.from_array(fixed.astype(np.int64), name))
            n.input[1] = name
        else:
            inits[name].CopyFrom(numpy_helper.from_array(fixed.astype(target.dtype), name))
        notes.append(f"Reshape {n.name!r}: batch {int(target[0])} baked in its target "
                     f"{target.tolist()} -> {fixed.tolist()} (0 copies the batch)")
    return notes


def check_batch_runs(model, input_name: str, shape: Sequence[int],
                     others: dict | None = None, *, session=None) -> int:
    """Run ``model`` on ONNX Runtime at a batch other than ``shape[0]``; returns that batch.
    ``session``: a CPU session of ``model`` already built (no second one).

    Raises ModelError with ONNX Runtime's whole message when it does not run there."""
    from xtrt.model.inputs import random_feeds
    from xtrt.runtime.session import make_session, ort_message

    other = 2 if int(shape[0]) == 1 else 1
    feeds = random_feeds(input_name, shape, others or {}, batch=other, seed=1)
    try:
        sess = session if session is not None else make_session(model, "cpu")
        sess.run(None, feeds)
    except Exception as exc:
        raise ModelError(
            f"the prepared model declares a dynamic batch but does not run at batch {other}: "
            f"{ort_message(exc.__cause__ or exc)}",
            "a batch size is baked into the node named above: re-export with a dynamic batch, or "
            f"fix the batch (input.shape: [{shape[0]}, ...] on a model exported with that batch)"
        ) from exc
    return other

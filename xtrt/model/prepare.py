"""Normalise a model before PPQ sees it.

Steps: fix the input's non-batch dims (from the config or the model), keep a dynamic batch symbolic,
cut off plugin tails (they are re-attached unchanged), fold constant and shape subgraphs with
onnxslim, lower/raise to opset 13, drop attributes PPQ rejects, and prove on ONNX Runtime that the
prepared body computes what the original body computes.

Why onnxslim: pure Python (no compiled wheel to miss on a new Python), keeps symbolic dims (a
dynamic batch survives folding: YOLO reshapes become ``[-1, 82, 1600]``), folds the anchor
Shape/Range/Expand subgraphs once H/W are fixed, and emits only standard ONNX ops.  ORT's offline
optimiser can emit ORT-only fused ops; onnxsim needs a native build.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from xtrt.errors import ModelError
from xtrt.model.batch import check_batch_runs, unbake_batch
from xtrt.model.inputs import choose_image_input, other_inputs, random_feeds
from xtrt.model.load import input_infos, output_names
from xtrt.model.lower import explicit_conv_transpose_pads, lower_new_ops
from xtrt.runtime.session import ort_message
from xtrt.model.opset import TARGET_OPSET, convert_opset, model_opset

__all__ = ["PreparedModel", "prepare_model", "resolve_input_shape"]

log = logging.getLogger(__name__)


@dataclass
class PreparedModel:
    """A model ready for PPQ, and what was done to it."""

    model: object                       # onnx.ModelProto: prepared body + re-attached plugin tail
    body: object                        # onnx.ModelProto: prepared body only (ORT-runnable)
    input_name: str
    input_shape: list[int]              # calibration shape, batch included
    batch_dim: str | int                # the symbolic batch name, or the fixed batch
    output_names: list[str]             # the source model's outputs, in order
    plugin_nodes: list[str] = field(default_factory=list)
    tail_nodes: list[str] = field(default_factory=list)
    reference: object = None            # the source, batch fixes only: FP32 reference to judge by
    other_inputs: dict = field(default_factory=dict)   # name -> (per-sample dims, dtype name)
    source_opset: int = 0
    nodes_before: int = 0
    nodes_after: int = 0
    max_abs_diff: float | None = None
    steps: list[str] = field(default_factory=list)

    @property
    def dynamic_batch(self) -> bool:
        return isinstance(self.batch_dim, str)


def resolve_input_shape(dims: Sequence[int | str | None], configured: Sequence[int] | None,
                        name: str) -> list[int]:
    """The calibration input shape from the model's dims and the configured shape.

    Static model dims must match the config; symbolic dims take the config's value.
    """
    if configured is None:
        if any(not isinstance(d, int) for d in dims[1:]):
            raise ModelError(f"input {name!r} has dynamic dims {list(dims)}",
                             "set input.shape in the config, e.g. [1, 3, 640, 640]")
        batch = dims[0] if isinstance(dims[0], int) else 1
        return [batch] + [int(d) for d in dims[1:]]
    if len(configured) != len(dims):
        raise ModelError(f"input.shape {list(configured)} has {len(configured)} dims but input "
                         f"{name!r} has {len(dims)} ({list(dims)})",
                         "give one size per model input dim")
    for i, (want, have) in enumerate(zip(configured, dims)):
        if isinstance(have, int) and have > 0 and have != want:
            raise ModelError(f"input.shape {list(configured)} does not match input {name!r} "
                             f"{list(dims)} at dim {i} ({want} vs {have})",
                             f"set input.shape to the model's fixed size at dim {i}, or re-export "
                             "the model with dynamic axes")
    return [int(v) for v in configured]


def _set_input_dims(model, name: str, shape: Sequence[int], batch_dim) -> None:
    for inp in model.graph.input:
        if inp.name == name:
            dims = inp.type.tensor_type.shape.dim
            for i, d in enumerate(dims):
                if i == 0 and isinstance(batch_dim, str):
                    d.ClearField("dim_value")
                    d.dim_param = batch_dim
                else:
                    d.ClearField("dim_param")
                    d.dim_value = int(shape[i])


def _batch_dim(dim, input_name: str, steps: list[str]) -> str | int:
    """The batch as the prepared model names it: a symbolic name stays; ``-1``, ``0`` or a
    missing dim (what Paddle2ONNX and some TensorFlow exporters write for "any batch") become the
    symbolic ``N``, so folding never bakes the calibration batch in; a positive size stays fixed."""
    if isinstance(dim, str) and dim:
        return dim
    if isinstance(dim, int) and dim > 0:
        return dim
    steps.append(f"input {input_name}: batch {dim if dim is not None else '(missing)'} "
                 "relabelled as symbolic N (dynamic batch)")
    return "N"


def _fix_dims(model, input_name: str, shape: Sequence[int], others: dict, batch_dim) -> None:
    """Every input's dims fixed (the image input to ``shape``, the others to their own dims at the
    same batch), output shapes cleared for re-inference."""
    _set_input_dims(model, input_name, shape, batch_dim)
    for name, (dims, _) in others.items():
        _set_input_dims(model, name, [shape[0], *dims], batch_dim)
    _clear_output_shapes(model, batch_dim)


def _clear_output_shapes(model, batch_dim) -> None:
    """Symbolic output dims derived from H/W would otherwise stay stale; a ``-1``/``0`` batch on
    an output becomes the input's symbolic batch."""
    for o in model.graph.output:
        tt = o.type.tensor_type
        if tt.HasField("shape"):
            for i, d in enumerate(tt.shape.dim):
                if i == 0 and isinstance(batch_dim, str) and not d.HasField("dim_param") \
                        and d.dim_value <= 0:
                    d.Clear()
                    d.dim_param = batch_dim
                elif i > 0 and (d.HasField("dim_param") or
                                (d.HasField("dim_value") and d.dim_value <= 0)):
                    d.Clear()
    del model.graph.value_info[:]


def _reference(source, input_name: str, shape: Sequence[int], batch_dim, steps: list[str],
               others: dict):
    """The source model as the FP32 reference: itself, or (dynamic batch) a copy whose batch is
    the symbolic ``batch_dim`` and whose Reshape targets no longer bake a batch in, so that it
    runs at the evaluation batch like the prepared model."""
    import onnx

    if not isinstance(batch_dim, str):
        return source
    ref = onnx.ModelProto()
    ref.CopyFrom(source)
    _fix_dims(ref, input_name, shape, others, batch_dim)
    notes = unbake_batch(ref, batch_dim)
    steps.extend(notes)
    return ref if notes or ref.graph.input != source.graph.input else source


def _split(model):
    from xtrt.model import split as split_mod

    if not split_mod.find_plugin_nodes(model):
        return None
    return split_mod.split_model(model)


def _ort_check(original, prepared, feeds: dict[str, np.ndarray]) -> tuple[float, object]:
    """``(max abs diff, the prepared model's CPU session)``: the two models on ``feeds``."""
    from xtrt.runtime.session import make_session

    a = make_session(original, "cpu")
    b = make_session(prepared, "cpu")
    names = [o.name for o in b.get_outputs()]
    ra = a.run(names, feeds)
    rb = b.run(names, feeds)
    worst = 0.0
    for name, va, vb in zip(names, ra, rb):
        if va.shape != vb.shape:
            raise ModelError(f"preparation changed the shape of output {name!r} "
                             f"({list(va.shape)} -> {list(vb.shape)})",
                             "report this model to xtrt; meanwhile re-export it at opset 13")
        if va.size and np.issubdtype(va.dtype, np.floating):
            diff = float(np.max(np.abs(va.astype(np.float64) - vb.astype(np.float64))))
            scale = float(np.max(np.abs(va))) or 1.0
            if diff > 1e-3 * max(scale, 1.0):
                raise ModelError(f"the prepared model differs from the original on output {name!r} "
                                 f"(max abs diff {diff:.3g})",
                                 "report this model to xtrt; meanwhile re-export it at opset 13")
            worst = max(worst, diff)
    return worst, b


def prepare_model(source, input_shape: Sequence[int] | None = None, input_name: str | None = None,
                  *, check: bool = True) -> PreparedModel:
    """Prepare ``source`` (an onnx.ModelProto) for PPQ; see the module docstring."""
    import onnx
    import onnxslim

    infos = input_infos(source)
    if not infos:
        raise ModelError("the model has no graph inputs", "re-export it with an input tensor")
    input_name = choose_image_input(infos, input_name)
    others = other_inputs(infos, input_name)
    match = [i for i in infos if i[0] == input_name]
    _, dims, _ = match[0]
    shape = resolve_input_shape(dims, input_shape, input_name)
    steps: list[str] = []
    batch_dim = _batch_dim(dims[0], input_name, steps)
    reference = _reference(source, input_name, shape, batch_dim, steps, others)
    plan = _split(reference)
    body_src = plan.body if plan is not None else reference
    if plan is not None:
        steps.append(f"cut plugin tail ({', '.join(n.op_type for n in plan.tail_nodes)})")
    work = onnx.ModelProto()
    work.CopyFrom(body_src)
    _fix_dims(work, input_name, shape, others, batch_dim)
    steps.append(f"input {input_name} fixed to {[batch_dim if isinstance(batch_dim, str) else shape[0]] + shape[1:]}")
    n_before = len(source.graph.node)
    work, notes = lower_new_ops(work, model_opset(work))
    steps.extend(notes)
    try:
        slim = onnxslim.slim(work, model_check=False)
    except Exception as exc:
        raise ModelError(f"constant folding (onnxslim) failed: {type(exc).__name__}: {exc}",
                         "check the model with onnx.checker; re-export it") from exc
    if slim is None:
        raise ModelError("constant folding (onnxslim) returned no model", "re-export the model")
    steps.append(f"folded constants/shapes with onnxslim ({len(work.graph.node)} -> "
                 f"{len(slim.graph.node)} nodes)")
    if isinstance(batch_dim, str):
        steps.extend(unbake_batch(slim, batch_dim))
    src_opset = model_opset(source)
    body = convert_opset(slim, TARGET_OPSET)
    if src_opset != TARGET_OPSET:
        steps.append(f"opset {src_opset} -> {TARGET_OPSET}")
    steps.extend(explicit_conv_transpose_pads(body))
    try:
        onnx.checker.check_model(body)
    except Exception as exc:
        raise ModelError(f"the prepared model fails onnx.checker: {ort_message(exc)}",
                         "re-export the model at opset 13") from exc
    diff = None
    if check:
        ref = onnx.ModelProto()
        ref.CopyFrom(body_src)
        check_shape = list(shape)
        if isinstance(batch_dim, str):
            # a dynamic batch: compare at batch 1 (the full calibration batch made this check
            # 8.5 s of a YOLOv8n 640 batch-8 run on 16 cores); check_batch_runs adds batch 2
            check_shape[0] = 1
        diff, sess = _ort_check(ref, body, random_feeds(input_name, check_shape, others))
        steps.append(f"ORT check vs original (batch {check_shape[0]}): max abs diff {diff:.3g}")
        if isinstance(batch_dim, str):
            other = check_batch_runs(body, input_name, check_shape, others, session=sess)
            steps.append(f"runs at batch {other} too (batch {batch_dim} stays dynamic)")

    full = body
    tail_names: list[str] = []
    plugin_names: list[str] = []
    if plan is not None:
        full = onnx.ModelProto()
        full.CopyFrom(body)
        full.graph.node.extend(plan.tail_nodes)
        tail_names = [n.name for n in plan.tail_nodes]
        from xtrt.model.split import find_plugin_nodes

        plugin_names = [n.name for n in find_plugin_nodes(source)]
        by_name = {o.name: o for o in source.graph.output}
        body_outs = {o.name: o for o in body.graph.output}
        del full.graph.output[:]
        for name in output_names(source):
            full.graph.output.append(body_outs.get(name) or by_name[name])
        for imp in source.opset_import:
            if imp.domain not in ("", "ai.onnx") and imp.domain not in \
                    {i.domain for i in full.opset_import}:
                full.opset_import.append(imp)
    return PreparedModel(model=full, body=body, input_name=input_name, input_shape=shape,
                         batch_dim=batch_dim, output_names=output_names(source),
                         plugin_nodes=plugin_names, tail_nodes=tail_names,
                         reference=reference, other_inputs=others, source_opset=src_opset, nodes_before=n_before,
                         nodes_after=len(full.graph.node), max_abs_diff=diff, steps=steps)

"""Cut an ONNX model at its plugin nodes.

ONNX Runtime, onnx.checker and TensorRT-RTX reject a model that ends in a TensorRT plugin such as
``EfficientNMS_TRT``.  :func:`split_model` cuts it into a *body* (a plain ONNX model, everything before
the plugins) and a *tail* (the plugin nodes and everything that depends on them), which
:mod:`xtrt.runtime.split` runs with the handlers of :mod:`xtrt.ops`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import onnx
from onnx import helper

from xtrt.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from xtrt.ops.registry import OpRegistry

__all__ = ["SplitPlan", "find_plugin_nodes", "split_model", "node_label", "runnable_body",
           "with_outputs"]

log = logging.getLogger(__name__)

_ONNX_DOMAINS = {"": "", "ai.onnx": "", "ai.onnx.ml": "ai.onnx.ml", "ai.onnx.preview.training":
                 "ai.onnx.preview.training"}
_ORT_DOMAINS = {"com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental"}


@dataclass
class SplitPlan:
    """A model cut at its plugin nodes.

    Attributes:
        body: the graph up to the plugin nodes; its inputs are the original graph inputs, its outputs
            the tensors the tail reads plus the original graph outputs it produces.  A plain ONNX
            model that passes onnx.checker (when it has outputs at all).
        tail_nodes: plugin nodes and every node downstream of one, in topological order.
        output_names: the original model's outputs, in their original order.
        plugin_nodes: the nodes no ONNX runtime can execute.
        tail_constants: initializers read by tail nodes, as numpy arrays.
    """

    body: onnx.ModelProto
    tail_nodes: list[onnx.NodeProto]
    output_names: list[str]
    plugin_nodes: list[onnx.NodeProto] = field(default_factory=list)
    tail_constants: dict[str, "np.ndarray"] = field(default_factory=dict)

    @property
    def body_output_names(self) -> list[str]:
        """Names of the body's outputs."""
        return [o.name for o in self.body.graph.output]


def node_label(node: onnx.NodeProto) -> str:
    """A node's name, or a stand-in naming its first output when it has none."""
    return node.name or f"<{node.op_type} -> {node.output[0] if node.output else '?'}>"


def _is_standard(node: onnx.NodeProto, local_functions: set[tuple[str, str]]) -> bool:
    if (node.domain, node.op_type) in local_functions:
        return True
    if node.domain in _ORT_DOMAINS:
        return True
    domain = _ONNX_DOMAINS.get(node.domain)
    return domain is not None and onnx.defs.has(node.op_type, domain)


def find_plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Top-level nodes that ONNX Runtime cannot run: a non-standard domain (``TRT``, ``mmdeploy``) or
    an op type that is not an ONNX op (``EfficientNMS_TRT`` with domain "").  Model-local functions
    and ONNX Runtime's com.microsoft ops count as runnable."""
    local = {(f.domain, f.name) for f in model.functions}
    return [n for n in model.graph.node if not _is_standard(n, local)]


def runnable_body(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` itself, or its body when it ends in plugin nodes (what ONNX Runtime can run)."""
    return split_model(model).body if find_plugin_nodes(model) else model


def with_outputs(model: onnx.ModelProto, outputs) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs are exactly ``outputs`` (any tensors it computes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    del m.graph.output[:]
    m.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in outputs)
    del m.graph.value_info[:]
    return m


def _inputs_deep(node: onnx.NodeProto) -> Iterator[str]:
    """Tensor names a node reads, including outer-scope names its subgraphs read."""
    yield from (i for i in node.input if i)
    for attr in node.attribute:
        graphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
        for g in graphs:
            for sub in g.node:
                yield from _inputs_deep(sub)


def split_model(model: onnx.ModelProto, registry: "OpRegistry | None" = None) -> SplitPlan:
    """Cut ``model`` at its plugin nodes (see :class:`SplitPlan`).

    A model without plugin nodes gives ``body=model`` and an empty tail.

    Raises:
        UnsupportedOpError: a plugin node has no handler in ``registry`` (default: the global one).
    """
    from onnx import numpy_helper

    from xtrt.ops import REGISTRY, unknown_op_error

    registry = REGISTRY if registry is None else registry
    graph = model.graph
    outputs = [o.name for o in graph.output]
    plugins = find_plugin_nodes(model)
    if not plugins:
        return SplitPlan(body=model, tail_nodes=[], output_names=outputs)
    for node in plugins:
        if node.op_type not in registry:
            raise unknown_op_error(node.op_type, node_label(node))

    plugin_ids = {id(n) for n in plugins}
    tail_tensors: set[str] = set()
    body_nodes, tail_nodes = [], []
    for node in graph.node:
        if id(node) in plugin_ids or any(i in tail_tensors for i in _inputs_deep(node)):
            tail_nodes.append(node)
            tail_tensors.update(o for o in node.output if o)
        else:
            body_nodes.append(node)

    produced = {o for n in body_nodes for o in n.output if o}
    inits = {t.name: t for t in graph.initializer}
    needed: list[str] = []
    for node in tail_nodes:
        for name in _inputs_deep(node):
            if name in produced and name not in needed:
                needed.append(name)
    needed += [o for o in outputs if o in produced and o not in needed]
    used_by_body = {i for n in body_nodes for i in _inputs_deep(n)}
    used_by_tail = {i for n in tail_nodes for i in _inputs_deep(n)}
    tail_constants = {name: numpy_helper.to_array(inits[name]) for name in used_by_tail if name in inits}

    body = _build_body(model, body_nodes, needed, used_by_body)
    log.debug("split %s: body %d nodes -> %s; tail %d nodes (%s)", graph.name or "model", len(body_nodes),
              needed, len(tail_nodes), ", ".join(sorted({n.op_type for n in plugins})))
    return SplitPlan(body=body, tail_nodes=tail_nodes, output_names=outputs, plugin_nodes=plugins,
                     tail_constants=tail_constants)


def _typed(name: str, known: dict[str, onnx.ValueInfoProto]) -> onnx.ValueInfoProto | None:
    vi = known.get(name)
    if vi is not None and vi.type.WhichOneof("value") is not None:
        out = onnx.ValueInfoProto()
        out.CopyFrom(vi)
        return out
    return None


def _build_body(model: onnx.ModelProto, nodes: list[onnx.NodeProto], outputs: list[str],
                used: set[str]) -> onnx.ModelProto:
    graph = model.graph
    produced = {o for n in nodes for o in n.output if o}
    known = {vi.name: vi for vi in list(graph.value_info) + list(graph.output) + list(graph.input)}
    out_vis = [_typed(name, known) for name in outputs]
    value_info = [vi for vi in graph.value_info if vi.name in produced and vi.name not in outputs]
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits or i.name in used]  # IR<4 style inputs
    body_graph = helper.make_graph(
        nodes, (graph.name or "model") + "_body", inputs,
        [vi if vi is not None else helper.make_value_info(name, onnx.TypeProto())
         for vi, name in zip(out_vis, outputs)],
        initializer=[t for t in graph.initializer if t.name in used],
        value_info=value_info)
    domains = {n.domain for n in nodes} | {""}
    domains |= {f.domain for f in model.functions}
    opsets = [o for o in model.opset_import if o.domain in domains or
              (o.domain == "ai.onnx" and "" in domains)]
    body = helper.make_model(body_graph, opset_imports=opsets, functions=list(model.functions))
    body.ir_version = model.ir_version
    body.producer_name = model.producer_name
    body.producer_version = model.producer_version
    body.model_version = model.model_version
    for prop in model.metadata_props:
        body.metadata_props.add().CopyFrom(prop)
    if any(vi is None for vi in out_vis):
        _fill_output_types(body)
    return body


def _fill_output_types(body: onnx.ModelProto) -> None:
    """Give typeless body outputs the types shape inference finds for them."""
    try:
        inferred = onnx.shape_inference.infer_shapes(body)
    except Exception as exc:  # inference is best effort; ORT still runs typeless outputs
        log.debug("shape inference on the body failed: %s", exc)
        return
    known = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in body.graph.output:
        if out.type.WhichOneof("value") is None:
            vi = _typed(out.name, known)
            if vi is None:
                raise ModelError(f"cannot tell the type of tensor '{out.name}' that feeds the plugin tail",
                                 "run onnx shape inference on the model or add value_info for it")
            out.CopyFrom(vi)

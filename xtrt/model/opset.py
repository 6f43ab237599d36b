"""Bring a model to the opset PPQ 0.6.6 accepts (13).

Upgrades (opset < 13) use onnx's version converter.  Downgrades are not supported by it for most
ops, and nearly every schema change after 13 only adds types; so we lower node by node: known
semantic changes are rewritten (axes moved from inputs to attributes, ``allowzero``,
``num_outputs``, ``saturate`` ...), every other node is checked against its opset-13 schema, and an
op that cannot be expressed at 13 is a ModelError naming it.  The caller proves the result equal to
the original on ONNX Runtime.
"""
from __future__ import annotations

import logging

import numpy as np

from xtrt.errors import ModelError
from xtrt.model.graph import const_values

__all__ = ["TARGET_OPSET", "model_opset", "convert_opset"]

log = logging.getLogger(__name__)

TARGET_OPSET = 13
_REDUCE_AXES_INPUT = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                      "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}  # ReduceSum: input at 13


def model_opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 1


def _drop_attr(node, name: str) -> None:
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _lower_node(node, consts: dict[str, np.ndarray]) -> None:
    from onnx import helper

    op = node.op_type
    if op in _REDUCE_AXES_INPUT and len(node.input) > 1:
        if node.input[1]:
            if node.input[1] not in consts:
                raise ModelError(f"node {node.name!r} ({op}) takes its axes from a computed tensor",
                                 "export with constant axes (or fold constants first)")
            node.attribute.append(helper.make_attribute(
                "axes", [int(v) for v in np.asarray(consts[node.input[1]]).reshape(-1)]))
        del node.input[1:]
        if _attr(node, "noop_with_empty_axes", 0):
            raise ModelError(f"node {node.name!r} ({op}) uses noop_with_empty_axes",
                             "re-export at opset 13")
        _drop_attr(node, "noop_with_empty_axes")
    elif op == "Reshape":
        if _attr(node, "allowzero", 0):
            shape = consts.get(node.input[1])
            if shape is None or (np.asarray(shape) == 0).any():
                raise ModelError(f"node {node.name!r} (Reshape) needs allowzero=1",
                                 "re-export without zero-sized reshape targets")
        _drop_attr(node, "allowzero")
    elif op == "Split":
        if _attr(node, "num_outputs") is not None:
            _drop_attr(node, "num_outputs")  # equal split is the opset-13 default
    elif op == "Cast":
        _drop_attr(node, "saturate")
    elif op == "Resize":
        for name, default in (("antialias", 0), ("keep_aspect_ratio_policy", b"stretch"),
                              ("axes", None)):
            value = _attr(node, name, default)
            if value not in (default, None) and value != "stretch":
                raise ModelError(f"node {node.name!r} (Resize) uses {name}={value!r}",
                                 "re-export at opset 13")
            _drop_attr(node, name)
    elif op == "Pad" and len(node.input) > 3 and node.input[3]:
        raise ModelError(f"node {node.name!r} (Pad) uses the axes input", "re-export at opset 13")
    elif op == "BatchNormalization":
        if _attr(node, "training_mode", 0):
            raise ModelError(f"node {node.name!r} is a BatchNormalization in training mode",
                             "export the model in eval() mode")
        _drop_attr(node, "training_mode")
    elif op == "Shape" and (_attr(node, "start") is not None or _attr(node, "end") is not None):
        raise ModelError(f"node {node.name!r} (Shape) uses start/end", "fold shapes first")


def _check_against_13(node) -> None:
    import onnx.defs

    try:
        schema = onnx.defs.get_schema(node.op_type, TARGET_OPSET, "")
    except Exception as exc:
        from xtrt.model.lower import LOWERINGS

        raise ModelError(f"op {node.op_type} (node {node.name!r}) does not exist at opset 13, "
                         "which PPQ 0.6.6 needs, and xtrt has no rule to rewrite it (it lowers "
                         f"{', '.join(LOWERINGS)})", "re-export the model at opset 13 "
                         "(torch.onnx.export(..., opset_version=13, dynamo=False)), or cut the "
                         "model before that node") from exc
    allowed = set(schema.attributes)
    extra = [a.name for a in node.attribute if a.name not in allowed]
    if extra:
        raise ModelError(f"node {node.name!r} ({node.op_type}) has attribute(s) {extra} that "
                         "opset 13 lacks", "re-export the model at opset 13")
    if schema.max_input < len(node.input):
        raise ModelError(f"node {node.name!r} ({node.op_type}) has {len(node.input)} inputs, "
                         f"opset 13 allows {schema.max_input}", "re-export the model at opset 13")


_PARKED = "xtrt.parked"   # a domain of its own for plugin nodes while the converter runs


def _upgrade(model, current: int, target: int):
    """onnx.version_converter upgrade.  Plugin nodes (EfficientNMS_TRT and friends: default
    domain, no ONNX schema) would stop the converter, so they sit in a domain of their own while
    it runs and go back unchanged afterwards."""
    import onnx
    from onnx import helper, version_converter

    work = onnx.ModelProto()
    work.CopyFrom(model)
    parked = [n for n in work.graph.node
              if n.domain in ("", "ai.onnx") and not onnx.defs.has(n.op_type)]
    for n in parked:
        n.domain = _PARKED
    if parked:
        work.opset_import.append(helper.make_opsetid(_PARKED, 1))
    try:
        out = version_converter.convert_version(work, target)
    except Exception as exc:
        raise ModelError(f"cannot upgrade the model from opset {current} to {target}: "
                         f"{str(exc).splitlines()[-1][:160]}",
                         "re-export the model at opset 13") from exc
    for n in out.graph.node:
        if n.domain == _PARKED:
            n.domain = ""
    keep = [imp for imp in out.opset_import if imp.domain != _PARKED]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    return out


def convert_opset(model, target: int = TARGET_OPSET):
    """Return a copy of ``model`` at ``target`` opset (default domain); other domains untouched."""
    import onnx

    current = model_opset(model)
    if current == target:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out
    if current < target:
        return _upgrade(model, current, target)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    consts = const_values(out)
    for node in out.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        _lower_node(node, consts)
        _check_against_13(node)
    for imp in out.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = target
    out.ir_version = min(out.ir_version, 8)
    return out

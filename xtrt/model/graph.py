"""Small graph helpers shared by the passes that rewrite or read ONNX graphs."""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np

__all__ = ["const_values", "toposort", "from_constants", "producer_through_casts"]


def const_values(model) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs of ``model``, as numpy arrays by tensor name."""
    from onnx import numpy_helper

    vals = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            vals[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return vals


def toposort(nodes: Iterable, available: set, what: str = "the graph") -> list:
    """``nodes`` in an order where each node's inputs are produced before it (``available``:
    tensors there from the start); RuntimeError on a cycle."""
    avail, pending, out = set(available), list(nodes), []
    while pending:
        rest = []
        for n in pending:
            if all(not i or i in avail for i in n.input):
                out.append(n)
                avail.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise RuntimeError(f"cycle while ordering {what}")
        pending = rest
    return out


def from_constants(name: str, producer: Mapping, is_leaf: Callable[[str], bool]) -> bool:
    """True when ``name`` is computed only from tensors for which ``is_leaf`` holds (constants),
    through the nodes of ``producer`` (tensor -> node); a graph input makes it False."""
    stack, seen = [name], set()
    while stack:
        cur = stack.pop()
        if cur in seen or is_leaf(cur):
            continue
        seen.add(cur)
        node = producer.get(cur)
        if node is None:
            return False
        stack.extend(i for i in node.input if i)
    return True


def producer_through_casts(producer: Mapping, tensor: str):
    """The node producing ``tensor`` (``producer``: tensor name -> node), looking through Cast
    nodes (the FP16 export puts Casts between a DequantizeLinear and its consumer); None for a
    graph input or initializer."""
    p = producer.get(tensor)
    while p is not None and p.op_type == "Cast":
        p = producer.get(p.input[0])
    return p

"""The exporter's record of what it kept float on purpose, inside the ONNX model it writes.

A Q/DQ model leaves some layers float; for a reader (``xtrt.lint``, TensorRT users) an
unquantized Conv is a hazard unless the exporter says why.  xtrt writes the reasons into the
model's ``metadata_props`` under :data:`METADATA_KEY` as JSON ``{node name: reason}`` (sorted, so the
bytes are deterministic); :func:`read_kept_float` reads them back from any model (none for a model
another tool wrote, so an unexplained float layer there is still reported).
"""
from __future__ import annotations

import json
from typing import Mapping

__all__ = ["METADATA_KEY", "write_kept_float", "read_kept_float"]

METADATA_KEY = "xtrt.kept_float"


def write_kept_float(model, reasons: Mapping[str, str]) -> None:
    """Record ``reasons`` (node -> why it is float) in ``model``'s metadata, in place; nodes not in
    the graph are dropped, an empty mapping removes the entry."""
    names = {n.name for n in model.graph.node}
    kept = {k: str(v) for k, v in sorted(reasons.items()) if k in names}
    props = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(props)
    if kept:
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(kept, sort_keys=True)


def read_kept_float(model) -> dict[str, str]:
    """Node -> reason from ``model``'s :data:`METADATA_KEY` metadata ({} when absent or not a JSON
    object of strings)."""
    for p in model.metadata_props:
        if p.key != METADATA_KEY:
            continue
        try:
            data = json.loads(p.value)
        except ValueError:
            return {}
        if isinstance(data, dict):
            return {str(k): str(v) for k, v in data.items()}
    return {}

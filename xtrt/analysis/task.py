"""Which evaluation a model's outputs support: detection (and its layout), classification, or
generic (output fidelity only)."""
from __future__ import annotations

from typing import Sequence

from xtrt.analysis.decode import detect_layout
from xtrt.errors import DataError

__all__ = ["infer_task"]


def infer_task(output_shapes: Sequence[Sequence], requested: str = "auto",
               input_hw: Sequence[int] | None = None) -> tuple[str, str | None]:
    """(task, detection layout or None) for outputs of ``output_shapes`` (batch dim first).

    ``auto``: detection when the outputs are an NMS plugin tail or a YOLO head that fits the
    input's anchor grid (``input_hw``), classification for one [N, classes] output, else
    generic.  A requested ``detection`` on outputs that are neither is a DataError."""
    layout = detect_layout(output_shapes, input_hw)
    task = requested
    if task == "auto":
        if layout is not None:
            task = "detection"
        elif len(output_shapes) == 1 and len(output_shapes[0]) == 2:
            task = "classification"
        else:
            task = "generic"
    if task == "detection" and layout is None:
        raise DataError("evaluation.task is detection but the model's outputs are neither an NMS "
                        "plugin tail nor a YOLO head [N, 4+C, anchors] fitting the input's "
                        f"anchor grid (outputs {[list(s) for s in output_shapes]})",
                        "set evaluation.task: generic (SQNR only)")
    return task, layout

"""xtrt.analysis: error and task metrics as pure functions over numpy arrays.

``metrics``: tensor fidelity (SQNR, cosine, isclose share, rank agreement, streaming comparer);
``classify``: top-k accuracy, FP32/INT8 agreement, label loading;
``detect``: COCO mAP with pycocotools (vs FP32 detections or a COCO file), letterbox unmapping.
Results are plain dicts and floats that :mod:`xtrt.report` renders.
"""
from __future__ import annotations

from xtrt.analysis.classify import load_labels, top1_agreement, topk_accuracy
from xtrt.analysis.detect import Detections, coco_map, letterbox_unmap
from xtrt.analysis.metrics import (
    OutputComparer, compare_outputs, cosine, isclose_share, rank_agreement, sqnr_db,
)

__all__ = [
    "sqnr_db", "cosine", "isclose_share", "rank_agreement", "OutputComparer", "compare_outputs",
    "topk_accuracy", "top1_agreement", "load_labels", "Detections", "coco_map", "letterbox_unmap",
]

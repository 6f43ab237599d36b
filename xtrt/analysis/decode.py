"""Turn detector outputs into per-image detections (original-image pixels) for the mAP metric.

Two output layouts are recognised:
* ``e2e``: an NMS plugin tail (``num_dets``, boxes [N,K,4] corners, scores [N,K], classes [N,K]);
* ``yolo``: a raw YOLOv8-style head [N, 4 + C, A] (cx, cy, w, h, then C class scores; A the
  cells of the feature pyramid), decoded here
  with the same EfficientNMS implementation the plugin handler uses.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from xtrt.analysis.detect import letterbox_unmap

__all__ = ["detect_layout", "anchor_counts", "decode_detections"]


_STRIDES = (2, 4, 8, 16, 32, 64, 128)


def anchor_counts(input_hw: Sequence[int]) -> set[int]:
    """Anchor counts an anchor-free YOLO head can have on an ``input_hw`` image: one anchor per
    cell of a feature pyramid whose strides are a run of 1-4 consecutive powers of two
    (YOLOv8 at 640 with strides 8, 16, 32: 6400 + 1600 + 400 = 8400)."""
    h, w = (int(v) for v in input_hw)
    cells = [-(-h // s) * -(-w // s) for s in _STRIDES]
    return {sum(cells[i:i + k]) for i in range(len(cells)) for k in range(1, 5)
            if i + k <= len(cells)}


def detect_layout(output_shapes: Sequence[Sequence],
                  input_hw: Sequence[int] | None = None) -> str | None:
    """'e2e', 'yolo' or None from the model's output shapes (batch dim first).

    'yolo' is one output [N, 4 + C, A] whose A is many times 4 + C and, when ``input_hw`` is
    given, one of :func:`anchor_counts` for that input: a CTC recognizer's [N, T, classes]
    (T time steps, thousands of characters) has no such anchor grid and stays generic."""
    if len(output_shapes) == 4 and len(output_shapes[1]) == 3 and output_shapes[1][-1] == 4:
        return "e2e"
    if len(output_shapes) == 1 and len(output_shapes[0]) == 3:
        _, ch, anchors = output_shapes[0]
        if not (isinstance(ch, int) and isinstance(anchors, int) and ch >= 5):
            return None
        if anchors < 4 * ch:
            return None
        if input_hw is not None and anchors not in anchor_counts(input_hw):
            return None
        return "yolo"
    return None


def _to_original(boxes, meta) -> np.ndarray:
    if meta is None:
        return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    sy, sx = meta.scale
    top, left = meta.pad
    return letterbox_unmap(boxes, (sx, sy), (left, top), meta.orig_hw)


def decode_detections(outputs: Sequence[np.ndarray], layout: str, metas: Sequence | None = None,
                      *, conf: float = 0.25, iou: float = 0.45, max_det: int = 100) -> list[dict]:
    """Per image: ``{"boxes": [K,4] x1y1x2y2 original pixels, "scores": [K], "classes": [K]}``."""
    if layout == "e2e":
        num, boxes, scores, classes = (np.asarray(o) for o in outputs)
        num = num.reshape(-1)
    elif layout == "yolo":
        import torch

        from xtrt.ops.nms import efficient_nms

        raw = torch.from_numpy(np.ascontiguousarray(outputs[0], dtype=np.float32))
        b = raw[:, :4, :].transpose(1, 2)
        s = raw[:, 4:, :].transpose(1, 2)
        r = efficient_nms(b, s, score_threshold=conf, iou_threshold=iou,
                          max_output_boxes=max_det, box_coding=1)
        n = b.shape[0]
        num = r["num"].cpu().numpy().reshape(-1)
        boxes = np.zeros((n, max_det, 4), np.float32)
        scores = np.zeros((n, max_det), np.float32)
        classes = np.zeros((n, max_det), np.int64)
        row, slot = r["row"].cpu().numpy(), r["slot"].cpu().numpy()
        boxes[row, slot] = r["box"].float().cpu().numpy()
        scores[row, slot] = r["score"].float().cpu().numpy()
        classes[row, slot] = r["cls"].cpu().numpy()
    else:
        raise ValueError(f"unknown detection layout {layout!r}")
    out = []
    for i in range(len(num)):
        k = int(num[i])
        meta = metas[i] if metas is not None and i < len(metas) else None
        out.append({"boxes": _to_original(boxes[i, :k], meta).astype(np.float32),
                    "scores": np.asarray(scores[i, :k], np.float32),
                    "classes": np.asarray(classes[i, :k], np.int64)})
    return out

"""NMS handlers: TensorRT's ``EfficientNMS_TRT`` and ``EfficientNMS_ONNX_TRT``, and ONNX's own
``NonMaxSuppression`` (which PPQ 0.6.6 can only run through mmcv).

Semantics follow TensorRT's efficientNMSPlugin (README and kernels):

* a (anchor, class) score is a candidate when ``score >= score_threshold`` (with ``score_activation``
  the raw score is compared with ``logit(score_threshold)``, and outputs are ``sigmoid(raw)``) and the
  class is not ``background_class``;
* candidates are sorted by descending score and the best 4096 go into NMS; equal scores keep
  (anchor, class) order (TensorRT's order among ties depends on atomics and is not defined);
* a candidate is dropped when its IoU with a kept box of the same class (any class with
  ``class_agnostic``) is ``>= iou_threshold``; IoU is taken on reordered corners;
* ``box_coding`` 0: corners as given (any diagonal, output unchanged), 1: (cx, cy, w, h) converted to
  corners; with anchors (third input) the boxes are decoded first (corners: added; centre-size:
  ``xy*anchor_wh + anchor_xy``, ``anchor_wh*exp(wh)``);
* outputs ``num_detections`` [N,1] int32, ``detection_boxes`` [N,K,4] corners, ``detection_scores``
  [N,K], ``detection_classes`` [N,K] int32, zero-padded, boxes/scores in the boxes' dtype.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from xtrt.errors import ModelError
from xtrt.ops.registry import REGISTRY, OpHandler

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["EfficientNMS", "EfficientNMSONNX", "NonMaxSuppression", "efficient_nms"]

_INT32, _INT64 = 6, 7  # onnx.TensorProto.INT32 / INT64
MAX_CANDIDATES = 4096  # TensorRT's numSelectedBoxes


def _check(cond: bool, op: str, what: str) -> None:
    if not cond:
        raise ModelError(f"{op}: {what}", "fix the node's inputs or attributes in the exporter")


def efficient_nms(boxes: "torch.Tensor", scores: "torch.Tensor", anchors: "torch.Tensor | None" = None, *,
                  score_threshold: float = 0.5, iou_threshold: float = 0.5, max_output_boxes: int = 100,
                  background_class: int = -1, score_activation: bool = False, class_agnostic: bool = False,
                  box_coding: int = 0, op: str = "EfficientNMS_TRT") -> dict[str, "torch.Tensor"]:
    """TensorRT EfficientNMS on torch tensors (any device).

    Args:
        boxes: [N, A, 4], [N, A, 1, 4] or [N, A, C, 4].
        scores: [N, A, C] (or [N, A, C, 1]).
        anchors: optional [1 or N, A, 4]; turns on the fused box decoder.

    Returns:
        dict with ``num`` [N] int64 and, per written box, ``row``/``slot`` (where it goes in the padded
        output), ``box`` [M, 4] corners, ``score`` [M], ``cls`` [M], ``anchor`` [M]; plus ``boxes_dtype``.
    """
    import torch

    from xtrt.ops import _nms_core as core

    _check(box_coding in (0, 1), op, f"box_coding must be 0 or 1, got {box_coding}")
    if scores.dim() == 4 and scores.shape[-1] == 1:
        scores = scores[..., 0]
    _check(scores.dim() == 3, op, f"scores must be [N, A, C], got {list(scores.shape)}")
    n, a, c = scores.shape
    _check(boxes.dim() in (3, 4) and boxes.shape[0] == n and boxes.shape[1] == a and boxes.shape[-1] == 4,
           op, f"boxes {list(boxes.shape)} do not match scores {list(scores.shape)}")
    boxes4 = boxes.float().reshape(n, a, -1, 4)
    _check(boxes4.shape[2] in (1, c), op, f"boxes {list(boxes.shape)} must share or match {c} classes")
    with torch.no_grad():
        raw = scores.float().reshape(n, a * c)
        thr = float(score_threshold)
        if score_activation:
            thr = -math.inf if thr <= 0 else math.inf if thr >= 1 else math.log(thr / (1.0 - thr))
        valid = raw >= thr
        if 0 <= background_class < c:
            valid &= (torch.arange(a * c, device=raw.device) % c != background_class).unsqueeze(0)
        order, valid = core.sort_candidates(raw, valid, MAX_CANDIDATES)
        anchor_idx, cls = order // c, order % c
        rows = torch.arange(n, device=raw.device).unsqueeze(1)
        sel = boxes4[rows, anchor_idx, cls if boxes4.shape[2] > 1 else torch.zeros_like(cls)]
        if anchors is not None:
            _check(anchors.dim() == 3 and anchors.shape[0] in (1, n) and anchors.shape[1] == a, op,
                   f"anchors must be [1 or N, A, 4], got {list(anchors.shape)}")
            anc = anchors.float().expand(n, a, 4)[rows, anchor_idx]
            sel = core.decode(sel, anc, box_coding)
        out_boxes = core.corners(sel, box_coding)
        kept = core.greedy_nms(core.reorder(out_boxes), valid, float(iou_threshold), int(max_output_boxes),
                               groups=None if class_agnostic else cls)
        num, row, src, slot = core.pack_rows(kept, int(max_output_boxes))
        score = torch.gather(raw, 1, order)[row, src]
        if score_activation:
            score = torch.sigmoid(score)
        return {"num": num, "row": row, "slot": slot, "box": out_boxes[row, src], "score": score,
                "cls": cls[row, src], "anchor": anchor_idx[row, src], "boxes_dtype": boxes.dtype}


def _opt(inputs: list, i: int):
    return inputs[i] if len(inputs) > i else None


@REGISTRY.register("EfficientNMS_TRT")
class EfficientNMS(OpHandler):
    """``EfficientNMS_TRT`` (TensorRT 8.0+): 4 outputs, see the module docstring."""

    domain = "TRT"

    def forward(self, inputs, attrs):
        import torch

        boxes, scores = inputs[0], inputs[1]
        k = int(attrs.get("max_output_boxes", 100))
        r = efficient_nms(
            boxes, scores, _opt(inputs, 2),
            score_threshold=float(attrs.get("score_threshold", 0.5)),
            iou_threshold=float(attrs.get("iou_threshold", 0.5)), max_output_boxes=k,
            background_class=int(attrs.get("background_class", -1)),
            score_activation=bool(attrs.get("score_activation", 0)),
            class_agnostic=bool(attrs.get("class_agnostic", 0)),
            box_coding=int(attrs.get("box_coding", 0)), op=self.op_type)
        n, dev, dt = scores.shape[0], scores.device, r["boxes_dtype"]
        det_boxes = torch.zeros(n, k, 4, dtype=dt, device=dev)
        det_scores = torch.zeros(n, k, dtype=dt, device=dev)
        det_classes = torch.zeros(n, k, dtype=torch.int32, device=dev)
        det_boxes[r["row"], r["slot"]] = r["box"].to(dt)
        det_scores[r["row"], r["slot"]] = r["score"].to(dt)
        det_classes[r["row"], r["slot"]] = r["cls"].to(torch.int32)
        return r["num"].to(torch.int32).reshape(n, 1), det_boxes, det_scores, det_classes

    def infer(self, input_shapes, input_dtypes, attrs):
        n, k, dt = input_shapes[0][0], int(attrs.get("max_output_boxes", 100)), input_dtypes[0]
        return [([n, 1], _INT32), ([n, k, 4], dt), ([n, k], dt), ([n, k], _INT32)]


@REGISTRY.register("EfficientNMS_ONNX_TRT")
class EfficientNMSONNX(OpHandler):
    """``EfficientNMS_ONNX_TRT``: TensorRT's stand-in for ONNX NonMaxSuppression.

    Inputs boxes [N, A, 4] and scores [N, A, C] (already transposed from ONNX's [N, C, A]); attributes
    ``score_threshold``, ``iou_threshold``, ``max_output_boxes_per_class`` (K), ``center_point_box``.
    Output ``selected_indices`` [N*K, 3] int32 rows (image, class, anchor); as in TensorRT at most K
    boxes per image, the unused rows repeat the last valid row (all -1 when nothing was selected).
    """

    domain = "TRT"

    def forward(self, inputs, attrs):
        import torch

        boxes, scores = inputs[0], inputs[1]
        k = int(attrs.get("max_output_boxes_per_class", 100))
        r = efficient_nms(boxes, scores, score_threshold=float(attrs.get("score_threshold", 0.5)),
                          iou_threshold=float(attrs.get("iou_threshold", 0.5)), max_output_boxes=k,
                          box_coding=int(attrs.get("center_point_box", 0)), op=self.op_type)
        n = scores.shape[0]
        out = torch.full((n * k, 3), -1, dtype=torch.int32, device=scores.device)
        m = r["row"].numel()
        if m:
            rows = torch.stack([r["row"], r["cls"], r["anchor"]], dim=1).to(torch.int32)
            out[:m] = rows  # pack_rows lists boxes image-major, best first
            out[m:] = rows[-1]
        return (out,)

    def infer(self, input_shapes, input_dtypes, attrs):
        n, k = input_shapes[0][0], int(attrs.get("max_output_boxes_per_class", 100))
        return [([n * k if isinstance(n, int) else None, 3], _INT32)]


@REGISTRY.register("NonMaxSuppression")
class NonMaxSuppression(OpHandler):
    """ONNX ``NonMaxSuppression`` (opset 10/11), as ONNX Runtime computes it: per image and class,
    ``score > score_threshold``, suppression on ``IoU > iou_threshold``; output ``selected_indices``
    [M, 3] int64 ordered by image, class, then score."""

    domain = ""

    def forward(self, inputs, attrs):
        import torch

        from xtrt.ops import _nms_core as core

        boxes, scores = inputs[0], inputs[1]
        _check(boxes.dim() == 3 and scores.dim() == 3 and boxes.shape[1] == scores.shape[2],
               self.op_type, f"boxes {list(boxes.shape)} / scores {list(scores.shape)} must be "
                             f"[N, A, 4] / [N, C, A]")

        def scalar(i, default):
            t = _opt(inputs, i)
            return default if t is None or t.numel() == 0 else t.reshape(-1)[0].item()

        max_out = int(scalar(2, 0))
        iou_thr = float(scalar(3, 0.0))
        score_thr = scalar(4, None)
        n, c, a = scores.shape
        with torch.no_grad():
            flat = scores.float().reshape(n * c, a)
            valid = flat > float(score_thr) if score_thr is not None else torch.ones_like(flat, dtype=torch.bool)
            if max_out <= 0:
                valid &= False
            order, valid = core.sort_candidates(flat, valid, a)
            b = core.reorder(core.corners(boxes.float(), int(attrs.get("center_point_box", 0))))
            b = b.unsqueeze(1).expand(n, c, a, 4).reshape(n * c, a, 4)
            rows = torch.arange(n * c, device=flat.device).unsqueeze(1)
            kept = core.greedy_nms(b[rows, order], valid, iou_thr, max_out, strict=True)
            _, row, src, _ = core.pack_rows(kept, max_out)
            out = torch.stack([row // c, row % c, order[row, src]], dim=1)
        return (out.to(torch.int64),)

    def infer(self, input_shapes, input_dtypes, attrs):
        return [([None, 3], _INT64)]

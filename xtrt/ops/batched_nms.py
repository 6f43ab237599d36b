"""``BatchedNMS_TRT`` / ``BatchedNMSDynamic_TRT``: TensorRT's older (deprecated since 9.0) NMS plugin,
still common in SSD / RetinaNet / YOLOv4-era exports.

Semantics follow TensorRT's batchedNMSPlugin kernels:

* inputs boxes [N, A, 1 or C, 4] (``shareLocation``; [N, A, 4] is accepted as shared) and scores
  [N, A, C]; boxes are corners (any diagonal);
* per class: scores ``> scoreThreshold`` (background class excluded), the best ``topK`` are kept,
  greedy NMS drops boxes with IoU ``> iouThreshold`` with a kept box of the same class; with
  ``isNormalized=0`` areas are pixel-inclusive (``(w+1)*(h+1)``) and with ``caffeSemantics`` (default)
  the intersection too;
* all classes are merged by score and the best ``keepTopK`` written; ``clipBoxes`` (default 1) clamps
  output boxes to [0, 1];
* outputs ``num_detections`` [N,1] int32, ``nmsed_boxes`` [N,keepTopK,4], ``nmsed_scores``
  [N,keepTopK], ``nmsed_classes`` [N,keepTopK] **float**; padding is 0 with class -1.
"""
from __future__ import annotations

from xtrt.errors import ModelError
from xtrt.ops.registry import REGISTRY, OpHandler

__all__ = ["BatchedNMS"]

_INT32 = 6


@REGISTRY.register("BatchedNMS_TRT", "BatchedNMSDynamic_TRT")
class BatchedNMS(OpHandler):
    """``BatchedNMS_TRT`` and ``BatchedNMSDynamic_TRT`` (same attributes and outputs)."""

    domain = "TRT"

    def forward(self, inputs, attrs):
        import torch

        from xtrt.ops import _nms_core as core

        boxes, scores = inputs[0], inputs[1]
        if scores.dim() == 4 and scores.shape[-1] == 1:
            scores = scores[..., 0]
        if scores.dim() != 3 or boxes.shape[:2] != scores.shape[:2] or boxes.shape[-1] != 4:
            raise ModelError(f"{self.op_type}: boxes {list(boxes.shape)} / scores {list(scores.shape)} "
                             f"must be [N, A, 1 or C, 4] / [N, A, C]", "fix the exporter's reshapes")
        n, a, c = scores.shape
        share = bool(attrs.get("shareLocation", 1))
        bg = int(attrs.get("backgroundLabelId", -1))
        top_k = min(int(attrs.get("topK", a)), a)
        keep_top_k = int(attrs.get("keepTopK", 100))
        if int(attrs.get("numClasses", c)) != c:
            raise ModelError(f"{self.op_type}: numClasses={attrs['numClasses']} but scores have {c} classes",
                             "set numClasses to the scores' last dimension")
        if keep_top_k > int(attrs.get("topK", a)):
            raise ModelError(f"{self.op_type}: keepTopK ({keep_top_k}) > topK ({attrs.get('topK')}); "
                             f"TensorRT writes no output then", "make keepTopK <= topK")
        normalized = bool(attrs.get("isNormalized", 1))
        caffe = bool(attrs.get("caffeSemantics", 1))
        boxes4 = boxes.float().reshape(n, a, -1, 4)
        if not share and boxes4.shape[2] != c:
            raise ModelError(f"{self.op_type}: shareLocation=0 needs boxes [N, A, {c}, 4], got "
                             f"{list(boxes.shape)}", "set shareLocation=1 or export per-class boxes")
        with torch.no_grad():
            # rows are (image, class) pairs
            flat = scores.float().permute(0, 2, 1).reshape(n * c, a)
            valid = flat > float(attrs.get("scoreThreshold", 0.0))
            if 0 <= bg < c:
                valid.view(n, c, a)[:, bg] = False
            order, valid = core.sort_candidates(flat, valid, top_k)
            k = order.shape[1]
            cls = torch.arange(c, device=flat.device).repeat(n).unsqueeze(1)  # [n*c, 1]
            img = torch.arange(n, device=flat.device).repeat_interleave(c).unsqueeze(1)
            loc = cls.expand(-1, k) if boxes4.shape[2] > 1 else torch.zeros_like(order)
            sel = boxes4[img, order, loc]  # [n*c, k, 4]
            kept = core.greedy_nms(core.reorder(sel), valid, float(attrs.get("iouThreshold", 0.5)),
                                   keep_top_k, strict=True, area_offset=0.0 if normalized else 1.0,
                                   inter_offset=1.0 if (caffe and not normalized) else 0.0)
            # merge classes per image: stable sort on score over the (class, rank) layout
            kept_scores = torch.where(kept, torch.gather(flat, 1, order), torch.full_like(sel[..., 0], -1.0))
            merged = kept_scores.reshape(n, c * k)
            m_order, m_valid = core.sort_candidates(merged, kept.reshape(n, c * k), c * k)
            num, row, src, slot = core.pack_rows(m_valid, keep_top_k)
            pick = m_order[row, src]
            out_boxes = sel.reshape(n, c * k, 4)[row, pick]
            if bool(attrs.get("clipBoxes", 1)):
                out_boxes = out_boxes.clamp(0.0, 1.0)
            dt, dev = boxes.dtype, boxes.device
            nmsed_boxes = torch.zeros(n, keep_top_k, 4, dtype=dt, device=dev)
            nmsed_scores = torch.zeros(n, keep_top_k, dtype=dt, device=dev)
            nmsed_classes = torch.full((n, keep_top_k), -1.0, dtype=dt, device=dev)
            nmsed_boxes[row, slot] = out_boxes.to(dt)
            nmsed_scores[row, slot] = merged[row, pick].to(dt)
            nmsed_classes[row, slot] = (pick // k).to(dt)
        return num.to(torch.int32).reshape(n, 1), nmsed_boxes, nmsed_scores, nmsed_classes

    def infer(self, input_shapes, input_dtypes, attrs):
        n, k, dt = input_shapes[0][0], int(attrs.get("keepTopK", 100)), input_dtypes[0]
        return [([n, 1], _INT32), ([n, k, 4], dt), ([n, k], dt), ([n, k], dt)]

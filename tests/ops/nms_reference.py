"""Plain-numpy NMS references, written from TensorRT's plugin documentation, independent of xtrt.ops."""
from __future__ import annotations

import math

import numpy as np

F = np.float32


def _reorder(b):
    return [min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])]


def _area(b, off=F(0)):
    w, h = b[2] - b[0], b[3] - b[1]
    if off:
        return (w + off) * (h + off) if w >= 0 and h >= 0 else F(0)
    return w * h if w > 0 and h > 0 else F(0)


def iou(b1, b2, area_off=F(0), inter_off=F(0)):
    b1, b2 = _reorder(b1), _reorder(b2)
    iw = min(b1[2], b2[2]) - max(b1[0], b2[0]) + inter_off
    ih = min(b1[3], b2[3]) - max(b1[1], b2[1]) + inter_off
    if iw <= 0 or ih <= 0:
        return F(0)
    inter = iw * ih
    union = _area(b1, area_off) + _area(b2, area_off) - inter
    return inter / union if union > 0 else F(0)


def _to_corners(b, coding):
    if coding == 0:
        return list(b)
    x, y, w, h = b
    return [x - w / F(2), y - h / F(2), x + w / F(2), y + h / F(2)]


def _decode(b, a, coding):
    if coding == 0:
        rb, ra = _reorder(b), _reorder(a)
        return [rb[i] + ra[i] for i in range(4)]
    return [b[0] * a[2] + a[0], b[1] * a[3] + a[1], a[2] * F(math.exp(b[2])), a[3] * F(math.exp(b[3]))]


def ref_efficient_nms(boxes, scores, anchors=None, *, score_threshold=0.5, iou_threshold=0.5,
                      max_output_boxes=100, background_class=-1, score_activation=0, class_agnostic=0,
                      box_coding=0, limit=4096):
    """Returns (num [N,1], boxes [N,K,4], scores [N,K], classes [N,K]) as TensorRT documents them."""
    boxes, scores = np.asarray(boxes, F), np.asarray(scores, F)
    n_img, n_anchor, n_cls = scores.shape
    k = max_output_boxes
    num = np.zeros((n_img, 1), np.int32)
    out_b = np.zeros((n_img, k, 4), F)
    out_s = np.zeros((n_img, k), F)
    out_c = np.zeros((n_img, k), np.int32)
    for n in range(n_img):
        cands = []
        for a in range(n_anchor):
            for c in range(n_cls):
                raw = scores[n, a, c]
                p = F(1 / (1 + math.exp(-float(raw)))) if score_activation else raw
                if p >= F(score_threshold) and c != background_class:
                    cands.append((float(raw), a, c, p))
        cands.sort(key=lambda t: -t[0])  # stable: ties stay in (anchor, class) order
        kept = []
        for _, a, c, p in cands[:limit]:
            if len(kept) == k:
                break
            b = boxes[n, a] if boxes.ndim == 3 else boxes[n, a, c if boxes.shape[2] > 1 else 0]
            if anchors is not None:
                b = _decode(list(b), list(anchors[0 if anchors.shape[0] == 1 else n, a]), box_coding)
            b = _to_corners(list(b), box_coding)
            if all(not (class_agnostic or kc == c) or iou(kb, b) < F(iou_threshold) for kb, _, kc in kept):
                kept.append((b, p, c))
        num[n, 0] = len(kept)
        for i, (b, p, c) in enumerate(kept):
            out_b[n, i], out_s[n, i], out_c[n, i] = b, p, c
    return num, out_b, out_s, out_c


def ref_batched_nms(boxes, scores, *, topK, keepTopK, scoreThreshold, iouThreshold, backgroundLabelId=-1,
                    isNormalized=1, clipBoxes=1, caffeSemantics=1, shareLocation=1):
    """BatchedNMS_TRT: per-class topK + NMS (IoU > thr), merged by score, keepTopK; classes float."""
    boxes, scores = np.asarray(boxes, F), np.asarray(scores, F)
    n_img, n_anchor, n_cls = scores.shape
    area_off = F(0) if isNormalized else F(1)
    inter_off = F(1) if (caffeSemantics and not isNormalized) else F(0)
    num = np.zeros((n_img, 1), np.int32)
    out_b = np.zeros((n_img, keepTopK, 4), F)
    out_s = np.zeros((n_img, keepTopK), F)
    out_c = np.full((n_img, keepTopK), -1, F)
    for n in range(n_img):
        merged = []
        for c in range(n_cls):
            if c == backgroundLabelId:
                continue
            cands = sorted(((scores[n, a, c], a) for a in range(n_anchor) if scores[n, a, c] > F(scoreThreshold)),
                           key=lambda t: -t[0])[:topK]
            kept = []
            for s, a in cands:
                b = list(boxes[n, a, 0 if shareLocation else c]) if boxes.ndim == 4 else list(boxes[n, a])
                if all(iou(kb, b, area_off, inter_off) <= F(iouThreshold) for kb, _ in kept):
                    kept.append((b, s))
            merged += [(s, c, b) for b, s in kept]
        merged.sort(key=lambda t: -t[0])
        merged = merged[:keepTopK]
        num[n, 0] = len(merged)
        for i, (s, c, b) in enumerate(merged):
            out_b[n, i] = np.clip(b, 0, 1) if clipBoxes else b
            out_s[n, i], out_c[n, i] = s, c
    return num, out_b, out_s, out_c

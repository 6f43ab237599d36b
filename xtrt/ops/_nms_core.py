"""Vectorised NMS building blocks shared by the NMS handlers.

Everything works on a batch of rows (an image, or an (image, class) pair) whose candidates are
already sorted by descending score.  Greedy suppression runs one iteration per *kept* box (at most the
number of boxes a row may keep), each iteration vectorised over all rows and candidates; there is no
loop over boxes or box pairs.  Where ``torchvision.ops.batched_nms`` works it does the suppression
instead (probed once, the answer cached).
"""
from __future__ import annotations

import logging
import math

import torch

__all__ = ["torchvision_batched_nms", "corners", "reorder", "decode", "iou_one_to_many", "greedy_nms",
           "sort_candidates", "pack_rows"]

log = logging.getLogger(__name__)

_TV_STATE: dict[str, object] = {}


def torchvision_batched_nms():
    """``torchvision.ops.batched_nms`` if it imports and runs here, else None (probed once)."""
    if "fn" not in _TV_STATE:
        fn = None
        try:
            from torchvision.ops import batched_nms

            boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.1]])
            keep = batched_nms(boxes, torch.tensor([0.9, 0.8]), torch.zeros(2, dtype=torch.int64), 0.5)
            if keep.tolist() == [0]:
                fn = batched_nms
        except Exception as exc:  # ImportError, or compiled ops that do not load (RuntimeError)
            log.debug("torchvision.ops.batched_nms unusable (%s: %s); using the torch implementation",
                      type(exc).__name__, exc)
        _TV_STATE["fn"] = fn
    return _TV_STATE["fn"]


def corners(boxes: torch.Tensor, coding: int) -> torch.Tensor:
    """[..., 4] boxes to corners: coding 0 leaves them as given, 1 converts (cx, cy, w, h)."""
    if coding == 0:
        return boxes
    c, s = boxes[..., :2], boxes[..., 2:] * 0.5
    return torch.cat([c - s, c + s], dim=-1)


def reorder(boxes: torch.Tensor) -> torch.Tensor:
    """Corner boxes with (min, min, max, max) coordinates, whichever diagonal they were given by."""
    a, b = boxes[..., :2], boxes[..., 2:]
    return torch.cat([torch.minimum(a, b), torch.maximum(a, b)], dim=-1)


def decode(deltas: torch.Tensor, anchors: torch.Tensor, coding: int) -> torch.Tensor:
    """TensorRT's fused box decoder: corners add (after reordering both), centre-size scales."""
    if coding == 0:
        return reorder(deltas) + reorder(anchors)
    xy = deltas[..., :2] * anchors[..., 2:] + anchors[..., :2]
    wh = anchors[..., 2:] * torch.exp(deltas[..., 2:])
    return torch.cat([xy, wh], dim=-1)


def _area(boxes: torch.Tensor, offset: float) -> torch.Tensor:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    ok = (w >= 0) & (h >= 0) if offset else (w > 0) & (h > 0)
    return torch.where(ok, (w + offset) * (h + offset), torch.zeros_like(w))


def iou_one_to_many(one: torch.Tensor, many: torch.Tensor, *, area_offset: float = 0.0,
                    inter_offset: float = 0.0) -> torch.Tensor:
    """IoU of ``one`` [R, 4] against ``many`` [R, k, 4] (reordered corners) -> [R, k].

    ``area_offset``/``inter_offset`` of 1 give Caffe's pixel-inclusive arithmetic (BatchedNMS with
    unnormalised boxes).  Zero intersection or union gives IoU 0.
    """
    one = one.unsqueeze(1)
    lt = torch.maximum(one[..., :2], many[..., :2])
    rb = torch.minimum(one[..., 2:], many[..., 2:])
    wh = rb - lt + inter_offset
    inter = torch.where((wh > 0).all(dim=-1), wh[..., 0] * wh[..., 1], torch.zeros_like(wh[..., 0]))
    union = _area(one, area_offset) + _area(many, area_offset) - inter
    ok = (inter > 0) & (union > 0)
    return torch.where(ok, inter / torch.where(ok, union, torch.ones_like(union)), torch.zeros_like(inter))


def sort_candidates(scores: torch.Tensor, valid: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable descending sort of each row's valid scores, cut to the longest row (at most ``limit``).

    Returns:
        (order [R, k] indices into the row, valid [R, k]); ties keep their input order.
    """
    masked = torch.where(valid, scores, torch.full_like(scores, -math.inf))
    k = int(min(limit, int(valid.sum(dim=1).max()) if valid.numel() else 0))
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices[:, :k]
    return order, torch.gather(valid, 1, order)


def greedy_nms(boxes: torch.Tensor, valid: torch.Tensor, iou_threshold: float, max_keep: int, *,
               groups: torch.Tensor | None = None, strict: bool = False, area_offset: float = 0.0,
               inter_offset: float = 0.0, use_torchvision: bool = True) -> torch.Tensor:
    """Greedy NMS over rows of score-sorted candidates.

    Args:
        boxes: [R, k, 4] reordered corner boxes, sorted by descending score along k.
        valid: [R, k] candidates that take part.
        iou_threshold: a box is suppressed by a kept one when IoU >= threshold (``strict``: >).
        max_keep: boxes kept per row at most (the search stops there, as TensorRT's does).
        groups: [R, k] class ids; only boxes of the same group suppress each other (None: all do).

    Returns:
        [R, k] bool, the kept candidates.
    """
    rows_n, k = valid.shape
    kept = torch.zeros_like(valid)
    if k == 0 or max_keep <= 0:
        return kept
    tv = torchvision_batched_nms() if use_torchvision and not (area_offset or inter_offset) else None
    if tv is not None:
        try:
            return _greedy_torchvision(tv, boxes, valid, iou_threshold, max_keep, groups, strict)
        except Exception as exc:  # e.g. no CUDA kernel in this torchvision build
            log.debug("torchvision batched_nms failed (%s); using the torch implementation", exc)
    remaining = valid.clone()
    rows = torch.arange(rows_n, device=valid.device)
    for _ in range(min(max_keep, k)):
        alive = remaining.any(dim=1)
        if not bool(alive.any()):
            break
        idx = remaining.to(torch.uint8).argmax(dim=1)  # first remaining = highest score
        iou = iou_one_to_many(boxes[rows, idx], boxes, area_offset=area_offset, inter_offset=inter_offset)
        hit = iou > iou_threshold if strict else iou >= iou_threshold
        if groups is not None:
            hit &= groups == groups[rows, idx].unsqueeze(1)
        kept[rows, idx] = kept[rows, idx] | alive
        remaining &= ~hit
        remaining[rows, idx] = False
    return kept


def _greedy_torchvision(tv, boxes, valid, iou_threshold, max_keep, groups, strict) -> torch.Tensor:
    rows_n, k = valid.shape
    row_id, pos = valid.nonzero(as_tuple=True)
    kept = torch.zeros_like(valid)
    if row_id.numel() == 0:
        return kept
    # Rank-based pseudo scores keep our (stable) order; torchvision suppresses on IoU > threshold,
    # so TensorRT's >= becomes > on the next float below the threshold.
    rank = (k - pos).to(torch.float32)
    thr = float(iou_threshold) if strict else float(
        torch.nextafter(torch.tensor(iou_threshold, dtype=torch.float32), torch.tensor(-math.inf)))
    ids = row_id if groups is None else row_id * (int(groups.max()) + 1) + groups[row_id, pos]
    keep = tv(boxes[row_id, pos].float(), rank, ids, thr)
    kept[row_id[keep], pos[keep]] = True
    within = torch.cumsum(kept.to(torch.int64), dim=1) <= max_keep
    return kept & within


def pack_rows(kept: torch.Tensor, limit: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the first ``limit`` kept candidates of each row go in a zero-padded [R, limit] output.

    Returns:
        (count [R] int64, row index, source position, destination slot) for every written box.
    """
    slot = torch.cumsum(kept.to(torch.int64), dim=1) - 1
    write = kept & (slot < limit)
    row, src = write.nonzero(as_tuple=True)
    return write.sum(dim=1), row, src, slot[row, src]

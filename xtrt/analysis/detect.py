"""Detection metrics: COCO mAP with pycocotools, against FP32's own detections or a COCO file.

Detections of a set of images are a list (one entry per image) of dicts::

    {"boxes": float32 [K, 4]  x1, y1, x2, y2 in original-image pixels,
     "scores": float32 [K],
     "classes": int [K]       contiguous class index 0..C-1}

Two kinds of reference:
  * ``"vs_fp32"``: another such list, the FP32 model's detections on the same images; every box
    counts as ground truth (scores ignored, ``iscrowd`` 0). Call the result "mAP vs FP32", never
    "COCO mAP", and report ``reference_boxes`` next to it.
  * ``"coco"``: a COCO annotation JSON (path or loaded dict). Images are matched by file name or
    by id, only the matched images are evaluated, and class index ``i`` maps to the file's
    ``i``-th category id in sorted order unless ``category_ids`` is given.

As in COCO, a class with no reference box on the evaluated images is left out of the mean, so
detections of a class that FP32 never found do not lower mAP vs FP32.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from xtrt.errors import DataError

__all__ = ["Detections", "coco_map", "letterbox_unmap"]

log = logging.getLogger(__name__)


class Detections(TypedDict):
    """Detections of one image (see the module docstring)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def _arrays(d: Mapping[str, Any], i: int, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        boxes = np.asarray(d["boxes"], dtype=np.float64).reshape(-1, 4)
        k = boxes.shape[0]
        scores = np.asarray(d.get("scores", np.ones(k)), dtype=np.float64).reshape(-1)
        classes = np.asarray(d["classes"]).reshape(-1).astype(np.int64)
    except (KeyError, ValueError) as e:
        raise DataError(f"{what} of image {i} is not a dict of boxes [K,4], scores [K], classes [K]: {e}",
                        hint="pass detections as {'boxes', 'scores', 'classes'} per image") from None
    if scores.shape[0] != k or classes.shape[0] != k:
        raise DataError(f"{what} of image {i}: {k} boxes, {scores.shape[0]} scores, {classes.shape[0]} classes",
                        hint="give one score and one class per box")
    return boxes, scores, classes


def _xywh(b: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in b)
    return [x1, y1, max(0.0, x2 - x1), max(0.0, y2 - y1)]


def _quiet(fn, *args, **kwargs):
    """Call a pycocotools function with its progress prints swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _coco_from_dataset(dataset: dict):
    from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = dataset
    _quiet(coco.createIndex)
    return coco


def _load_coco(gt: str | os.PathLike | Mapping) -> Any:
    if isinstance(gt, Mapping):
        dataset = dict(gt)
        where = "(dict)"
    else:
        where = str(gt)
        try:
            dataset = json.loads(Path(gt).read_text(encoding="utf-8"))
        except OSError as e:
            raise DataError(f"cannot read COCO annotation file {gt}: {e.strerror}",
                            hint="check the path of the annotation JSON") from e
        except ValueError as e:
            raise DataError(f"COCO annotation file {gt} is not valid JSON: {e}",
                            hint="give an instances_*.json file as written by COCO tools") from e
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise DataError(f"COCO annotation file {where} has no '{key}' list",
                            hint="give an instances_*.json file as written by COCO tools")
    return _coco_from_dataset(dataset), where


def _match_images(coco, where: str, n: int, image_ids: Sequence[int] | None,
                  image_files: Sequence[str | os.PathLike] | None) -> list[int]:
    if image_ids is not None:
        ids = [int(i) for i in image_ids]
        missing = [i for i in ids if i not in coco.imgs]
        if missing:
            raise DataError(f"image ids {missing[:5]} are not in {where}",
                            hint="pass ids from the annotation file's 'images' list")
    elif image_files is not None:
        by_full = {str(img["file_name"]): img["id"] for img in coco.dataset["images"]}
        by_base: dict[str, list[int]] = {}
        for img in coco.dataset["images"]:
            by_base.setdefault(Path(str(img["file_name"])).name, []).append(img["id"])
        ids = []
        for f in image_files:
            f = str(f)
            if f in by_full:
                ids.append(by_full[f])
                continue
            cands = by_base.get(Path(f).name, [])
            if len(cands) != 1:
                raise DataError(
                    f"image {f} is {'ambiguous' if cands else 'not'} in {where}"
                    + (f" ({len(cands)} images have that file name)" if cands else ""),
                    hint="evaluate only images listed in the annotation file, or pass image_ids")
            ids.append(cands[0])
    else:
        raise DataError(f"cannot tell which images of {where} the {n} detections belong to",
                        hint="pass image_files (matched by file name) or image_ids")
    if len(ids) != n:
        raise DataError(f"{n} detection entries but {len(ids)} image ids/files",
                        hint="give one image id or file per detection entry")
    if len(set(ids)) != len(ids):
        raise DataError("the same annotation image is matched twice", hint="evaluate each image once")
    return ids


def _category_map(coco, where: str, category_ids: Sequence[int] | Mapping[int, int] | None) -> dict[int, int]:
    if isinstance(category_ids, Mapping):
        return {int(k): int(v) for k, v in category_ids.items()}
    ids = list(category_ids) if category_ids is not None else sorted(coco.getCatIds())
    if not ids:
        raise DataError(f"{where} has no categories", hint="give an annotation file with a 'categories' list")
    return {i: int(c) for i, c in enumerate(ids)}


def _precision_map(ev, iou: float | None) -> float | None:
    """Mean precision over classes and recall points, area 'all', largest maxDets; None if empty."""
    p = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K]
    if iou is not None:
        p = p[np.isclose(ev.params.iouThrs, iou)]
    valid = p > -1
    return float(np.mean(p[valid])) if valid.any() else None


def _run_eval(gt_coco, results: list[dict], img_ids: list[int], cat_ids: list[int], max_dets: int):
    from pycocotools.cocoeval import COCOeval
    dt_coco = _quiet(gt_coco.loadRes, results)
    ev = COCOeval(gt_coco, dt_coco, "bbox")
    ev.params.imgIds = img_ids
    ev.params.catIds = cat_ids
    ev.params.maxDets = [1, 10, max_dets]
    ev.params.areaRng = [[0.0, 1e10]]
    ev.params.areaRngLbl = ["all"]
    _quiet(ev.evaluate)
    _quiet(ev.accumulate)
    return ev


def coco_map(gt: Sequence[Mapping[str, Any]] | str | os.PathLike | Mapping[str, Any],
             dets: Sequence[Mapping[str, Any]], *,
             image_sizes: Sequence[tuple[int, int]] | None = None,
             image_ids: Sequence[int] | None = None,
             image_files: Sequence[str | os.PathLike] | None = None,
             category_ids: Sequence[int] | Mapping[int, int] | None = None,
             max_dets: int = 100) -> dict[str, Any]:
    """mAP50-95 and mAP50 of ``dets`` with pycocotools' COCOeval (bbox, area 'all').

    Args:
        gt: FP32 detections (a list like ``dets``: "mAP vs FP32"), or a COCO annotation JSON
            (path, or the loaded dict).
        dets: detections to score, one entry per image.
        image_sizes: ``(height, width)`` per image, recorded in the in-memory COCO images
            (vs_fp32 only; COCOeval does not need them).
        image_ids / image_files: COCO mode only, one per ``dets`` entry: the annotation file's
            image ids, or file names matched against its ``file_name`` (exact, then base name).
        category_ids: COCO mode only: class index -> category id, as a list (index i -> ids[i])
            or a dict; default: the file's category ids sorted.
        max_dets: detections kept per image and class (COCO: 100).

    Returns:
        ``{"kind": "vs_fp32"|"coco", "map50_95": float|None, "map50": float|None,
        "reference_boxes": int, "detections": int, "images": int,
        "per_class": {class_index: AP50-95} (classes with reference boxes), "note": str|None}``.
        The map values are None (with a note) when there is no reference box.
    """
    if isinstance(gt, (str, os.PathLike, Mapping)):
        kind = "coco"
        gt_coco, where = _load_coco(gt)
        img_ids = _match_images(gt_coco, where, len(dets), image_ids, image_files)
        cat_of = _category_map(gt_coco, where, category_ids)
        cat_ids = sorted(set(cat_of.values()))
        ref_boxes = len([a for a in gt_coco.getAnnIds(imgIds=img_ids, catIds=cat_ids)
                         if not gt_coco.anns[a].get("iscrowd", 0)])
    else:
        kind = "vs_fp32"
        if len(gt) != len(dets):
            raise DataError(f"{len(gt)} FP32 detection entries but {len(dets)} quantized",
                            hint="run both models on the same images")
        if image_sizes is not None and len(image_sizes) != len(dets):
            raise DataError(f"{len(image_sizes)} image sizes for {len(dets)} images",
                            hint="give one (height, width) per image")
        img_ids = list(range(1, len(dets) + 1))
        images, anns, classes = [], [], set()
        for i, entry in enumerate(gt):
            boxes, _, cls = _arrays(entry, i, "FP32 detections")
            h, w = image_sizes[i] if image_sizes is not None else (0, 0)
            images.append({"id": img_ids[i], "height": int(h), "width": int(w), "file_name": str(i)})
            for b, c in zip(boxes, cls):
                xywh = _xywh(b)
                anns.append({"id": len(anns) + 1, "image_id": img_ids[i], "category_id": int(c) + 1,
                             "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": 0})
                classes.add(int(c))
        for i, entry in enumerate(dets):
            classes.update(int(c) for c in _arrays(entry, i, "detections")[2])
        cat_of = {c: c + 1 for c in classes}
        cat_ids = sorted(cat_of.values())
        gt_coco = _coco_from_dataset({"images": images, "annotations": anns,
                                      "categories": [{"id": c, "name": str(c - 1)} for c in cat_ids]})
        ref_boxes = len(anns)

    results = []
    for i, entry in enumerate(dets):
        boxes, scores, cls = _arrays(entry, i, "detections")
        for b, s, c in zip(boxes, scores, cls):
            if int(c) not in cat_of:
                raise DataError(f"detections of image {i}: class index {int(c)} has no category id "
                                f"({len(cat_of)} categories known)",
                                hint="pass category_ids mapping every class index of the model")
            results.append({"image_id": img_ids[i], "category_id": cat_of[int(c)],
                            "bbox": _xywh(b), "score": float(s)})

    out: dict[str, Any] = {"kind": kind, "map50_95": None, "map50": None, "reference_boxes": ref_boxes,
                           "detections": len(results), "images": len(img_ids), "per_class": {}, "note": None}
    if ref_boxes == 0:
        out["note"] = ("no reference boxes on the evaluated images: mAP is undefined"
                       + (" (FP32 detected nothing; lower its confidence threshold or use other images)"
                          if kind == "vs_fp32" else ""))
        log.warning(out["note"])
        return out
    if not results:
        out.update(map50_95=0.0, map50=0.0, note="no detections to score: mAP is 0")
        return out
    ev = _run_eval(gt_coco, results, img_ids, cat_ids, max_dets)
    out["map50_95"] = _precision_map(ev, None)
    out["map50"] = _precision_map(ev, 0.5)
    index_of = {v: k for k, v in cat_of.items()}
    prec = ev.eval["precision"][:, :, :, 0, -1]
    for k, cat in enumerate(ev.params.catIds):
        p = prec[:, :, k]
        if (p > -1).any() and cat in index_of:
            out["per_class"][index_of[cat]] = float(np.mean(p[p > -1]))
    return out


def letterbox_unmap(boxes: np.ndarray, scale: float | tuple[float, float], pad: tuple[float, float],
                    orig_hw: tuple[int, int]) -> np.ndarray:
    """Map x1,y1,x2,y2 boxes from letterboxed network-input pixels back to the original image.

    Args:
        boxes: ``[K, 4]`` boxes in input coordinates.
        scale: resize factor applied to the original image (``input = orig * scale + pad``), one
            value or ``(sx, sy)``.
        pad: ``(left, top)`` padding in input pixels.
        orig_hw: ``(height, width)`` of the original image; boxes are clipped to it.

    Returns:
        float32 ``[K, 4]`` boxes in original-image pixels.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx, sy = (scale, scale) if np.isscalar(scale) else scale
    if sx <= 0 or sy <= 0:
        raise DataError(f"letterbox scale must be positive, got {scale}", hint="pass the resize factor used")
    px, py = pad
    h, w = orig_hw
    out = np.empty_like(b)
    out[:, [0, 2]] = np.clip((b[:, [0, 2]] - px) / sx, 0, w)
    out[:, [1, 3]] = np.clip((b[:, [1, 3]] - py) / sy, 0, h)
    return out.astype(np.float32)

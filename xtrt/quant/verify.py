"""Check an exported model against its source on ONNX Runtime, on held-out data.

Runs both through the split runner (plugin tails included), compares every output (SQNR, cosine,
isclose share, per-rank error) and computes the task metric: top-1 agreement (and accuracy against
labels when given) for classifiers, mAP vs FP32 detections (or COCO mAP with an annotation file)
for detectors.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from xtrt.analysis.classify import top1_agreement, topk_accuracy
from xtrt.analysis.decode import decode_detections
from xtrt.analysis.detect import coco_map
from xtrt.analysis.metrics import OutputComparer

__all__ = ["EvalData", "Evaluation", "evaluate", "metric_value"]

log = logging.getLogger(__name__)


@dataclass
class EvalData:
    """Held-out batches with their reference (FP32) outputs, computed once and reused.

    ``store`` holds each batch with its FP32 outputs (in output order), in memory up to a budget
    and on disk past it (:class:`xtrt.data.store.BatchStore`), so any number of images fits.
    """

    store: object                       # xtrt.data.store.BatchStore: (batch, FP32 outputs)
    output_names: list[str]
    task: str                           # classification | detection | generic
    layout: str | None = None           # detection layout (e2e | yolo)
    labels: np.ndarray | None = None
    annotations: str | None = None
    conf: float = 0.25
    iou: float = 0.45
    ref_detections: list[dict] = field(default_factory=list)
    images: int = 0

    @property
    def count(self) -> int:
        return self.images

    @property
    def batches(self) -> list:
        """All batches as a list (small sets only; iterate ``pairs()`` otherwise)."""
        return self.store.batches()

    def pairs(self):
        """``(batch, FP32 outputs)`` in order."""
        return self.store.items()

    def close(self) -> None:
        self.store.close()


@dataclass
class Evaluation:
    outputs: dict
    task: dict
    images: int

    def as_dict(self) -> dict:
        return {"images": self.images, "outputs": self.outputs, "task": self.task}


def metric_value(ev: Evaluation, metric: str) -> float | None:
    """The number a fallback target is judged on (higher is better)."""
    if metric == "top1":
        return ev.task.get("top1_agreement")
    if metric == "map50_95":
        return ev.task.get("map50_95")
    if metric == "sqnr":
        vals = [o["sqnr_db"] for o in ev.outputs.values() if o.get("sqnr_db") is not None]
        return min(vals) if vals else None
    raise ValueError(metric)


def _detections(outs, ed: EvalData, batch) -> list[dict]:
    return decode_detections(outs, ed.layout, batch.metas, conf=ed.conf, iou=ed.iou)


def prepare_eval(runner, batches: Iterable, task: str, layout: str | None, *,
                 labels=None, annotations: str | None = None, conf=0.25, iou=0.45,
                 store=None) -> EvalData:
    """Run the FP32 model once over the held-out batches (streamed into ``store``)."""
    from xtrt.data.store import BatchStore
    from xtrt.quant.checks import check_reference

    store = BatchStore() if store is None else store
    ed = EvalData(store, list(runner.output_names), task, layout, labels, annotations, conf, iou)
    for b in batches:
        refs = runner.run(b.feeds)
        check_reference([refs], ed.output_names, [b])   # NaN/Inf in FP32: no figure means anything
        store.append(b, refs)
        ed.images += b.size
        if task == "detection":
            ed.ref_detections.extend(_detections(refs, ed, b))
    return ed


def evaluate(run_fn, ed: EvalData, *, rtol: float = 1e-2, atol: float = 1e-3,
             batches: int | None = None) -> Evaluation:
    """Evaluate ``run_fn(feeds) -> outputs`` against the FP32 reference held in ``ed`` (on its
    first ``batches`` batches only when given)."""
    # per-rank statistics describe score vectors (classifiers, generic heads), not detections
    cmp = OutputComparer(ed.output_names, rtol=rtol, atol=atol,
                         max_rank=0 if ed.task == "detection" else 10)
    logits_ref, logits_q, dets, sizes, files = [], [], [], [], []
    for b, ref in ed.store.items(batches):
        sizes.extend(m.orig_hw for m in b.metas)
        files.extend(str(p) for p in b.paths)
        outs = run_fn(b.feeds)
        cmp.update(ref, outs)
        if ed.task == "classification":
            logits_ref.append(ref[0].reshape(ref[0].shape[0], -1))
            logits_q.append(outs[0].reshape(outs[0].shape[0], -1))
        elif ed.task == "detection":
            dets.extend(_detections(outs, ed, b))
    task: dict = {"kind": ed.task}
    if ed.task == "classification":
        r, q = np.concatenate(logits_ref), np.concatenate(logits_q)
        agree, total = top1_agreement(r, q)
        task.update(top1_agreement=agree / max(total, 1), agree=agree, total=total)
        if ed.labels is not None:
            task["fp32_accuracy"] = topk_accuracy(r, ed.labels)
            task["int8_accuracy"] = topk_accuracy(q, ed.labels)
    elif ed.task == "detection":
        if ed.annotations:
            fp = coco_map(ed.annotations, ed.ref_detections, image_files=files)
            q8 = coco_map(ed.annotations, dets, image_files=files)
            task.update(kind_map="coco", fp32_map50_95=fp["map50_95"], map50_95=q8["map50_95"],
                        fp32_map50=fp["map50"], map50=q8["map50"],
                        reference_boxes=q8["reference_boxes"], detections=q8["detections"])
        else:
            m = coco_map(ed.ref_detections[:len(sizes)], dets, image_sizes=sizes)
            task.update(kind_map="vs_fp32", map50_95=m["map50_95"], map50=m["map50"],
                        reference_boxes=m["reference_boxes"], detections=m["detections"],
                        note=m.get("note"))
    return Evaluation(cmp.result(), task, len(sizes))

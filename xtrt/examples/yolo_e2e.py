"""Turn nudenet's YOLOv8n (``nudenet/320n.onnx``) into an end-to-end detector ending in
``EfficientNMS_TRT``: the shape of a yolov5s_trt8 / Ultralytics ``nms=True`` TensorRT export.

    pip install --no-deps nudenet==3.4.2
    python -m xtrt.examples.yolo_e2e --out build/yolov8n_e2e.onnx [--size 320]

The model is AGPL-3.0 (its own metadata says so): build it at run time, never commit it.

Graph added after ``output0`` [N, 22, A] (cx, cy, w, h in pixels + 18 sigmoid class scores)::

    Transpose(0,2,1) -> [N, A, 22] -> Slice[0:4] boxes [N, A, 4], Slice[4:] scores [N, A, 18]
    EfficientNMS_TRT(box_coding=1, score_activation=0, iou 0.45, score 0.25, 100 boxes)
      -> num_dets [N,1] int32, det_boxes [N,100,4], det_scores [N,100], det_classes [N,100] int32
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
from pathlib import Path
from typing import Sequence

from xtrt.errors import ModelError, OutputError, XtrtError

__all__ = ["locate_nudenet_model", "build_yolo_e2e", "main"]

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("num_dets", "det_boxes", "det_scores", "det_classes")


def locate_nudenet_model() -> Path:
    """Path of nudenet's ``320n.onnx`` (found without importing nudenet, which needs OpenCV)."""
    spec = importlib.util.find_spec("nudenet")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        path = Path(loc) / "320n.onnx"
        if path.is_file():
            return path
    raise XtrtError("nudenet's YOLOv8n model (nudenet/320n.onnx) is not installed",
                    "pip install --no-deps nudenet==3.4.2")


def build_yolo_e2e(src: Path, out: Path, *, iou: float = 0.45, score: float = 0.25, max_det: int = 100,
                   size: int | None = None) -> Path:
    """Append an ``EfficientNMS_TRT`` tail to nudenet's YOLOv8n and save it atomically.

    Args:
        src: nudenet's ``320n.onnx`` (input ``images`` [N,3,H,W], output ``output0`` [N, 4+C, A]).
        out: where to write the end-to-end model.
        iou, score, max_det: EfficientNMS ``iou_threshold``, ``score_threshold``, ``max_output_boxes``.
        size: fix H = W = size (a multiple of 32); None keeps the source's dynamic batch/H/W.

    Returns:
        ``out``.
    """
    import onnx
    from onnx import TensorProto, helper

    src, out = Path(src), Path(out)
    try:
        model = onnx.load(str(src))
    except Exception as exc:
        raise ModelError(f"cannot read '{src}': {exc}", "pip install --force-reinstall --no-deps nudenet==3.4.2") from exc
    graph = model.graph
    if [i.name for i in graph.input] != ["images"] or [o.name for o in graph.output] != ["output0"]:
        raise ModelError(f"'{src}' is not nudenet's YOLOv8n (expected input 'images', output 'output0')",
                         "pass nudenet/320n.onnx (xtrt.examples.yolo_e2e.locate_nudenet_model())")
    in_dims = graph.input[0].type.tensor_type.shape.dim
    out_dims = graph.output[0].type.tensor_type.shape.dim
    if len(out_dims) != 3 or not out_dims[1].HasField("dim_value") or out_dims[1].dim_value <= 4:
        raise ModelError(f"'{src}': output0 must be [N, 4+classes, anchors]", "use nudenet/320n.onnx")
    num_classes = out_dims[1].dim_value - 4
    batch = _dim(in_dims[0])
    anchors: int | str | None = _dim(out_dims[2])
    if size is not None:
        if size <= 0 or size % 32:
            raise XtrtError(f"--size {size} is not a positive multiple of 32", "use e.g. --size 320 or 640")
        for d in (in_dims[2], in_dims[3]):
            d.Clear()
            d.dim_value = size
        anchors = sum((size // s) ** 2 for s in (8, 16, 32))

    big = 2 ** 62
    graph.initializer.extend([
        helper.make_tensor("e2e_axes", TensorProto.INT64, [1], [2]),
        helper.make_tensor("e2e_box_start", TensorProto.INT64, [1], [0]),
        helper.make_tensor("e2e_box_end", TensorProto.INT64, [1], [4]),
        helper.make_tensor("e2e_cls_end", TensorProto.INT64, [1], [big]),
    ])
    graph.node.extend([
        helper.make_node("Transpose", ["output0"], ["e2e_pred"], name="e2e_transpose", perm=[0, 2, 1]),
        helper.make_node("Slice", ["e2e_pred", "e2e_box_start", "e2e_box_end", "e2e_axes"], ["e2e_boxes"],
                         name="e2e_slice_boxes"),
        helper.make_node("Slice", ["e2e_pred", "e2e_box_end", "e2e_cls_end", "e2e_axes"], ["e2e_scores"],
                         name="e2e_slice_scores"),
        helper.make_node("EfficientNMS_TRT", ["e2e_boxes", "e2e_scores"], list(OUTPUT_NAMES),
                         name="batched_nms", domain="", background_class=-1, box_coding=1,
                         iou_threshold=float(iou), max_output_boxes=int(max_det), plugin_version="1",
                         score_activation=0, score_threshold=float(score), class_agnostic=0),
    ])
    f32, i32 = TensorProto.FLOAT, TensorProto.INT32
    del graph.output[:]
    graph.output.extend([
        helper.make_tensor_value_info("num_dets", i32, [batch, 1]),
        helper.make_tensor_value_info("det_boxes", f32, [batch, max_det, 4]),
        helper.make_tensor_value_info("det_scores", f32, [batch, max_det]),
        helper.make_tensor_value_info("det_classes", i32, [batch, max_det]),
    ])
    graph.value_info.extend([
        helper.make_tensor_value_info("output0", f32, [batch, 4 + num_classes, anchors]),
        helper.make_tensor_value_info("e2e_pred", f32, [batch, anchors, 4 + num_classes]),
        helper.make_tensor_value_info("e2e_boxes", f32, [batch, anchors, 4]),
        helper.make_tensor_value_info("e2e_scores", f32, [batch, anchors, num_classes]),
    ])
    model.producer_name = "xtrt.examples.yolo_e2e"
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                   "xtrt_e2e": f"EfficientNMS_TRT iou={iou} score={score} max_det={max_det}"})
    _save_atomic(model, out)
    log.info("wrote %s (%d classes, EfficientNMS_TRT tail; AGPL-3.0 model: do not commit)", out, num_classes)
    return out


def _dim(d) -> int | str | None:
    return d.dim_value if d.HasField("dim_value") else (d.dim_param or None)


def _save_atomic(model, out: Path) -> None:
    import onnx

    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(tmp))
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write '{out}': {exc.strerror or exc}",
                          "choose a writable --out path") from exc


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m xtrt.examples.yolo_e2e --out PATH [--size N] [--iou 0.45] [--score 0.25] [--max-det 100]``."""
    from xtrt.cli import add_common_args, configure_logging

    parser = argparse.ArgumentParser(prog="python -m xtrt.examples.yolo_e2e",
                                     description="Build nudenet's YOLOv8n with an EfficientNMS_TRT tail.")
    parser.add_argument("--out", required=True, type=Path, help="output .onnx path (never commit it: AGPL)")
    parser.add_argument("--size", type=int, default=None,
                        help="fix input H=W to this multiple of 32 (default: keep dynamic batch/H/W)")
    parser.add_argument("--iou", type=float, default=0.45, help="IoU threshold (default 0.45)")
    parser.add_argument("--score", type=float, default=0.25, help="score threshold (default 0.25)")
    parser.add_argument("--max-det", type=int, default=100, help="max_output_boxes (default 100)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    path = build_yolo_e2e(locate_nudenet_model(), args.out, iou=args.iou, score=args.score,
                          max_det=args.max_det, size=args.size)
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    from xtrt.cli import run_main

    sys.exit(run_main(main))

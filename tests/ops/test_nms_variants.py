"""EfficientNMS_ONNX_TRT, BatchedNMS(Dynamic)_TRT and ONNX NonMaxSuppression handlers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import xtrt.ops
from xtrt.errors import ModelError
from xtrt.runtime.session import make_session

from .nms_reference import ref_batched_nms, ref_efficient_nms
from .test_efficient_nms import random_case

R = xtrt.ops.REGISTRY


def fwd(op, inputs, attrs):
    return [o.numpy() for o in R.get(op).forward([torch.from_numpy(np.asarray(i)) for i in inputs], attrs)]


@pytest.mark.parametrize("center", [0, 1])
def test_efficient_nms_onnx_indices(center):
    boxes, scores = random_case(20, n=3, a=80, c=4, coding=center)
    k = 15
    (sel,) = fwd("EfficientNMS_ONNX_TRT", [boxes, scores],
                 {"score_threshold": 0.3, "iou_threshold": 0.5, "max_output_boxes_per_class": k,
                  "center_point_box": center})
    num, _, _, cls = ref_efficient_nms(boxes, scores, score_threshold=0.3, iou_threshold=0.5,
                                       max_output_boxes=k, box_coding=center)
    assert sel.shape == (3 * k, 3) and sel.dtype == np.int32
    m = int(num.sum())
    np.testing.assert_array_equal(sel[:m, 0], np.repeat(np.arange(3), num[:, 0]))
    np.testing.assert_array_equal(sel[:m, 1], np.concatenate([cls[i, :num[i, 0]] for i in range(3)]))
    assert (sel[m:] == sel[m - 1]).all()  # TensorRT pads with the last valid row
    (empty,) = fwd("EfficientNMS_ONNX_TRT", [boxes, scores * 0], {"score_threshold": 0.3,
                                                                   "max_output_boxes_per_class": k})
    assert (empty == -1).all()


def onnx_nms(boxes, scores, max_out, iou, score, center):
    inits = [helper.make_tensor("m", TensorProto.INT64, [1], [max_out]),
             helper.make_tensor("i", TensorProto.FLOAT, [1], [iou])]
    names = ["boxes", "scores", "m", "i"]
    if score is not None:
        inits.append(helper.make_tensor("s", TensorProto.FLOAT, [1], [score]))
        names.append("s")
    node = helper.make_node("NonMaxSuppression", names, ["sel"], center_point_box=center)
    graph = helper.make_graph([node], "nms", [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, None),
                                              helper.make_tensor_value_info("scores", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("sel", TensorProto.INT64, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    ort_out = make_session(model).run(None, {"boxes": boxes, "scores": scores})[0]
    consts = [np.array([max_out], np.int64), np.array([iou], np.float32)]
    if score is not None:
        consts.append(np.array([score], np.float32))
    attrs = xtrt.ops.node_attrs(node)
    (ours,) = fwd("NonMaxSuppression", [boxes, scores, *consts], attrs)
    return ours, ort_out


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("score", [0.4, None])
def test_onnx_nonmaxsuppression_matches_onnxruntime(center, score):
    boxes, scores = random_case(21, n=3, a=120, c=4, coding=center)
    ours, ref = onnx_nms(boxes, np.ascontiguousarray(scores.transpose(0, 2, 1)), 12, 0.4, score, center)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, ref)


def test_onnx_nonmaxsuppression_zero_boxes_per_class():
    boxes, scores = random_case(22, n=1, a=10, c=2)
    ours, ref = onnx_nms(boxes, np.ascontiguousarray(scores.transpose(0, 2, 1)), 0, 0.5, 0.1, 0)
    assert ours.shape == ref.shape == (0, 3)


@pytest.mark.parametrize("op", ["BatchedNMS_TRT", "BatchedNMSDynamic_TRT"])
@pytest.mark.parametrize("normalized", [1, 0])
def test_batched_nms_matches_reference(op, normalized):
    boxes, scores = random_case(23, n=3, a=100, c=4, spread=1.0 if normalized else 100.0)
    if normalized:
        boxes = boxes / 30  # sizes become ~0.2..1 in [0, 1.x]: clipping matters
    boxes = boxes[:, :, None, :]
    attrs = {"shareLocation": 1, "backgroundLabelId": 0, "numClasses": 4, "topK": 50, "keepTopK": 30,
             "scoreThreshold": 0.3, "iouThreshold": 0.45, "isNormalized": normalized, "clipBoxes": normalized}
    got = fwd(op, [boxes, scores], attrs)
    want = ref_batched_nms(boxes, scores, **{k: v for k, v in attrs.items() if k != "numClasses"})
    assert [g.dtype for g in got] == [np.int32, np.float32, np.float32, np.float32]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)
    assert (got[3][got[2] == 0] == -1).all()


def test_batched_nms_per_class_boxes():
    rng = np.random.default_rng(24)
    xy = rng.uniform(0, 0.8, (2, 60, 3, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.05, 0.3, (2, 60, 3, 2))], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (2, 60, 3)).astype(np.float32)
    attrs = {"shareLocation": 0, "numClasses": 3, "topK": 40, "keepTopK": 25, "scoreThreshold": 0.2,
             "iouThreshold": 0.5}
    got = fwd("BatchedNMS_TRT", [boxes, scores], attrs)
    want = ref_batched_nms(boxes, scores, topK=40, keepTopK=25, scoreThreshold=0.2, iouThreshold=0.5,
                           shareLocation=0)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_batched_nms_keep_top_k_above_top_k_is_an_error():
    boxes, scores = random_case(25, n=1, a=10, c=2)
    with pytest.raises(ModelError, match=r"keepTopK \(20\) > topK \(10\)"):
        fwd("BatchedNMS_TRT", [boxes[:, :, None], scores], {"topK": 10, "keepTopK": 20, "numClasses": 2})


def test_infer_shapes():
    assert R.get("BatchedNMSDynamic_TRT").infer([["N", 100, 1, 4], ["N", 100, 4]], [1, 1], {"keepTopK": 20}) == [
        (["N", 1], TensorProto.INT32), (["N", 20, 4], 1), (["N", 20], 1), (["N", 20], 1)]
    assert R.get("EfficientNMS_ONNX_TRT").infer([[2, 10, 4], [2, 10, 3]], [1, 1],
                                                {"max_output_boxes_per_class": 5}) == [([10, 3], 6)]
    assert R.get("NonMaxSuppression").infer([["N", "A", 4], ["N", 3, "A"]], [1, 1], {}) == [([None, 3], 7)]

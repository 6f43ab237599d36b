"""EfficientNMS_TRT handler against the plain-numpy reference in nms_reference.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import xtrt.ops
from xtrt.ops import _nms_core

from .nms_reference import ref_efficient_nms

HANDLER = xtrt.ops.REGISTRY.get("EfficientNMS_TRT")


def run_handler(boxes, scores, anchors=None, device="cpu", **attrs):
    ins = [torch.from_numpy(np.asarray(boxes)).to(device), torch.from_numpy(np.asarray(scores)).to(device)]
    if anchors is not None:
        ins.append(torch.from_numpy(np.asarray(anchors)).to(device))
    outs = HANDLER.forward(ins, attrs)
    assert all(o.device.type == torch.device(device).type for o in outs)
    return [o.cpu().numpy() for o in outs]


def check(boxes, scores, anchors=None, device="cpu", **attrs):
    got = run_handler(boxes, scores, anchors, device, **attrs)
    want = ref_efficient_nms(boxes, scores, anchors, **attrs)
    assert [g.dtype for g in got] == [np.int32, np.asarray(boxes).dtype, np.asarray(boxes).dtype, np.int32]
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[3], want[3])
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(got[2], want[2], rtol=1e-6, atol=1e-6)
    return got


def random_case(seed, n=3, a=150, c=5, spread=100.0, coding=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, spread, (n, a, 2))
    wh = rng.uniform(5, 30, (n, a, 2))
    boxes = np.concatenate([xy, xy + wh], -1) if coding == 0 else np.concatenate([xy + wh / 2, wh], -1)
    return boxes.astype(np.float32), rng.uniform(0, 1, (n, a, c)).astype(np.float32)


@pytest.mark.parametrize("coding", [0, 1])
@pytest.mark.parametrize("agnostic", [0, 1])
@pytest.mark.parametrize("background", [-1, 0])
def test_random_batch3(coding, agnostic, background):
    boxes, scores = random_case(7 + coding + 2 * agnostic, coding=coding)
    num, *_ = check(boxes, scores, score_threshold=0.3, iou_threshold=0.45, max_output_boxes=60,
                    background_class=background, class_agnostic=agnostic, box_coding=coding)
    assert num.shape == (3, 1) and (num > 0).all()


def test_ties_identical_boxes_and_scores():
    rng = np.random.default_rng(1)
    base = np.array([[10, 10, 40, 40], [12, 11, 41, 39], [60, 60, 90, 95], [0, 0, 5, 5]], np.float32)
    boxes = np.repeat(base[None], 3, 0).repeat(5, 1)  # each box 5 times
    scores = rng.choice(np.array([0.5, 0.7, 0.9], np.float32), (3, 20, 3))
    for agnostic in (0, 1):
        check(boxes, scores, score_threshold=0.5, iou_threshold=0.5, max_output_boxes=30, class_agnostic=agnostic)


def test_iou_equal_to_threshold_suppresses():
    boxes = np.array([[[0, 0, 3, 1], [1, 0, 4, 1]]], np.float32)  # IoU exactly 0.5
    scores = np.array([[[0.9], [0.8]]], np.float32)
    num, *_ = check(boxes, scores, score_threshold=0.1, iou_threshold=0.5, max_output_boxes=10)
    assert num[0, 0] == 1
    num, *_ = check(boxes, scores, score_threshold=0.1, iou_threshold=0.51, max_output_boxes=10)
    assert num[0, 0] == 2


def test_all_below_threshold_gives_zeros():
    boxes, scores = random_case(3)
    num, b, s, c = check(boxes, scores * 0.2, score_threshold=0.25, max_output_boxes=20)
    assert (num == 0).all() and not b.any() and not s.any() and not c.any()


def test_more_candidates_than_max_output_boxes():
    g = np.arange(20, dtype=np.float32) * 10
    x, y = np.meshgrid(g, g)
    boxes = np.stack([x, y, x + 5, y + 5], -1).reshape(1, 400, 4).repeat(3, 0)
    scores = np.random.default_rng(2).uniform(0.3, 1, (3, 400, 2)).astype(np.float32)
    num, _, s, _ = check(boxes, scores, score_threshold=0.25, iou_threshold=0.5, max_output_boxes=7)
    assert (num == 7).all()
    assert (np.diff(s, axis=1) <= 0).all()
    np.testing.assert_allclose(s[:, 0], scores.reshape(3, -1).max(1))


def test_only_best_4096_candidates_enter_nms():
    boxes = np.zeros((1, 4100, 4), np.float32)
    boxes[0, :, 2:] = 10
    boxes[0, 4096:] = [[100, 100, 110, 110], [200, 200, 210, 210], [300, 300, 310, 310], [0, 50, 5, 60]]
    scores = np.full((1, 4100, 1), 0.9, np.float32)
    scores[0, 4096:] = 0.5
    num, *_ = check(boxes, scores, score_threshold=0.1, iou_threshold=0.5, max_output_boxes=10)
    assert num[0, 0] == 1


def test_flipped_corners_are_output_as_given():
    boxes = np.array([[[40, 40, 10, 10], [12, 12, 42, 42], [80, 10, 60, 30]]], np.float32)
    scores = np.array([[[0.9], [0.8], [0.7]]], np.float32)
    num, b, _, _ = check(boxes, scores, score_threshold=0.1, iou_threshold=0.5, max_output_boxes=5)
    assert num[0, 0] == 2
    np.testing.assert_array_equal(b[0, 0], boxes[0, 0])


@pytest.mark.parametrize("coding", [0, 1])
def test_anchor_decoder(coding):
    rng = np.random.default_rng(5)
    anchors, _ = random_case(4, n=1, a=80, c=1, coding=coding)
    deltas = rng.normal(0, 0.2, (2, 80, 4)).astype(np.float32) * (5 if coding == 0 else 1)
    scores = rng.uniform(0, 1, (2, 80, 4)).astype(np.float32)
    check(deltas, scores, anchors, score_threshold=0.4, iou_threshold=0.5, max_output_boxes=50, box_coding=coding)


def test_per_class_boxes_and_score_activation():
    rng = np.random.default_rng(6)
    xy = rng.uniform(0, 50, (3, 60, 3, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (3, 60, 3, 2))], -1).astype(np.float32)
    logits = rng.normal(0, 2, (3, 60, 3)).astype(np.float32)
    num, _, s, _ = check(boxes, logits, score_threshold=0.6, iou_threshold=0.4, max_output_boxes=40,
                         score_activation=1)
    assert ((s > 0) == (np.arange(40)[None] < num)).all() and (s[s > 0] >= 0.6).all()


def test_float16_inputs_keep_their_dtype():
    boxes, scores = random_case(8, n=1, a=40, c=2)
    got = run_handler(boxes.astype(np.float16), scores.astype(np.float16), score_threshold=0.5,
                      max_output_boxes=10)
    assert got[1].dtype == np.float16 and got[2].dtype == np.float16 and got[0].dtype == np.int32


def test_ppq_style_call_and_infer():
    boxes, scores = random_case(9, n=2)
    outs = HANDLER.forward([torch.from_numpy(boxes), torch.from_numpy(scores)], {"max_output_boxes": 5})
    assert [tuple(o.shape) for o in outs] == [(2, 1), (2, 5, 4), (2, 5), (2, 5)]
    shapes = HANDLER.infer([["N", "A", 4], ["N", "A", 18]], [1, 1], {"max_output_boxes": 100})
    assert shapes == [(["N", 1], 6), (["N", 100, 4], 1), (["N", 100], 1), (["N", 100], 6)]


def test_torchvision_path_glue(monkeypatch):
    """The torchvision branch, driven by a stand-in with torchvision's documented semantics."""
    def fake_batched_nms(boxes, scores, idxs, thr):
        order = torch.sort(scores, descending=True, stable=True).indices.tolist()
        keep = []
        for i in order:
            if all(idxs[i] != idxs[j] or
                   _nms_core.iou_one_to_many(boxes[j:j + 1], boxes[i:i + 1].unsqueeze(0))[0, 0] <= thr
                   for j in keep):
                keep.append(i)
        return torch.tensor(keep, dtype=torch.int64)

    monkeypatch.setitem(_nms_core._TV_STATE, "fn", fake_batched_nms)
    boxes, scores = random_case(10, n=2, a=60, c=3)
    check(boxes, scores, score_threshold=0.3, iou_threshold=0.5, max_output_boxes=20)
    check(boxes, scores, score_threshold=0.3, iou_threshold=0.5, max_output_boxes=20, class_agnostic=1)
    tie = np.array([[[0, 0, 3, 1], [1, 0, 4, 1]]], np.float32)
    assert check(tie, np.array([[[0.9], [0.8]]], np.float32), score_threshold=0.1, iou_threshold=0.5,
                 max_output_boxes=5)[0][0, 0] == 1


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("coding", [0, 1])
def test_cuda_matches_reference(coding):
    boxes, scores = random_case(11, coding=coding)
    check(boxes, scores, device="cuda", score_threshold=0.3, iou_threshold=0.45, max_output_boxes=60,
          box_coding=coding)
    check(boxes, scores, device="cuda", score_threshold=0.3, iou_threshold=0.45, max_output_boxes=60,
          box_coding=coding, class_agnostic=1, background_class=1)


def test_score_equal_to_threshold_is_kept():
    """TensorRT keeps a candidate whose score equals score_threshold (``>=``), in float32 as the
    plugin compares: 0.25 is exact in float32, so the tie is real."""
    boxes = np.array([[[0, 0, 1, 1], [5, 5, 6, 6], [9, 9, 10, 10]]], np.float32)
    scores = np.array([[[0.25], [0.2499999], [0.9]]], np.float32)
    num, b, s, _ = run_handler(boxes, scores, score_threshold=0.25, iou_threshold=0.5,
                               max_output_boxes=10, background_class=-1, box_coding=0,
                               score_activation=0, class_agnostic=0)
    assert num[0, 0] == 2
    np.testing.assert_array_equal(s[0, :2], np.float32([0.9, 0.25]))
    np.testing.assert_array_equal(b[0, 1], boxes[0, 0])

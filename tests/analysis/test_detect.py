"""COCO mAP with pycocotools on hand-made annotations whose answers follow from the IoU thresholds.

All boxes are 100x100. A detection shifted by 16 px along x overlaps its box by 84x100, so
IoU = 84*100 / (116*100) = 0.724: matched at thresholds 0.50 ... 0.70 (5 of 10), missed at
0.75 ... 0.95. With one detection per box and no false positives, AP is 1 at the matched
thresholds and 0 at the others: mAP50 = 1.0 and mAP50-95 = 0.5.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from xtrt.analysis.detect import coco_map, letterbox_unmap
from xtrt.errors import DataError

BOXES = {  # image file -> (x1, y1, x2, y2, class index)
    "a.jpg": [(10, 10, 110, 110, 0), (200, 50, 300, 150, 1)],
    "b.jpg": [(50, 60, 150, 160, 1)],
}


def _dets(shift: float = 0.0, files=("a.jpg", "b.jpg")):
    out = []
    for f in files:
        b = np.array([r[:4] for r in BOXES[f]], dtype=np.float32) + np.array([shift, 0, shift, 0], np.float32)
        out.append({"boxes": b, "scores": np.full(len(b), 0.9, np.float32),
                    "classes": np.array([r[4] for r in BOXES[f]], dtype=np.int64)})
    return out


@pytest.fixture()
def coco_file(tmp_path):
    """Category ids 1 and 3 (not contiguous); an extra annotated image that is not evaluated."""
    images = [{"id": 11, "file_name": "a.jpg", "width": 400, "height": 300},
              {"id": 12, "file_name": "val/b.jpg", "width": 400, "height": 300},
              {"id": 13, "file_name": "unused.jpg", "width": 400, "height": 300}]
    cat_of = {0: 1, 1: 3}
    anns = []
    for img_id, f in ((11, "a.jpg"), (12, "b.jpg")):
        for x1, y1, x2, y2, c in BOXES[f]:
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat_of[c],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    anns.append({"id": 99, "image_id": 13, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 2500, "iscrowd": 0})
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}))
    return path


def test_coco_file_perfect_and_shifted(coco_file, capsys):
    files = ["/photos/a.jpg", "/photos/b.jpg"]  # matched by base name; val/b.jpg too
    perfect = coco_map(coco_file, _dets(), image_files=files)
    assert perfect["kind"] == "coco"
    assert perfect["map50_95"] == pytest.approx(1.0) and perfect["map50"] == pytest.approx(1.0)
    assert perfect["reference_boxes"] == 3 and perfect["detections"] == 3 and perfect["images"] == 2
    shifted = coco_map(coco_file, _dets(shift=16), image_ids=[11, 12])
    assert shifted["map50"] == pytest.approx(1.0)
    assert shifted["map50_95"] == pytest.approx(0.5)
    assert shifted["per_class"] == {0: pytest.approx(0.5), 1: pytest.approx(0.5)}
    assert capsys.readouterr().out == ""  # pycocotools' prints are swallowed


def test_coco_file_errors(coco_file):
    with pytest.raises(DataError, match=r"image /x/c\.jpg is not in .*instances_val\.json"):
        coco_map(coco_file, _dets(files=("a.jpg",)), image_files=["/x/c.jpg"])
    with pytest.raises(DataError, match=r"cannot tell which images"):
        coco_map(coco_file, _dets())
    with pytest.raises(DataError, match=r"class index 1 has no category id"):
        coco_map(coco_file, _dets(), image_ids=[11, 12], category_ids=[1])
    with pytest.raises(DataError, match=r"cannot read COCO annotation file"):
        coco_map(coco_file.parent / "missing.json", _dets(), image_ids=[11, 12])


def test_vs_fp32_in_memory():
    ref = _dets()
    perfect = coco_map(ref, _dets())
    assert perfect["kind"] == "vs_fp32"
    assert perfect["map50_95"] == pytest.approx(1.0) and perfect["map50"] == pytest.approx(1.0)
    assert perfect["reference_boxes"] == 3
    ref_scores_ignored = [dict(d, scores=np.full(len(d["boxes"]), 0.01)) for d in ref]
    shifted = coco_map(ref_scores_ignored, _dets(shift=16), image_sizes=[(300, 400), (300, 400)])
    assert shifted["map50"] == pytest.approx(1.0) and shifted["map50_95"] == pytest.approx(0.5)


def test_false_positive_ranked_first_halves_ap():
    # one reference box; a false positive scored above the true positive: precision 1/2 at recall 1
    ref = [{"boxes": np.array([[0, 0, 100, 100]]), "scores": np.ones(1), "classes": np.array([0])}]
    dets = [{"boxes": np.array([[300, 300, 400, 400], [0, 0, 100, 100]]), "scores": np.array([0.9, 0.8]),
             "classes": np.array([0, 0])}]
    res = coco_map(ref, dets)
    assert res["map50"] == pytest.approx(0.5) and res["map50_95"] == pytest.approx(0.5)


def test_zero_reference_boxes_and_zero_detections():
    empty = [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "classes": np.zeros(0, np.int64)}]
    res = coco_map(empty, _dets(files=("b.jpg",)))
    assert res["map50_95"] is None and res["map50"] is None
    assert res["reference_boxes"] == 0 and "no reference boxes" in res["note"]
    res = coco_map(_dets(files=("b.jpg",)), empty)
    assert res["map50_95"] == 0.0 and res["map50"] == 0.0 and res["detections"] == 0


def test_mismatched_lengths():
    with pytest.raises(DataError, match=r"2 FP32 detection entries but 1 quantized"):
        coco_map(_dets(), _dets(files=("a.jpg",)))


def test_letterbox_unmap():
    # 100x200 (h x w) image letterboxed into 320x320: scale 1.6, resized 160x320, pad top 80
    orig = np.array([[20, 10, 120, 60], [0, 0, 200, 100]], dtype=np.float32)
    scale, pad = 1.6, (0.0, 80.0)
    net = orig * scale + np.array([pad[0], pad[1], pad[0], pad[1]])
    back = letterbox_unmap(net, scale, pad, (100, 200))
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, orig, atol=1e-4)
    outside = letterbox_unmap(np.array([[-10, 60, 400, 300]]), scale, pad, (100, 200))
    np.testing.assert_allclose(outside, [[0, 0, 200, 100]])

"""The nudenet YOLOv8n + EfficientNMS_TRT example (model installed at test time, never committed)."""
from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest

from xtrt.errors import XtrtError
from xtrt.examples import yolo_e2e
from xtrt.model.split import split_model
from xtrt.runtime.split import SplitRunner

SIZE = 320


def test_missing_nudenet_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(XtrtError) as ei:
        yolo_e2e.locate_nudenet_model()
    assert "nudenet/320n.onnx" in str(ei.value) and "pip install --no-deps nudenet==3.4.2" in str(ei.value)


def letterbox(img: np.ndarray, size: int = SIZE) -> np.ndarray:
    """RGB uint8 HxWx3 -> [3, size, size] float 0..1, aspect kept, grey (114) padding."""
    from PIL import Image

    h, w = img.shape[:2]
    k = size / max(h, w)
    nh, nw = round(h * k), round(w * k)
    resized = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    out = np.full((size, size, 3), 114, np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top:top + nh, left:left + nw] = resized
    return out.transpose(2, 0, 1).astype(np.float32) / 255.0


@pytest.fixture(scope="module")
def e2e_model(tmp_path_factory):
    try:
        src = yolo_e2e.locate_nudenet_model()
    except XtrtError:
        pytest.skip("nudenet not installed (pip install --no-deps nudenet==3.4.2)")
    return yolo_e2e.build_yolo_e2e(src, tmp_path_factory.mktemp("e2e") / "yolov8n_e2e.onnx")


@pytest.mark.slow
def test_e2e_model_structure(e2e_model):
    model = onnx.load(str(e2e_model))
    outs = model.graph.output
    assert [o.name for o in outs] == ["num_dets", "det_boxes", "det_scores", "det_classes"]
    assert [o.type.tensor_type.elem_type for o in outs] == [6, 1, 1, 6]
    dims = [[d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in outs]
    assert dims == [["batch", 1], ["batch", 100, 4], ["batch", 100], ["batch", 100]]
    assert [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim] == ["batch", "", "height", "width"]
    (nms,) = [n for n in model.graph.node if n.op_type == "EfficientNMS_TRT"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nms.attribute}
    assert nms.domain == "" and attrs["box_coding"] == 1 and attrs["max_output_boxes"] == 100
    assert attrs["iou_threshold"] == pytest.approx(0.45) and attrs["score_threshold"] == pytest.approx(0.25)
    assert attrs["plugin_version"] == b"1" and attrs["background_class"] == -1
    onnx.checker.check_model(split_model(model).body, full_check=True)
    assert not list(e2e_model.parent.glob(".*tmp*"))


@pytest.mark.slow
def test_e2e_detects_on_real_photos(e2e_model):
    import skimage.data

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
    batch = np.stack([letterbox(p) for p in photos])
    runner = SplitRunner(e2e_model)
    num, boxes, scores, classes = runner.run({"images": batch})
    assert (num.dtype, boxes.dtype, scores.dtype, classes.dtype) == (np.int32, np.float32, np.float32, np.int32)
    assert num.shape == (3, 1) and boxes.shape == (3, 100, 4)
    assert num.max() > 0
    for i in range(3):
        n = int(num[i, 0])
        b, s, c = boxes[i, :n], scores[i, :n], classes[i, :n]
        assert (b[:, 0] < b[:, 2]).all() and (b[:, 1] < b[:, 3]).all()
        assert (b >= -2).all() and (b <= SIZE + 2).all()
        assert ((c >= 0) & (c <= 17)).all()
        assert (s >= 0.25).all() and (np.diff(s) <= 0).all()
        assert not boxes[i, n:].any() and not scores[i, n:].any() and not classes[i, n:].any()
    # batch of one gives the same answer as the batch of three
    one = runner.run({"images": batch[:1]})
    np.testing.assert_allclose(one[1][0], boxes[0], atol=1e-3)


@pytest.mark.slow
def test_main_prints_the_path(tmp_path, capsys):
    out = tmp_path / "sub" / "e2e.onnx"
    try:
        yolo_e2e.locate_nudenet_model()
    except XtrtError:
        pytest.skip("nudenet not installed")
    assert yolo_e2e.main(["--out", str(out), "--size", "320", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    model = onnx.load(str(out))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[2:]] == [320, 320]
    vi = {v.name: v for v in model.graph.value_info}
    assert [d.dim_value for d in vi["e2e_scores"].type.tensor_type.shape.dim[1:]] == [2100, 18]
    from xtrt.cli import run_main

    assert run_main(yolo_e2e.main, ["--out", str(tmp_path / "bad.onnx"), "--size", "100"]) == 1
    assert capsys.readouterr().err.strip() == ("error: --size 100 is not a positive multiple of 32 "
                                               "(fix: use e.g. --size 320 or 640)")
    assert not (tmp_path / "bad.onnx").exists()

"""The bundled example configs (data/*.yaml) are judged on enough held-out images: the YOLOv8n
example's FP32 reference has at least 30 boxes on its held-out photos, the EfficientNet-Lite0
example holds out at least 30 photos.  Photos: ``xtrt.examples.photos`` (as the README does)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xtrt.config import load_config

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2] / "data"
MIN_HELD_OUT, MIN_REFERENCE_BOXES = 30, 30


def _split(config: Path, photos: Path, tmp: Path):
    """(config, calibration files, the held-out files the report's figures are judged on)."""
    from tests.conftest import make_classifier
    from xtrt.quant.job import QuantJob

    # the split does not depend on the model: a stand-in, since the example's .onnx is built by
    # a README step that a test run need not have taken
    stand_in = make_classifier(tmp / "stand_in.onnx")
    cfg = load_config(config, [f"calibration.data={photos}", f"output_dir={tmp / 'out'}",
                               f"model={stand_in}"])
    job = QuantJob.from_config(cfg, progress=False)
    job.release()
    assert not job.judged_on_calibration
    return cfg, job.calibration_files, job.heldout_files


@pytest.fixture(scope="module")
def readme_photos(photos):
    if len(list(photos.iterdir())) < MIN_HELD_OUT + 12:
        pytest.skip("opencv-doc's photos are not available (python -m xtrt.examples.photos --download)")
    return photos


def test_effnet_example_holds_out_30_photos(readme_photos, tmp_path):
    cfg, cal, held = _split(DATA / "effnet_lite0.yaml", readme_photos, tmp_path)
    assert not set(cal) & set(held)
    assert len(held) >= MIN_HELD_OUT, len(held)


def test_yolo_example_reference_has_30_boxes(readme_photos, tmp_path):
    from xtrt.data.images import decode_image
    from xtrt.data.preprocess import build_preprocess
    from xtrt.errors import XtrtError
    from xtrt.examples.yolo_e2e import build_yolo_e2e, locate_nudenet_model
    from xtrt.runtime.split import SplitRunner

    try:
        src = locate_nudenet_model()
    except XtrtError:
        pytest.skip("nudenet is not installed (pip install --no-deps nudenet==3.4.2)")
    cfg, cal, held = _split(DATA / "yolov8n_e2e.yaml", readme_photos, tmp_path)
    assert len(held) >= MIN_HELD_OUT and not set(cal) & set(held)
    # the README builds the model with --score 0.05, the config's reference threshold
    model = build_yolo_e2e(src, tmp_path / "e2e.onnx", score=cfg.evaluation.conf_threshold)
    runner = SplitRunner(model)
    pre = build_preprocess(cfg.preprocess, tuple(cfg.input.shape[2:]))
    boxes = 0
    for f in held:
        x = pre(decode_image(f))[0]
        num, _, scores, _ = runner.run({"images": x[None]})
        boxes += int(np.sum(scores[0, :int(num[0, 0])] >= cfg.evaluation.conf_threshold))
    assert boxes >= MIN_REFERENCE_BOXES, f"{boxes} reference boxes on {len(held)} held-out photos"

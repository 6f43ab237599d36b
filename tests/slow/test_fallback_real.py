"""Analysis and fallback on real models and photos: the report ranks layers, the fallback either
meets its target or says why not, and report.json agrees with a re-evaluation of quantized.onnx."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slow

CAL_STEPS, CAL_BATCH, EVAL_COUNT = 6, 2, 8


def _quantize(tmp: Path, model: Path, photos: Path, shape, preprocess: dict, target: dict) -> dict:
    from xtrt.quant.__main__ import main

    cfg = {"model": str(model), "output_dir": str(tmp / "out"), "input": {"shape": shape},
           "preprocess": preprocess,
           "calibration": {"data": str(photos), "steps": CAL_STEPS, "batch_size": CAL_BATCH,
                           "method": "percentile"},
           # selection_share 0 and an FP32 float part: the fallback's trials are judged on the
           # images, and the export kind, that the report and the re-evaluation use
           "evaluation": {"count": EVAL_COUNT, "batch_size": 2, "selection_share": 0.0},
           "export": {"float_precision": "fp32"},
           "analysis": {"target": target, "max_trials": 3, "layers_per_trial": 2}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(path), "-q"]) == 0
    return json.loads((tmp / "out" / "report.json").read_text())


def _held_out(photos: Path) -> list[Path]:
    from xtrt.data.images import list_files

    n_cal = CAL_STEPS * CAL_BATCH
    files = list_files(photos)
    if len(files) < n_cal + 2:
        pytest.skip(f"only {len(files)} photos")
    return files[n_cal:n_cal + EVAL_COUNT]


def _check_ranking_and_fallback(rep: dict) -> None:
    worst = rep["worst_layers"]
    alone = [r["layerwise_noise_ratio"] for r in worst]
    assert worst and all(a is not None for a in alone)
    assert alone == sorted(alone, reverse=True)
    fb = rep["fallback"]
    assert fb["trials"][0]["n_fp32_layers"] == 0
    if fb["reached"]:
        assert fb["trials"][fb["chosen"]]["passed"]
    else:                                  # says plainly that it cannot, and why
        assert "not met" in fb["reason"] or "no more layers" in fb["reason"]
        assert fb["why"].startswith("best ")
    chosen = fb["trials"][fb["chosen"]]
    assert sorted(rep["placement"]["keep_float"]) >= sorted(chosen["fp32_layers"])


@pytest.fixture(scope="module")
def effnet_run(tmp_path_factory, photos):
    from xtrt.examples.effnet import PREPROCESS, effnet_available, export_effnet_lite0

    if not effnet_available():
        pytest.skip("EfficientNet-Lite0 packages not installed")
    tmp = tmp_path_factory.mktemp("effnet_fallback")
    model = export_effnet_lite0(tmp / "effnet.onnx", dynamo=False, opset=13)
    rep = _quantize(tmp, model, photos, [CAL_BATCH, 3, 224, 224], dict(PREPROCESS),
                    {"metric": "top1", "min_value": 0.98})
    return tmp, model, rep


def test_effnet_fallback_report_matches_reevaluation(effnet_run, photos):
    from xtrt.config import PreprocessConfig
    from xtrt.data.images import decode_image
    from xtrt.data.preprocess import build_preprocess
    from xtrt.examples.effnet import PREPROCESS
    from xtrt.runtime.session import make_session

    tmp, model, rep = effnet_run
    _check_ranking_and_fallback(rep)
    files = _held_out(photos)
    pre = build_preprocess(PreprocessConfig(**PREPROCESS))
    x = np.stack([pre(decode_image(f))[0] for f in files]).astype(np.float32)
    fp32, int8 = make_session(model), make_session(tmp / "out" / "quantized.onnx")
    name = fp32.get_inputs()[0].name
    a = fp32.run(None, {name: x})[0].argmax(1)
    b = int8.run(None, {name: x})[0].argmax(1)
    assert rep["task"]["total"] == len(files)
    assert rep["task"]["agree"] == int((a == b).sum())
    chosen = rep["fallback"]["trials"][rep["fallback"]["chosen"]]
    assert chosen["metric"] == pytest.approx(rep["task"]["top1_agreement"])


@pytest.fixture(scope="module")
def yolo_run(tmp_path_factory, photos):
    from xtrt.errors import XtrtError
    from xtrt.examples import yolo_e2e

    try:
        src = yolo_e2e.locate_nudenet_model()
    except XtrtError:
        pytest.skip("nudenet not installed (pip install --no-deps nudenet==3.4.2)")
    tmp = tmp_path_factory.mktemp("yolo_fallback")
    model = yolo_e2e.build_yolo_e2e(src, tmp / "yolov8n_e2e.onnx")
    rep = _quantize(tmp, model, photos, [CAL_BATCH, 3, 320, 320],
                    {"preset": "letterbox", "size": [320, 320]},
                    {"metric": "map50_95", "min_value": 0.9})
    return tmp, model, rep


def test_yolo_e2e_fallback_report_matches_reevaluation(yolo_run, photos):
    """mAP50-95 vs FP32 of the written quantized.onnx (plugin tail run by the split runner) on
    the held-out photos equals what report.json says."""
    from xtrt.config import PreprocessConfig
    from xtrt.data.preprocess import build_preprocess
    from xtrt.data.source import BatchSource
    from xtrt.model.load import load_model
    from xtrt.quant.verify import evaluate, metric_value, prepare_eval
    from xtrt.runtime.split import SplitRunner

    tmp, model, rep = yolo_run
    _check_ranking_and_fallback(rep)
    pre = build_preprocess(PreprocessConfig(preset="letterbox", size=[320, 320]), (320, 320))
    batches = list(BatchSource(_held_out(photos), "images", (3, 320, 320), pre, 2))
    ed = prepare_eval(SplitRunner(load_model(model)), batches, "detection", "e2e")
    ev = evaluate(SplitRunner(load_model(tmp / "out" / "quantized.onnx")).run, ed)
    assert ev.task["reference_boxes"] == rep["task"]["reference_boxes"]
    assert metric_value(ev, "map50_95") == pytest.approx(rep["task"]["map50_95"], abs=1e-9)

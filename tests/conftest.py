"""Shared fixtures: tiny ONNX models built here, small image folders, config writers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def make_classifier(path: Path, *, batch="batch", hw=(32, 32), classes=10, opset=13,
                    outlier_channel: bool = False, seed: int = 0) -> Path:
    """Conv(3->8) Relu Conv(8->16) Relu GlobalAveragePool Flatten Gemm(16->classes).

    With ``outlier_channel`` one input channel of the second conv sees activations 1000x larger
    than the others (a layer that is hard to quantize with one per-tensor scale).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0, 0.2, (16, 8, 3, 3)).astype(np.float32)
    b2 = rng.normal(0, 0.1, 16).astype(np.float32)
    wg = rng.normal(0, 0.5, (classes, 16)).astype(np.float32)
    bg = rng.normal(0, 0.1, classes).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (wg, "wg"), (bg, "bg")]]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    feed = "r1"
    if outlier_channel:
        gain = np.ones((1, 8, 1, 1), np.float32)
        gain[0, 3] = 1000.0
        inits.append(numpy_helper.from_array(gain, "gain"))
        nodes.append(helper.make_node("Mul", ["r1", "gain"], ["r1g"], name="outlier_gain"))
        w2[:, 3] *= 1e-3  # keep the float function well scaled
        inits[2] = numpy_helper.from_array(w2, "w2")
        feed = "r1g"
    nodes += [helper.make_node("Conv", [feed, "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
              helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "wg", "bg"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(
        nodes, "tiny_classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, hw[0], hw[1]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def make_images(folder: Path, n: int = 12, size=(48, 40), seed: int = 0) -> Path:
    """``n`` small RGB images with smooth structure (gradients + blobs), as PNG and JPEG."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    for i in range(n):
        base = np.stack([(xx * (1 + c) + yy * (i % 5)) % 255 for c in range(3)], -1).astype(np.float64)
        cy, cx = rng.integers(0, size[1]), rng.integers(0, size[0])
        blob = 200 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (4 + i) ** 2))
        img = np.clip(base * 0.5 + blob[..., None] + rng.normal(0, 8, base.shape), 0, 255)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img_{i:03d}.{'png' if i % 2 else 'jpg'}")
    return folder


def edit_config(path: Path, **changes) -> Path:
    """Change keys of a YAML config in place: ``section__key=value`` (``__`` nests)."""
    import yaml

    data = yaml.safe_load(path.read_text())
    for dotted, value in changes.items():
        node = data
        keys = dotted.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(data))
    return path


def write_config(path: Path, **sections) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(sections, sort_keys=False))
    return path


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return make_classifier(tmp_path / "tiny.onnx")


@pytest.fixture
def image_dir(tmp_path) -> Path:
    return make_images(tmp_path / "images")


@pytest.fixture
def tiny_config(tmp_path, tiny_model, image_dir) -> Path:
    return write_config(
        tmp_path / "tiny.yaml", model=str(tiny_model), output_dir=str(tmp_path / "out"),
        input={"shape": [2, 3, 32, 32]},
        preprocess={"preset": "resize_crop", "short_side": 32, "crop": [32, 32]},
        calibration={"data": str(image_dir), "steps": 4, "batch_size": 2},
        evaluation={"count": 4, "batch_size": 2},
        analysis={"graphwise": True, "analysis_steps": 2})

"""Fixtures for xtrt.profile tests: tiny ONNX models built with onnx.helper, small photo folders."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


def conv_stack(path: Path, *, channels: int = 8, layers: int = 2, hw: int | str = 32,
               batch: int | str = "N", classes: int = 10, custom_tail: str | None = None) -> Path:
    """Conv/Relu stack + GlobalAveragePool + Gemm classifier; optionally ends in a custom op."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, prev, c_in = [], [], "x", 3
    for i in range(layers):
        w = (rng.standard_normal((channels, c_in, 3, 3)) * 0.2).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [prev, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev, c_in = f"r{i}", channels
    inits.append(numpy_helper.from_array(
        (rng.standard_normal((classes, channels)) * 0.2).astype(np.float32), "fc"))
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"]),
              helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    out = "y"
    opsets = [helper.make_opsetid("", 13)]
    if custom_tail:
        nodes.append(helper.make_node(custom_tail, ["y"], ["z"], domain="trt"))
        opsets.append(helper.make_opsetid("trt", 1))
        out = "z"
    h = w_ = hw
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, h, w_])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, classes])], inits)
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return conv_stack(tmp_path / "tiny.onnx")


@pytest.fixture
def photos(tmp_path) -> Path:
    """Four small RGB PNG 'photos' (smooth gradients plus noise), 48x64."""
    from PIL import Image

    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:48, 0:64]
    for i in range(4):
        img = np.stack([(xx * 4 + i * 20) % 256, (yy * 5) % 256, (xx + yy + i * 30) % 256], -1)
        img = (img + rng.integers(0, 20, img.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(d / f"img{i}.png")
    return d


@pytest.fixture
def skimage_photos(tmp_path) -> Path:
    """Real photographs from scikit-image (CC0 / public domain)."""
    import shutil

    skdata = pytest.importorskip("skimage.data")
    src = Path(skdata.__file__).parent
    d = tmp_path / "skimage_photos"
    d.mkdir()
    for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg"):
        if (src / name).is_file():
            shutil.copy(src / name, d / name)
    return d

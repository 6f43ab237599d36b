"""ROIAlign_TRT / ONNX RoiAlign handler against ONNX Runtime's RoiAlign (opset 16)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

import xtrt.ops
from xtrt.runtime.session import make_session


def ort_roi_align(x, rois, bidx, **attrs):
    node = helper.make_node("RoiAlign", ["x", "rois", "b"], ["y"], **attrs)
    graph = helper.make_graph([node], "roi", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
                                              helper.make_tensor_value_info("rois", TensorProto.FLOAT, None),
                                              helper.make_tensor_value_info("b", TensorProto.INT64, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    return make_session(model).run(None, {"x": x, "rois": rois, "b": bidx.astype(np.int64)})[0]


def case(seed=0, n=2, c=3, h=13, w=17, r=9):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, c, h, w)).astype(np.float32)
    p = rng.uniform(-4, 20, (r, 2))
    rois = np.concatenate([p, p + rng.uniform(0.3, 14, (r, 2))], 1).astype(np.float32) * 1.6
    return x, rois, rng.integers(0, n, r).astype(np.int32)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("ctm", ["half_pixel", "output_half_pixel"])
@pytest.mark.parametrize("ratio", [0, 2])
def test_trt_plugin_matches_onnxruntime(mode, ctm, ratio):
    x, rois, bidx = case(seed=ratio)
    attrs = dict(output_height=4, output_width=3, sampling_ratio=ratio, spatial_scale=0.625)
    want = ort_roi_align(x, rois, bidx, mode=mode, coordinate_transformation_mode=ctm, **attrs)
    trt_attrs = dict(attrs, mode=1 if mode == "avg" else 0, coordinate_transformation_mode=int(ctm == "half_pixel"))
    handler = xtrt.ops.REGISTRY.get("ROIAlign_TRT")
    (got,) = handler.forward([torch.from_numpy(x), torch.from_numpy(rois), torch.from_numpy(bidx)], trt_attrs)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-5)
    # ONNX RoiAlign form (string attributes) through the same handler
    onnx_attrs = dict(attrs, mode=mode, coordinate_transformation_mode=ctm)
    (got2,) = xtrt.ops.REGISTRY.get("RoiAlign").forward(
        [torch.from_numpy(x), torch.from_numpy(rois), torch.from_numpy(bidx.astype(np.int64))], onnx_attrs)
    np.testing.assert_allclose(got2.numpy(), want, rtol=1e-4, atol=1e-5)
    assert handler.infer([["N", 3, "H", "W"], ["R", 4], ["R"]], [1, 1, 6], trt_attrs) == [(["R", 3, 4, 3], 1)]


def test_aliases_share_one_handler():
    r = xtrt.ops.REGISTRY
    assert r.get("RoIAlign_TRT") is r.get("ROIAlign_TRT") is r.get("RoiAlign")

"""Graph structures handled by rule: every tiny model of tests/models/make_models.py goes through
``xtrt.quant`` end to end, ``xtrt.lint`` passes on what it writes, and the quantized model keeps
the source's inputs/outputs, a dynamic batch, and its numbers (SQNR vs FP32 on ONNX Runtime)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.conftest import make_images, write_config
from tests.models import make_models as mm
from xtrt.cli import run_main
from xtrt.runtime.session import make_session

SQNR_FLOOR_DB = 18.0
# graph handling, not the optimisation passes: effort fast (percentile, no bias correction; with
# one batch of two images bias correction moves conv_net's SQNR from ~27 to ~15 dB)
# and an FP32 float part, so tensor names and DequantizeLinear -> consumer edges are the graph's
FAST = {"analysis": {"graphwise": False}, "quantization": {"effort": "fast"},
        "export": {"float_precision": "fp32"}}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("graphs")
    make_images(tmp / "images", n=6, size=(20, 20))
    return tmp


_RUNS: dict[str, tuple[int, Path, Path, str]] = {}


def quantize(workdir: Path, name: str, *, model=None, external=False, batch=2, **sections):
    """Quantize tiny model ``name`` once per module; returns (exit code, source, out dir, stderr)."""
    import contextlib
    import io

    key = name + json.dumps(sections, sort_keys=True)
    if key in _RUNS:
        return _RUNS[key]
    from xtrt.quant.__main__ import main

    src = mm.save(model if model is not None else mm.MODELS[name](), workdir / f"{name}.onnx",
                  external_data=external)
    cfg = {"model": src.name, "output_dir": f"out_{len(_RUNS)}_{name}",
           "input": {"shape": [batch, 3, mm.HW, mm.HW]},
           "preprocess": {"preset": "resize_crop", "short_side": mm.HW, "crop": [mm.HW, mm.HW]},
           "calibration": {"data": "images", "steps": 1, "batch_size": batch,
                           "method": "percentile"},
           "evaluation": {"count": 4, "batch_size": 4}, **FAST}
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    path = write_config(workdir / f"{name}.yaml", **cfg)
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = run_main(main, ["--config", str(path), "-q"])
    _RUNS[key] = (rc, src, workdir / cfg["output_dir"], err.getvalue())
    return _RUNS[key]


def lint(path: Path) -> tuple[int, str]:
    import contextlib
    import io

    from xtrt.lint.__main__ import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = run_main(main, [str(path), "--strict"])
    return rc, out.getvalue()


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    noise = ((ref - got) ** 2).sum()
    return float("inf") if noise == 0 else float(10 * np.log10((ref ** 2).sum() / noise))


def feeds_for(model: onnx.ModelProto, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for inp in model.graph.input:
        dims = [d.dim_value if d.dim_value > 0 else batch for d in inp.type.tensor_type.shape.dim]
        dims[0] = batch
        out[inp.name] = rng.random(dims, dtype=np.float32)
    return out


PLAIN = ["se_block", "residual_add", "concat_branches", "gemm_transb0", "gemm_transb1",
         "matmul_const", "conv_transpose", "grouped_depthwise", "avgpool_conv", "hardswish_14",
         "new_activations_21", "paddle_batch", "multi_output",
         *[f"conv_net_{v}" for v in range(11, 22)]]


@pytest.mark.parametrize("name", PLAIN)
def test_quantizes_lints_and_keeps_interface_and_numbers(workdir, name):
    rc, src, out, err = quantize(workdir, name)
    assert rc == 0, err
    q_path = out / "quantized.onnx"
    rc_lint, text = lint(q_path)
    assert rc_lint == 0, text
    source, q = onnx.load(src), onnx.load(q_path)
    assert [i.name for i in q.graph.input] == [i.name for i in source.graph.input]
    assert [o.name for o in q.graph.output] == [o.name for o in source.graph.output]
    assert q.graph.input[0].type.tensor_type.shape.dim[0].dim_param, "batch must stay dynamic"
    int8 = json.loads((out / "quant_cfg.json").read_text())["int8_ops"]
    assert int8, "nothing was quantized"
    ref_model = source
    if name == "paddle_batch":   # the source bakes batch 1 into a Reshape: compare at batch 1 only
        ref_model = None
    for batch in (1, 4):
        feeds = feeds_for(source, batch)
        got = make_session(q_path).run(None, feeds)
        assert all(g.shape[0] == batch for g in got)
        if ref_model is None and batch != 1:
            continue
        ref = make_session(source).run(None, feeds)
        for r, g, o in zip(ref, got, source.graph.output):
            assert g.shape == r.shape, o.name
            assert sqnr_db(r, g) > SQNR_FLOOR_DB, (o.name, batch, sqnr_db(r, g))


def test_external_data_model(workdir):
    rc, src, out, err = quantize(workdir, "external_data", model=mm.residual_add(), external=True)
    assert rc == 0, err
    assert (src.parent / (src.name + ".data")).is_file()
    assert lint(out / "quantized.onnx")[0] == 0
    ref = make_session(src).run(None, feeds_for(onnx.load(src), 4))[0]
    got = make_session(out / "quantized.onnx").run(None, feeds_for(onnx.load(src), 4))[0]
    assert sqnr_db(ref, got) > SQNR_FLOOR_DB


# ---- structure -------------------------------------------------------------------------------

def _weight_dq(model: onnx.ModelProto, node_name: str):
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    node = next(n for n in model.graph.node if n.name == node_name)
    dq = producers[node.input[1]]
    assert dq.op_type == "DequantizeLinear", f"weight of {node_name} is not quantized"
    axis = next((onnx.helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"), 1)
    return axis, list(inits[dq.input[0]].dims), list(inits[dq.input[1]].dims)


@pytest.mark.parametrize("name,node,axis", [
    ("se_block", "stem", 0), ("conv_transpose", "up", 1), ("gemm_transb1", "fc", 0),
    ("gemm_transb0", "fc", 1), ("matmul_const", "fc", 1), ("grouped_depthwise", "depthwise", 0),
])
def test_per_channel_weight_axis_is_the_output_channel(workdir, name, node, axis):
    rc, _, out, err = quantize(workdir, name)
    assert rc == 0, err
    got_axis, wshape, scale_shape = _weight_dq(onnx.load(out / "quantized.onnx"), node)
    assert got_axis == axis and scale_shape == [wshape[axis]]


def test_tensor_with_several_consumers_gets_one_scale(workdir):
    """SE block: ``stem_relu_out`` feeds GlobalAveragePool (INT8) and Mul (float); the pool's
    output feeds a Conv through PPQ's overlapped config; every tensor has one Q/DQ pair."""
    rc, _, out, err = quantize(workdir, "se_block")
    assert rc == 0, err
    q = onnx.load(out / "quantized.onnx")
    quantized = [n.input[0] for n in q.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantized) == len(set(quantized))
    assert {"stem_relu_out", "se_gap_out"} <= set(quantized)
    cfg = json.loads((out / "quant_cfg.json").read_text())
    assert {"se_gap", "se_reduce", "se_expand", "project"} <= set(cfg["int8_ops"])


def test_lowered_ops_are_reported(workdir):
    rc, _, out, err = quantize(workdir, "new_activations_21")
    assert rc == 0, err
    steps = " ".join(json.loads((out / "report.json").read_text())["preparation"]["steps"])
    for op in ("HardSwish", "Mish", "Gelu", "LayerNormalization", "GroupNormalization"):
        assert f"lowered {op}" in steps


def test_paddle_batch_is_relabelled_and_unbaked(workdir):
    rc, _, out, err = quantize(workdir, "paddle_batch", batch=4)
    assert rc == 0, err
    steps = " ".join(json.loads((out / "report.json").read_text())["preparation"]["steps"])
    assert "batch -1 relabelled as symbolic N" in steps
    assert "Reshape 'flatten_reshape': batch 1 baked" in steps
    q = onnx.load(out / "quantized.onnx")
    assert q.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    shape_init = next(n.input[1] for n in q.graph.node if n.name == "flatten_reshape")
    value = onnx.numpy_helper.to_array(next(i for i in q.graph.initializer
                                            if i.name == shape_init))
    assert value.tolist() == [0, 512]


# ---- behaviours pinned -----------------------------------------------------------------------

def test_decode_tail_of_a_yolo_head_stays_float(workdir):
    rc, src, out, err = quantize(workdir, "yolo_head")
    assert rc == 0, err
    cfg = json.loads((out / "quant_cfg.json").read_text())
    assert cfg["decode_tail"] == ["box_reshape", "cls_reshape", "box_decode", "score_sigmoid",
                                  "head_concat"]
    # cls_conv (2 classes) has output channels TensorRT pads in INT8: kept float, with the reason
    assert sorted(cfg["int8_ops"]) == ["box_conv", "neck", "stem"]
    assert cfg["float_ops"]["cls_conv"].startswith("output channels 2: TensorRT pads")
    q = onnx.load(out / "quantized.onnx")
    concat = next(n for n in q.graph.node if n.name == "head_concat")
    producers = {o: n.op_type for n in q.graph.node for o in n.output}
    assert all(producers[i] != "DequantizeLinear" for i in concat.input)
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in
                   {"box_reshape_out", "cls_reshape_out", "box_decode_out", "score_sigmoid_out"}
                   for n in q.graph.node)
    rep = json.loads((out / "report.json").read_text())
    assert rep["task"]["kind"] == "detection"
    assert lint(out / "quantized.onnx")[0] == 0


def test_plugin_tail_model_keeps_output_order(workdir):
    rc, src, out, err = quantize(workdir, "yolo_nms")
    assert rc == 0, err
    names = ["num_dets", "det_boxes", "det_scores", "det_classes"]
    q = onnx.load(out / "quantized.onnx")
    assert [o.name for o in q.graph.output] == names
    from xtrt.runtime.split import SplitRunner
    feeds = feeds_for(onnx.load(src), 4)
    ref = SplitRunner(onnx.load(src)).run(feeds)
    got = SplitRunner(q).run(feeds)
    assert [r.shape for r in ref] == [g.shape for g in got] == [(4, 1), (4, 20, 4), (4, 20),
                                                                (4, 20)]
    assert got[0].dtype == np.int32 and got[3].dtype == np.int32


def test_plugin_tail_model_gets_the_opset_19_fp16_export(workdir):
    """The FP16 export's Q/DQ reach opset 19 with the plugin node on board (it is parked in a
    domain of its own while onnx's version converter runs, then put back unchanged)."""
    rc, src, out, err = quantize(workdir, "yolo_nms", export={"float_precision": "fp16"})
    assert rc == 0, err
    q = onnx.load(out / "quantized.onnx")
    rep = json.loads((out / "report.json").read_text())
    assert rep["float_precision"]["qdq"]["qdq_opset"] == 19, rep["float_precision"]["qdq"]
    assert {i.domain: i.version for i in q.opset_import}.get("", 0) == 19
    nms = [n for n in q.graph.node if n.op_type == "EfficientNMS_TRT"]
    assert len(nms) == 1 and nms[0].domain == ""


def test_multi_output_values_follow_the_source_order(workdir):
    rc, src, out, err = quantize(workdir, "multi_output")
    assert rc == 0, err
    feeds = feeds_for(onnx.load(src), 2)
    ref = make_session(src).run(None, feeds)
    got = make_session(out / "quantized.onnx").run(None, feeds)
    assert [g.shape for g in got] == [(2, 10), (2, 8, 16, 16), (2, 8)]
    assert [sqnr_db(r, g) > SQNR_FLOOR_DB for r, g in zip(ref, got)] == [True] * 3
    rep = json.loads((out / "report.json").read_text())
    assert list(rep["outputs"]) == ["logits", "features", "embedding"]
    assert [rep["outputs"][n]["shape"] for n in rep["outputs"]] == [[10], [8, 16, 16], [8]]


# ---- multi-input models ----------------------------------------------------------------------

def test_multi_input_model_calibrates_from_npz_keyed_by_input_name(workdir):
    rng = np.random.default_rng(0)
    folder = workdir / "npz"
    folder.mkdir()
    for i in range(4):
        np.savez(folder / f"b{i}.npz", image=rng.random((2, 3, mm.HW, mm.HW), dtype=np.float32),
                 gain=rng.uniform(0.5, 1.5, (2, 8)).astype(np.float32))
    rc, src, out, err = quantize(workdir, "multi_input", calibration={"data": "npz"},
                                 evaluation={"count": 4, "batch_size": 2})
    assert rc == 0, err
    assert lint(out / "quantized.onnx")[0] == 0
    q = onnx.load(out / "quantized.onnx")
    assert [i.name for i in q.graph.input] == ["image", "gain"]
    for batch in (1, 4):
        feeds = feeds_for(onnx.load(src), batch, seed=batch)
        ref = make_session(src).run(None, feeds)[0]
        got = make_session(out / "quantized.onnx").run(None, feeds)[0]
        assert sqnr_db(ref, got) > SQNR_FLOOR_DB


def test_multi_input_model_with_images_is_one_line(workdir):
    rc, _, out, err = quantize(workdir, "multi_input")
    assert rc == 1 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: images can feed only the image input 'image'")
    assert "np.savez(f, image=..., gain=...)" in line


def test_int64_image_input_is_one_line(workdir):
    m = mm.conv_net(13)
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    rc, _, _, err = quantize(workdir, "int64_input", model=m)
    assert rc == 1 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error:") and "int64" in line and "float32 image input" in line


@pytest.mark.parametrize("name", ["se_block", "avgpool_conv"])
def test_overlapped_configs_with_ppqs_own_calibration(workdir, name):
    """calibration.engine: ppq calibrates on PPQ's executor: the overlapped configs read their
    dominant config's scale there too."""
    rc, src, out, err = quantize(workdir, name, calibration={"engine": "ppq"})
    assert rc == 0, err
    assert lint(out / "quantized.onnx")[0] == 0
    feeds = feeds_for(onnx.load(src), 4)
    ref = make_session(src).run(None, feeds)[0]
    got = make_session(out / "quantized.onnx").run(None, feeds)[0]
    assert sqnr_db(ref, got) > SQNR_FLOOR_DB


def test_fp16_export_float_layers_carry_the_reports_reason(workdir):
    """softmax_head: TensorRT-RTX fuses the Softmax writing the float32 graph output ``prob``
    with the Int8 Gemm's epilogue into a Float layer in the FP32 export, and in an FP16 export
    whose Q/DQ keep Casts (export.fp16_qdq_opset 13); the report names why (graph outputs keep
    their types), so no Float layer is unexplained.  The default FP16 export (opset 19, float16
    Q/DQ scales) has no Float layer at all."""
    from xtrt.lint.trt_rtx import trt_rtx_available

    if not trt_rtx_available():
        pytest.skip("TensorRT-RTX bindings not installed")
    rc, _, out, err = quantize(workdir, "softmax_head", export={"float_precision": "fp16"})
    assert rc == 0, err
    report = json.loads((out / "report.json").read_text())
    eng = report["engine"]
    assert eng["accepted"] and eng["int8_convolutions"] == eng["convolutions"] == 1
    assert eng["fp32_islands"] == [] and eng["unexplained_fp32_islands"] == 0
    assert report["float_precision"]["qdq"]["qdq_opset"] == 19
    fid = report["float_precision"]["fidelity"]
    # the resolution of the FP16-vs-FP32 figure: how far the FP32 export moves under a 1e-5
    # input scaling (INT8 rounding flips alone; on this tiny model none flips)
    assert 0 <= fid["resolution_db"] < 1 and "1 + 1e-05" in fid["resolution_how"]
    assert abs(fid["delta_sqnr_db"]) <= 0.5
    contrast = eng["fp32_export"]         # the FP32 export, for contrast
    assert contrast["accepted"] and contrast["int8_convolutions"] == 1
    why = ("softmax: writes graph output prob after the last INT8 layer; graph outputs keep "
           "their float32 type")
    assert [x["reason"][:len(why)] for x in contrast["fp32_islands"]] == [why]
    rc, _, out, err = quantize(workdir, "softmax_head", export={"float_precision": "fp16",
                                                                "fp16_qdq_opset": 13})
    assert rc == 0, err
    eng = json.loads((out / "report.json").read_text())["engine"]
    (island,) = eng["fp32_islands"]
    assert "softmax" in island["onnx_nodes"] and island["unexplained"] == []
    assert island["reason"].startswith(why) and eng["unexplained_fp32_islands"] == 0


def test_written_model_records_what_it_keeps_float(workdir, tmp_path):
    """A layer the placement keeps float (here excluded by config) is recorded in quantized.onnx
    itself (xtrt.trt.kept_float), so the model linted alone, without quant_cfg.json, reports it
    as kept float by the exporter, not as a hazard."""
    import shutil

    from xtrt.lint.qdq import hazard_counts, kept_float, lint_qdq
    from xtrt.trt.kept_float import read_kept_float

    rc, _, out, err = quantize(workdir, "gemm_transb1", quantization={"exclude_nodes": ["fc"]})
    assert rc == 0, err
    alone = shutil.copy(out / "quantized.onnx", tmp_path / "alone.onnx")   # no quant_cfg beside
    q = onnx.load(alone)
    assert read_kept_float(q) == {"fc": "excluded by config"}
    found = lint_qdq(q)
    assert hazard_counts(found) == {}
    assert [f.message for f in kept_float(found)] == [
        "Gemm fc kept float by the exporter: excluded by config"]


def test_convolutions_tensorrt_pads_stay_float_with_the_reason(workdir):
    """squeeze6 (8 -> 6) and expand6 (6 -> 8): TensorRT pads 6 channels in INT8; placement keeps
    them float and says why, the stem (3 image channels) stays INT8, and the written model linted
    alone has no small_channels hazard, only two layers kept float by the exporter."""
    from xtrt.lint.qdq import hazard_counts, kept_float, lint_qdq

    rc, _, out, err = quantize(workdir, "small_channels")
    assert rc == 0, err
    cfg = json.loads((out / "quant_cfg.json").read_text())
    assert "stem" in cfg["int8_ops"] and "project" in cfg["int8_ops"]
    assert {"squeeze6", "expand6"}.isdisjoint(cfg["int8_ops"])
    reasons = cfg["float_ops"]
    assert reasons["squeeze6"].startswith("output channels 6: TensorRT pads INT8 channels")
    assert reasons["expand6"].startswith("input channels 6: TensorRT pads INT8 channels")
    found = lint_qdq(onnx.load(out / "quantized.onnx"))
    assert hazard_counts(found) == {}
    assert sorted(f.node for f in kept_float(found)) == ["expand6", "squeeze6"]

"""xtrt.quant end to end on a tiny model: outputs, structure, numbers and every user error."""
import errno
import json
import os
import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from tests.conftest import edit_config, make_classifier, write_config
from xtrt.cli import run_main
from xtrt.quant.__main__ import main
from xtrt.quant.export import parse_calibration_cache
from xtrt.runtime.session import make_session


def run(argv):
    return run_main(main, argv)


edit = edit_config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One quantization of the tiny model, shared by the structure tests."""
    from tests.conftest import make_images

    tmp = tmp_path_factory.mktemp("tiny_run")
    model = make_classifier(tmp / "tiny.onnx")
    images = make_images(tmp / "images", n=16)
    cfg = write_config(tmp / "tiny.yaml", model="tiny.onnx", output_dir="out",
                       input={"shape": [2, 3, 32, 32]},
                       preprocess={"preset": "resize_crop", "short_side": 32, "crop": [32, 32]},
                       calibration={"data": "images", "steps": 4, "batch_size": 2},
                       evaluation={"count": 8, "batch_size": 4})
    assert run(["--config", str(cfg), "-q"]) == 0
    return tmp, model, tmp / "out"


def test_outputs_are_written(tiny_run):
    _, _, out = tiny_run
    for name in ("quantized.onnx", "quant_cfg.json", "dynamic_range.json", "calibration.cache",
                 "report.json", "report.md", "resolved_config.yaml"):
        assert (out / name).is_file(), name
    assert not [p for p in out.iterdir() if p.name.startswith(".xtrt-staging")]


def test_every_conv_and_gemm_input_and_weight_comes_through_dequantize(tiny_run):
    _, _, out = tiny_run
    m = onnx.load(out / "quantized.onnx")
    onnx.checker.check_model(m)
    producers = {o: n for n in m.graph.node for o in n.output}
    for n in m.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            for i in (0, 1):
                p = producers.get(n.input[i])
                while p is not None and p.op_type == "Cast":     # the FP16 export's DQ -> Cast
                    p = producers.get(p.input[0])
                assert p is not None and p.op_type == "DequantizeLinear", \
                    f"input {i} of node {n.name} is not quantized but should be"
            assert n.input[2] in {i.name for i in m.graph.initializer}, "bias must stay float"
    inits = {i.name: i for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits:
            assert inits[n.input[0]].data_type == onnx.TensorProto.INT8


def test_names_order_and_dynamic_batch_kept(tiny_run):
    _, model, out = tiny_run
    src, q = onnx.load(model), onnx.load(out / "quantized.onnx")
    assert [o.name for o in q.graph.output] == [o.name for o in src.graph.output]
    assert [i.name for i in q.graph.input] == [i.name for i in src.graph.input]
    assert q.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("batch", [1, 3])
def test_quantized_model_is_close_to_fp32_on_ort(tiny_run, batch):
    _, model, out = tiny_run
    x = np.random.default_rng(batch).random((batch, 3, 32, 32), dtype=np.float32)
    ref = make_session(model).run(None, {"input": x})[0]
    got = make_session(out / "quantized.onnx").run(None, {"input": x})[0]
    sqnr = 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum())
    assert got.shape == ref.shape and sqnr > 20


def test_calibration_cache_and_side_files_agree(tiny_run):
    _, _, out = tiny_run
    header, scales = parse_calibration_cache((out / "calibration.cache").read_text())
    assert header == "TRT-8601-EntropyCalibration2"
    cfg = json.loads((out / "quant_cfg.json").read_text())
    ranges = json.loads((out / "dynamic_range.json").read_text())
    assert cfg["schema_version"] == 1 and set(cfg["versions"]) >= {"xtrt", "ppq", "onnx", "torch"}
    assert set(scales) == set(cfg["activations"]) == set(ranges) and "input" in scales
    for name, s in scales.items():
        assert s == pytest.approx(cfg["activations"][name]["scale"], rel=1e-6)
        assert ranges[name] == pytest.approx(s * 127, rel=1e-6)
    line = [ln for ln in (out / "calibration.cache").read_text().splitlines()
            if ln.startswith("input: ")][0]
    assert struct.unpack(">f", bytes.fromhex(line.split(": ")[1]))[0] == pytest.approx(scales["input"])
    assert sorted(cfg["int8_ops"]) == ["conv1", "conv2", "fc", "gap"]


def test_report_numbers_match_a_reevaluation(tiny_run):
    tmp, model, out = tiny_run
    rep = json.loads((out / "report.json").read_text())
    assert rep["schema_version"] == 1 and rep["task"]["kind"] == "classification"
    # every stage is timed, the writing of the outputs (plots, TensorBoard) included
    assert {"prepare", "calibrate", "verify", "report"} <= set(rep["timings_s"])
    assert all(v >= 0 for v in rep["timings_s"].values()) and rep["timings_s"]["report"] > 0
    # re-evaluate top-1 agreement on the test part of the held-out files (the files after
    # calibration, less the selection part auto chose its method on)
    from xtrt.config import PreprocessConfig
    from xtrt.data.images import list_files
    from xtrt.data.preprocess import build_preprocess
    from xtrt.quant.job import split_selection_test
    held = list_files(tmp / "images")[8:16]
    selection, files = split_selection_test(held, 0.5)
    if rep["summary"]["choices_made_on"] is None:      # the run chose nothing on held-out images
        selection, files = [], held
    else:
        assert rep["summary"]["choices_made_on"] == "4 selection images"
    pre = build_preprocess(PreprocessConfig(preset="resize_crop", short_side=32, crop=[32, 32]))
    x = np.stack([pre(__import__("xtrt.data.images", fromlist=["x"]).decode_image(f))[0] for f in files])
    a = make_session(model).run(None, {"input": x})[0].argmax(1)
    b = make_session(out / "quantized.onnx").run(None, {"input": x})[0].argmax(1)
    assert rep["task"]["agree"] == int((a == b).sum()) and rep["task"]["total"] == len(files)


def test_summary_line(tiny_config, capsys):
    assert run(["--config", str(tiny_config), "-q"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("PASSED xtrt.quant in ") and "quantized.onnx" in last
    assert "4 ops INT8" in last and "top-1 agreement" in last and "worst layer" in last


# ---- user errors: one line, exit 1, nothing half-written -------------------------------------

def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    return err[-1]


def _no_outputs(cfg_path: Path):
    out = Path(yaml.safe_load(cfg_path.read_text())["output_dir"])
    assert not out.exists() or not any(out.iterdir())


def test_missing_model(tiny_config, capsys, tmp_path):
    edit(tiny_config, model=str(tmp_path / "nope.onnx"))
    assert run(["--config", str(tiny_config)]) == 1
    assert _err(capsys).startswith(f"error: model file '{tmp_path / 'nope.onnx'}' does not exist")
    _no_outputs(tiny_config)


def test_corrupt_model(tiny_config, capsys, tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x00garbage\xff" * 50)
    edit(tiny_config, model=str(tmp_path / "bad.onnx"))
    assert run(["--config", str(tiny_config)]) == 1
    assert "is not a readable ONNX model" in _err(capsys)


def test_wrong_input_shape(tmp_path, image_dir, capsys):
    model = make_classifier(tmp_path / "fixed.onnx", batch=2)
    cfg = write_config(tmp_path / "c.yaml", model=str(model), output_dir=str(tmp_path / "out"),
                       input={"shape": [2, 3, 64, 64]},
                       calibration={"data": str(image_dir)})
    assert run(["--config", str(cfg)]) == 1
    assert _err(capsys).startswith("error: input.shape [2, 3, 64, 64] does not match input 'input'")
    _no_outputs(cfg)


def test_empty_calibration_folder(tiny_config, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    edit(tiny_config, calibration__data=str(tmp_path / "empty"))
    assert run(["--config", str(tiny_config)]) == 1
    assert "error: no images or tensors found in" in _err(capsys)
    _no_outputs(tiny_config)


def test_unreadable_calibration_folder(tiny_config, capsys, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"x{i}.jpg").write_bytes(b"not a jpeg")
    edit(tiny_config, calibration__data=str(bad))
    assert run(["--config", str(tiny_config)]) == 1
    assert _err(capsys).startswith("error: no usable samples in 3 file(s); 3 unreadable")
    _no_outputs(tiny_config)


def test_tensor_file_with_wrong_shape(tiny_config, capsys, tmp_path):
    d = tmp_path / "t"
    d.mkdir()
    np.save(d / "x.npy", np.zeros((4, 3, 16, 16), np.float32))
    edit(tiny_config, calibration__data=str(d))
    assert run(["--config", str(tiny_config)]) == 1
    assert "error: tensor file x.npy has shape [4, 3, 16, 16], the model input 'input' takes " \
           "[N, 3, 32, 32]" in _err(capsys)


def test_unknown_op_without_handler(tmp_path, image_dir, capsys):
    from onnx import TensorProto, helper
    node = helper.make_node("Foo_TRT", ["x"], ["y"], name="foo_0")
    conv_w = onnx.numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["input", "w"], ["x"], name="c"), node], "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])], [conv_w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "p.onnx")
    cfg = write_config(tmp_path / "c.yaml", model=str(tmp_path / "p.onnx"),
                       output_dir=str(tmp_path / "out"), calibration={"data": str(image_dir)})
    assert run(["--config", str(cfg)]) == 1
    assert _err(capsys) == ("error: no handler for op 'Foo_TRT' (node 'foo_0') (fix: register one "
                            "with @xtrt.ops.REGISTRY.register('Foo_TRT') in a .py file and pass "
                            "--plugin my_ops.py)")


def test_unknown_config_key_and_bad_value(tiny_config, capsys):
    assert run(["--config", str(tiny_config), "--set", "calibration.methd=kl"]) == 1
    assert _err(capsys) == ("error: unknown config key 'calibration.methd' "
                            "(fix: did you mean 'calibration.method'?)")
    assert run(["--config", str(tiny_config), "--set", "calibration.method=kld"]) == 1
    assert "use one of: auto, percentile, kl, mse, minmax, entropy" in _err(capsys)


def test_unknown_exclusion_suggests_a_node(tiny_config, capsys):
    assert run(["--config", str(tiny_config), "--set", "quantization.exclude_nodes=[cnv2]"]) == 1
    assert _err(capsys) == ("error: quantization.exclude_nodes: no node named 'cnv2' "
                            "(fix: did you mean 'conv2'?)")
    assert run(["--config", str(tiny_config), "--set", "quantization.exclude_op_types=[Cnv]"]) == 1
    assert "did you mean 'Conv'?" in _err(capsys)


def test_exclusion_keeps_node_float(tiny_config, tmp_path):
    assert run(["--config", str(tiny_config), "-q", "--set", "quantization.exclude_nodes=[/conv2|fc/]"]) == 0
    cfg = json.loads((tmp_path / "out" / "quant_cfg.json").read_text())
    assert cfg["int8_ops"] == ["conv1", "gap"] and set(cfg["float_ops"]) == {"conv2", "fc"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_output_folder_non_root(tiny_config, capsys, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    edit(tiny_config, output_dir=str(ro / "out"))
    assert run(["--config", str(tiny_config)]) == 1
    assert "error: cannot write to output folder" in _err(capsys)


def test_unwritable_output_folder(tiny_config, capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    edit(tiny_config, output_dir=str(tmp_path / "afile" / "out"))
    assert run(["--config", str(tiny_config)]) == 1
    assert _err(capsys).startswith(f"error: cannot write to output folder '{tmp_path / 'afile' / 'out'}'")


def test_disk_full_mid_write_leaves_nothing(tiny_config, capsys, tmp_path, monkeypatch):
    import onnx as onnx_mod
    real_save = onnx_mod.save

    out = tmp_path / "out"

    def full_disk(model, path, *a, **k):
        real_save(model, path, *a, **k)
        if str(out) in str(path):  # only the run's outputs; PPQ's temp files still work
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_mod, "save", full_disk)
    assert run(["--config", str(tiny_config)]) == 1
    line = _err(capsys)
    assert line.startswith("error: cannot write") and "No space left on device" in line
    assert "free disk space" in line
    assert not out.exists() or list(out.iterdir()) == []


def test_argument_errors_exit_2(capsys):
    assert run([]) == 2
    assert "--config" in capsys.readouterr().err
    assert run(["--config", "x.yaml", "--device", "tpu"]) == 2


def test_cuda_without_cuda_ep(tiny_config, capsys):
    assert run(["--config", str(tiny_config), "--device", "cuda"]) == 1
    assert "--device cuda was asked for, but onnxruntime has no CUDAExecutionProvider" in _err(capsys)


def test_verbose_keeps_the_traceback(tiny_config, tmp_path):
    from xtrt.errors import ModelError
    edit(tiny_config, model=str(tmp_path / "nope.onnx"))
    with pytest.raises(ModelError):
        run(["--config", str(tiny_config), "-v"])


def test_user_plugin_handler_makes_a_plugin_model_quantize(tmp_path, image_dir, capsys):
    from onnx import TensorProto, helper
    rng = np.random.default_rng(0)
    w = onnx.numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["x"], name="c", pads=[1, 1, 1, 1]),
             helper.make_node("Scale_TRT", ["x"], ["y"], name="scale_0", factor=2.0)]
    g = helper.make_graph(nodes, "g",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 16, 16])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "p.onnx")
    (tmp_path / "my_ops.py").write_text(
        "from xtrt.ops import REGISTRY, OpHandler\n\n"
        "@REGISTRY.register('Scale_TRT')\n"
        "class Scale(OpHandler):\n"
        "    def forward(self, inputs, attrs):\n"
        "        return (inputs[0] * float(attrs.get('factor', 1.0)),)\n"
        "    def infer(self, input_shapes, input_dtypes, attrs):\n"
        "        return [(input_shapes[0], input_dtypes[0])]\n")
    cfg = write_config(tmp_path / "c.yaml", model="p.onnx", output_dir="out",
                       input={"shape": [2, 3, 16, 16]},
                       preprocess={"preset": "letterbox", "size": [16, 16]},
                       calibration={"data": str(image_dir), "steps": 4, "batch_size": 2},
                       evaluation={"count": 4, "batch_size": 2})
    assert run(["--config", str(cfg), "-q", "--plugin", str(tmp_path / "my_ops.py")]) == 0
    q = onnx.load(tmp_path / "out" / "quantized.onnx")
    plugin = [n for n in q.graph.node if n.op_type == "Scale_TRT"]
    assert len(plugin) == 1 and plugin[0].attribute[0].f == 2.0
    assert [o.name for o in q.graph.output] == ["y"]
    from xtrt.runtime.split import SplitRunner
    x = np.random.default_rng(1).random((3, 3, 16, 16), dtype=np.float32)
    ref = SplitRunner(tmp_path / "p.onnx").run({"input": x})[0]
    got = SplitRunner(tmp_path / "out" / "quantized.onnx").run({"input": x})[0]
    assert got.shape == (3, 4, 16, 16)
    assert 10 * np.log10((ref ** 2).sum() / ((ref - got) ** 2).sum()) > 25


def test_auto_method_reports_every_candidate_and_keeps_the_best(tmp_path, tiny_config):
    # selection_share 0: the method is chosen on the images the report is judged on, so the
    # report's figure is the chosen candidate's
    edit(tiny_config, calibration__method="auto", evaluation__selection_share=0.0)
    assert run(["--config", str(tiny_config), "-q"]) == 0
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    search = rep["calibration"]["method_search"]
    assert [c["method"] for c in search["candidates"]] == ["percentile", "minmax", "kl", "mse"]
    best = max(search["candidates"], key=lambda c: (c["task_metric"], c["sqnr_db"]))
    assert search["chosen"] == best["method"] == rep["calibration"]["method"]
    assert rep["task"]["top1_agreement"] == pytest.approx(best["task_metric"])


def test_auto_scores_its_candidates_on_the_first_search_images(tmp_path, tiny_config):
    # 4 held-out images in batches of 2, all of them the selection part (share 0); auto's
    # candidates are scored on the first batch only, the report's figure on all 4
    edit(tiny_config, calibration__method="auto", calibration__search_images=2,
         evaluation__selection_share=0.0)
    assert run(["--config", str(tiny_config), "-q"]) == 0
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    search = rep["calibration"]["method_search"]
    assert [c["images"] for c in search["candidates"]] == [2, 2, 2, 2]
    assert search["judged_on"].startswith("the first 2 of the 4 held-out images")
    assert rep["summary"]["held_out_images"] == 4
    # more search images than there are: every one of them
    edit(tiny_config, calibration__search_images=100)
    assert run(["--config", str(tiny_config), "-q"]) == 0
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [c["images"] for c in rep["calibration"]["method_search"]["candidates"]] == [4] * 4


def test_summary_says_what_the_figures_were_judged_on(tmp_path, tiny_config, capsys):
    # 12 images, 4 x 2 for calibration: 4 held out; auto chooses on 2 of them, reports on 2
    edit(tiny_config, calibration__method="auto")
    assert run(["--config", str(tiny_config), "-q"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "judged on 2 held-out images" in line
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["summary"]["choices_made_on"] == "2 selection images"
    assert rep["calibration"]["method_search"]["judged_on"].startswith("2 selection images")
    # one method: nothing is chosen, all 4 held-out images are the test part
    edit(tiny_config, calibration__method="minmax")
    assert run(["--config", str(tiny_config), "-q"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "judged on 4 held-out images" in line
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["summary"]["judged_on"] == "4 held-out images"
    assert rep["summary"]["calibration_images"] == 8 and rep["summary"]["held_out_images"] == 4
    assert rep["summary"]["choices_made_on"] is None
    # every image used for calibration: the figures are judged on them, and the summary says so
    edit(tiny_config, calibration__steps=6)
    assert run(["--config", str(tiny_config), "-q"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "judged on 12 calibration images" in line and "held-out" not in line
    rep = json.loads((tmp_path / "out" / "report.json").read_text())
    assert rep["summary"]["held_out_images"] == 0


def test_report_carries_the_tensorrt_rtx_engine_judge(tiny_run):
    from xtrt.lint.trt_rtx import LABEL, trt_rtx_available

    _, _, out = tiny_run
    eng = json.loads((out / "report.json").read_text())["engine"]
    if not trt_rtx_available():
        assert eng == {"label": LABEL, "available": False, "install": eng["install"]}
        pytest.skip("TensorRT-RTX bindings not installed")
    assert eng["label"] == LABEL and eng["accepted"]
    assert eng["convolutions"] == 2 and eng["int8_convolutions"] == 2
    assert "TensorRT-RTX" in (out / "report.md").read_text()

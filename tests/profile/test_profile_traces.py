"""The run folder as users open it: torch-tb-profiler's own loader, a real TensorBoard over HTTP,
and the YOLOv8n + EfficientNMS_TRT end-to-end model on real photos."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from xtrt.cli import run_main
from xtrt.profile.__main__ import main

STAGES = {"decode", "preprocess", "h2d", "inference", "d2h", "postprocess"}


def _profile(capsys, model, out, *extra):
    rc = run_main(main, [str(model), "--out", str(out), "--steps", "3", "--warmup", "1", *map(str, extra)])
    cap = capsys.readouterr()
    assert rc == 0, cap.err
    return cap.out


def test_torch_tb_profiler_loader_finds_stages(tiny_model, photos, tmp_path, capsys):
    pytest.importorskip("torch_tb_profiler")
    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.run_generator import RunGenerator

    out = tmp_path / "prof"
    _profile(capsys, tiny_model, out, "--images", photos, "--batch", "2")
    (trace,) = (out / "tb" / "tiny").glob("bs2.*.pt.trace.json")
    data = RunProfileData.parse("bs2", None, str(trace), str(tmp_path / "cache"))
    data.process()
    assert len(data.steps_names) == 3
    profile = RunGenerator("bs2", None, data).generate_run_profile()
    ops = {row["name"]: row for row in profile.operation_table_by_name["data"]}
    assert STAGES <= set(ops)
    assert all(ops[s]["calls"] == 3 for s in STAGES)
    assert ops["inference"]["host_total_duration"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str, **params):
    url = f"http://127.0.0.1:{port}{path}" + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read().decode())


@pytest.mark.slow
def test_tensorboard_http_shows_runs_and_stages(tiny_model, photos, tmp_path, capsys):
    pytest.importorskip("torch_tb_profiler")
    out = tmp_path / "prof"
    _profile(capsys, tiny_model, out, "--images", photos, "--batch", "1,2")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(out / "tb"),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        runs, deadline = None, time.time() + 60
        while time.time() < deadline:
            try:
                runs = _get(port, "/data/plugin/pytorch_profiler/runs")
                if runs.get("runs") and not runs.get("loading"):
                    break
            except OSError:
                pass
            time.sleep(1)
        assert runs and runs["runs"] == ["tiny"], runs
        workers = _get(port, "/data/plugin/pytorch_profiler/workers", run="tiny", view="Overview")
        assert sorted(workers) == ["bs1", "bs2"]
        spans = _get(port, "/data/plugin/pytorch_profiler/spans", run="tiny", worker="bs2")
        span = spans[0] if spans else ""
        pie = _get(port, "/data/plugin/pytorch_profiler/operation", run="tiny", worker="bs2",
                   span=span, group_by="Operation")
        assert STAGES <= {row[0] for row in pie["host_total_time"]["rows"]}
        table = _get(port, "/data/plugin/pytorch_profiler/operation/table", run="tiny", worker="bs2",
                     span=span, group_by="Operation")
        calls = {r["name"]: r["calls"] for r in table["data"]}
        assert all(calls.get(s) == 3 for s in STAGES), calls
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.mark.slow
def test_yolov8n_e2e_on_real_photos(skimage_photos, tmp_path, capsys):
    pytest.importorskip("torch_tb_profiler")
    from xtrt.examples.yolo_e2e import build_yolo_e2e, locate_nudenet_model

    try:
        src = locate_nudenet_model()
    except Exception as exc:  # nudenet not installed
        pytest.skip(str(exc))
    model = build_yolo_e2e(src, tmp_path / "yolov8n_e2e.onnx", size=320)
    out = tmp_path / "prof"
    stdout = _profile(capsys, model, out, "--images", skimage_photos, "--batch", "1,2")
    first = stdout.splitlines()[0]
    assert first.startswith("verdict: ") and " at batch 2 on CPU: " in first
    assert "postprocess: plugin tail (EfficientNMS_TRT)" in stdout
    data = json.loads((out / "profile.json").read_text())
    (m,) = data["models"]
    assert m["plugin_nodes"] and m["postprocess"] == "plugin tail (EfficientNMS_TRT)"
    for b in m["batches"]:
        assert b["stage_ms"]["inference"] > 0 and b["stage_ms"]["postprocess"] > 0
        assert b["stage_ms"]["decode"] > 0 and b["stage_ms"]["preprocess"] > 0
    assert (out / "sweep.png").is_file()
    from torch_tb_profiler.profiler.data import RunProfileData
    from torch_tb_profiler.profiler.run_generator import RunGenerator

    (trace,) = (out / "tb" / "yolov8n_e2e").glob("bs2.*.pt.trace.json")
    data = RunProfileData.parse("bs2", None, str(trace), str(tmp_path / "cache"))
    data.process()
    ops = {r["name"] for r in RunGenerator("bs2", None, data).generate_run_profile()
           .operation_table_by_name["data"]}
    assert STAGES <= ops


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(not _cuda(), reason="needs CUDA")
def test_cuda_trace_has_device_kernels(tiny_model, photos, tmp_path, capsys):
    from xtrt.runtime.session import cuda_ep_available

    backend = "ort" if cuda_ep_available() else "ppq"
    if backend == "ppq" and not _ppq_executor_available():
        pytest.skip("needs ppq (xtrt.backend.ppq)")
    out = tmp_path / "prof"
    stdout = _profile(capsys, tiny_model, out, "--images", photos, "--batch", "2", "--device", "cuda",
                      "--backend", backend)
    assert " on CUDA: GPU busy " in stdout.splitlines()[0]
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    assert any(e.get("cat") == "kernel" for e in events)
    b = json.loads((out / "profile.json").read_text())["models"][0]["batches"][0]
    assert b["verdict"]["gpu_busy_share"] is not None and b["peak_device_mem_mb"] is not None


def _ppq_executor_available() -> bool:
    try:
        from xtrt.backend import ppq as ppq_backend
    except Exception:
        return False
    return hasattr(ppq_backend, "build_executor")


@pytest.mark.slow
@pytest.mark.skipif(not _ppq_executor_available(), reason="xtrt.backend.ppq.build_executor missing")
def test_ppq_backend_attributes_time_to_torch_ops(tiny_model, tmp_path, capsys):
    out = tmp_path / "prof"
    stdout = _profile(capsys, tiny_model, out, "--backend", "ppq", "--batch", "2")
    assert "[ppq, cpu;" in stdout
    b = json.loads((out / "profile.json").read_text())["models"][0]["batches"][0]
    names = {r["name"] for r in b["top_ops"]}
    assert any("conv" in n.lower() for n in names), names


def _resize_model(path: Path) -> Path:
    """Conv -> Resize (opset 17, which PPQ rejects as it comes) -> Conv -> pooled classifier."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.2).astype(np.float32), "w0"),
             numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) * 0.2).astype(np.float32), "w1"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array((rng.standard_normal((5, 4)) * 0.2).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c0", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("Conv", ["u", "w1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c1"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "resize17",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.slow
@pytest.mark.skipif(not _ppq_executor_available(), reason="xtrt.backend.ppq.build_executor missing")
def test_ppq_backend_prepares_opset17_models(tmp_path, capsys):
    """PPQ accepts Resize only up to opset 13: the ppq backend prepares the model as xtrt.quant does."""
    model = _resize_model(tmp_path / "resize17.onnx")
    out = tmp_path / "prof"
    stdout = _profile(capsys, model, out, "--backend", "ppq", "--batch", "2")
    b = json.loads((out / "profile.json").read_text())["models"][0]["batches"][0]
    assert any(r["name"].startswith("Resize") for r in b["top_ops"]), stdout

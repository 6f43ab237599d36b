"""python -m xtrt.profile driven in-process on tiny models (CPU, seconds each)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from xtrt.cli import run_main
from xtrt.profile.__main__ import main, parse_batches

from .conftest import conv_stack

FAST = ["--steps", "3", "--warmup", "1"]


def _run(capsys, *argv):
    rc = run_main(main, [str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_images_run_writes_run_folder(tiny_model, photos, tmp_path, capsys):
    out = tmp_path / "prof"
    rc, stdout, err = _run(capsys, tiny_model, "--images", photos, "--batch", "1,2", "--out", out, *FAST)
    assert rc == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("verdict: ") and " at batch 2 on CPU: " in lines[0]
    for stage in ("decode", "preprocess", "h2d", "inference", "d2h", "postprocess"):
        assert any(line.startswith(stage + " ") for line in lines), stage
    assert "latency-all" in stdout and "latency-model" in stdout
    assert lines[-1].startswith("PASSED | ") and lines[-1].endswith(str(out))
    data = json.loads((out / "profile.json").read_text())
    assert data["schema_version"] == 1
    assert data["inputs"]["kind"] == "images" and data["inputs"]["files"] == 4
    (model,) = data["models"]
    assert [b["batch"] for b in model["batches"]] == [1, 2]
    b2 = model["batches"][1]
    assert b2["latency_all_ms"]["count"] == 3
    assert b2["latency_all_ms"]["median"] >= b2["latency_model_ms"]["median"] > 0
    assert b2["throughput_ips"] > 0
    assert {"Conv", "Gemm"} <= {r["name"] for r in b2["top_ops"] if r["source"] == "ort"}
    assert (out / "sweep.png").stat().st_size > 10_000 and (out / "stages.png").is_file()
    assert (out / "README.md").read_text().count("tensorboard --logdir tb") == 1
    traces = sorted((out / "tb" / "tiny").glob("bs*.pt.trace.json"))
    assert [t.name.split(".")[0] for t in traces] == ["bs1", "bs2"]
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    stages = {e["name"] for e in events if e.get("args", {}).get("xtrt_stage")}
    assert stages == {"decode", "preprocess", "h2d", "inference", "d2h", "postprocess"}
    assert list((out / "ort").glob("*.json"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".prof")]  # no temp left


def test_synthetic_inputs_are_announced(tiny_model, tmp_path, capsys):
    rc, stdout, _ = _run(capsys, tiny_model, "--batch", "2", "--out", tmp_path / "o", *FAST)
    assert rc == 0
    assert "inputs: synthetic tensors (no --images): decode/preprocess not measured" in stdout
    assert "note: no --images: synthetic random tensors" in stdout
    assert json.loads((tmp_path / "o" / "profile.json").read_text())["inputs"]["kind"] == "synthetic"


def test_slow_preprocessing_plugin_is_preprocessing_bound(tiny_model, photos, tmp_path, capsys):
    plugin = tmp_path / "slow_pre.py"
    plugin.write_text(
        "import time\nimport numpy as np\n"
        "def pre(img):\n    time.sleep(0.03)\n    return np.zeros((3, 32, 32), np.float32)\n")
    rc, stdout, err = _run(capsys, tiny_model, "--images", photos, "--batch", "2",
                           "--preprocess-plugin", f"{plugin}:pre", "--out", tmp_path / "o", *FAST)
    assert rc == 0, err
    assert stdout.startswith("verdict: preprocessing-bound at batch 2 on CPU")
    assert "biggest stage: preprocess" in stdout.splitlines()[0]


def test_heavy_model_trivial_preprocessing_is_inference_bound(tmp_path, capsys):
    from PIL import Image
    import numpy as np

    model = conv_stack(tmp_path / "heavy.onnx", channels=48, layers=5, hw=96)
    imgs = tmp_path / "small"
    imgs.mkdir()
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(imgs / "a.png")
    plugin = tmp_path / "fast_pre.py"
    plugin.write_text("import numpy as np\nZ = np.zeros((3, 96, 96), np.float32)\n"
                      "def pre(img):\n    return Z\n")
    rc, stdout, err = _run(capsys, model, "--images", imgs, "--batch", "1",
                           "--preprocess-plugin", f"{plugin}:pre", "--out", tmp_path / "o", *FAST)
    assert rc == 0, err
    assert stdout.startswith("verdict: inference-bound at batch 1 on CPU")


def test_compare_puts_two_models_side_by_side(tiny_model, tmp_path, capsys):
    other = conv_stack(tmp_path / "wide.onnx", channels=16)
    out = tmp_path / "o"
    rc, stdout, err = _run(capsys, tiny_model, "--compare", other, "--batch", "1", "--out", out, *FAST)
    assert rc == 0, err
    data = json.loads((out / "profile.json").read_text())
    assert [m["run"] for m in data["models"]] == ["tiny", "wide"]
    assert {p.name for p in (out / "tb").iterdir()} == {"tiny", "wide"}
    assert "== tiny " in stdout and "== wide " in stdout


def test_rerun_replaces_previous_run_folder(tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    for _ in range(2):
        assert _run(capsys, tiny_model, "--batch", "1", "--out", out, *FAST)[0] == 0
    assert len(list((out / "tb" / "tiny").glob("*.pt.trace.json"))) == 1


# -- user errors: one line, exit 1 (argparse: exit 2) ------------------------------------------------
def test_missing_model(tmp_path, capsys):
    rc, _, err = _run(capsys, tmp_path / "nope.onnx", "--out", tmp_path / "o")
    assert rc == 1
    assert f"error: model file '{tmp_path / 'nope.onnx'}' does not exist" in err
    assert err.strip().splitlines()[-1].startswith("FAILED | ")


def test_images_folder_without_readable_images(tiny_model, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"not a jpeg")
    rc, _, err = _run(capsys, tiny_model, "--images", bad, "--out", tmp_path / "o")
    assert rc == 1
    assert "error: no readable images among 1 file(s); e.g. broken.jpg: cannot decode image" in err
    assert not (tmp_path / "o").exists()


def test_images_path_missing(tiny_model, tmp_path, capsys):
    rc, _, err = _run(capsys, tiny_model, "--images", tmp_path / "nowhere", "--out", tmp_path / "o")
    assert rc == 1
    assert f"error: --images path '{tmp_path / 'nowhere'}' does not exist" in err


def test_unreadable_image_is_skipped_with_warning(tiny_model, photos, tmp_path, capsys):
    (photos / "zz_broken.png").write_bytes(b"garbage")
    rc, stdout, err = _run(capsys, tiny_model, "--images", photos, "--batch", "1",
                           "--out", tmp_path / "o", *FAST)
    assert rc == 0
    assert "skipped 1 unreadable file(s), e.g. zz_broken.png" in err


def test_cuda_asked_for_but_absent(tiny_model, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc, _, err = _run(capsys, tiny_model, "--device", "cuda", "--out", tmp_path / "o")
    assert rc == 1
    assert "error: --device cuda was asked for, but no CUDA device is available" in err


@pytest.mark.parametrize("text", ["1,x", "0", "", "8;16"])
def test_bad_batch_syntax_is_usage_error(tiny_model, capsys, text):
    rc, _, err = _run(capsys, tiny_model, "--batch", text)
    assert rc == 2
    assert "argument --batch: --batch" in err


def test_parse_batches_sorts_and_dedups():
    assert parse_batches("8,1,8, 32") == [1, 8, 32]


def test_fixed_batch_model_rejects_other_batch(tmp_path, capsys):
    model = conv_stack(tmp_path / "fixed.onnx", batch=1)
    rc, _, err = _run(capsys, model, "--batch", "1,4", "--out", tmp_path / "a" / "b")
    assert rc == 1
    assert "error: fixed.onnx: input 'x' has a fixed batch size of 1; --batch 4 cannot run" in err
    assert not (tmp_path / "a").exists()  # a failed run leaves no folders behind


def test_dynamic_size_needs_imgsz(tmp_path, capsys):
    model = conv_stack(tmp_path / "dyn.onnx", hw="S")
    rc, _, err = _run(capsys, model, "--out", tmp_path / "o")
    assert rc == 1
    assert "error: model input 'x' has a dynamic size ['N', 3, 'S', 'S'] (fix: give --imgsz 640" in err
    rc, _, err = _run(capsys, model, "--imgsz", "32", "--batch", "1", "--out", tmp_path / "o", *FAST)
    assert rc == 0, err


def test_wrong_preprocessed_shape(tiny_model, photos, tmp_path, capsys):
    plugin = tmp_path / "pre.py"
    plugin.write_text("import numpy as np\ndef pre(img):\n    return np.zeros((3, 16, 16), np.float32)\n")
    rc, _, err = _run(capsys, tiny_model, "--images", photos, "--preprocess-plugin", f"{plugin}:pre",
                      "--out", tmp_path / "o", *FAST)
    assert rc == 1
    assert "error: preprocessing gives [3, 16, 16] but input 'x' takes [3, 32, 32]" in err
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))


def test_unknown_plugin_op(tmp_path, capsys):
    model = conv_stack(tmp_path / "plug.onnx", custom_tail="FooPlugin_TRT")
    rc, _, err = _run(capsys, model, "--out", tmp_path / "o")
    assert rc == 1
    assert "error: no handler for op 'FooPlugin_TRT'" in err


def test_plugin_op_with_user_handler(tmp_path, capsys):
    model = conv_stack(tmp_path / "plug2.onnx", custom_tail="BarPlugin_TRT")
    ops = tmp_path / "my_ops.py"
    ops.write_text("from xtrt.ops import REGISTRY\n\n@REGISTRY.register('BarPlugin_TRT')\n"
                   "def bar(inputs, attrs):\n    return (inputs[0] * 2,)\n")
    rc, stdout, err = _run(capsys, model, "--plugin", ops, "--batch", "1", "--out", tmp_path / "o", *FAST)
    assert rc == 0, err
    assert "postprocess: plugin tail (BarPlugin_TRT)" in stdout


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom xtrt.profile.__main__ import main\ntry:\n    main(['--help'])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules and 'onnxruntime' not in "
            "sys.modules, 'heavy import'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[2])
    assert r.returncode == 0, r.stderr

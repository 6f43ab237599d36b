"""The bad-input matrix of xtrt.quant: exit code, the exact one-line text, no traceback, nothing
finished-looking left behind, the user's files untouched."""
from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import edit_config, make_images, write_config
from xtrt.cli import run_main
from xtrt.outdir import LOCK_NAME, MANIFEST_NAME
from xtrt.quant.__main__ import main

ROOT = Path(__file__).resolve().parents[2]
FAST = ["--set", "calibration.method=minmax", "--set", "analysis.graphwise=false"]
FINISHED = ("quantized.onnx", "quant_cfg.json", "report.json", "report.md", "calibration.cache",
            "dynamic_range.json", "resolved_config.yaml")


def run(argv) -> int:
    return run_main(main, [str(a) for a in argv])


def last_err(capsys) -> str:
    """The last stderr line; the whole of stderr holds no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines, "nothing on stderr"
    return lines[-1]


edit = edit_config


def out_of(cfg: Path) -> Path:
    return Path(yaml.safe_load(cfg.read_text())["output_dir"])


def assert_nothing_finished(out: Path) -> None:
    """No output folder, or one without any finished-looking file (staging folders included)."""
    if not out.exists():
        return
    names = [p.name for p in out.rglob("*")]
    assert not [n for n in names if n in FINISHED], names
    assert not list(out.glob(".xtrt-staging-*")), "a failed run left its staging folder"


def tensors(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", arr)
    return folder


def bomb_png(path: Path) -> Path:
    """A PNG whose header claims 20000x20000 pixels (PIL: DecompressionBombError)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def small_model(path: Path, *, input_type=TensorProto.FLOAT, second_input=False, log_tail=False) -> Path:
    w = numpy_helper.from_array(np.random.default_rng(0).normal(0, .3, (4, 3, 3, 3)).astype(np.float32), "w")
    nodes, first = [], "input"
    if input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT))
        first = "f"
    nodes.append(helper.make_node("Conv", [first, "w"], ["c"], name="conv", pads=[1, 1, 1, 1]))
    inputs = [helper.make_tensor_value_info("input", input_type, ["n", 3, 32, 32])]
    out = "c"
    if second_input:
        nodes.append(helper.make_node("Add", ["c", "extra"], ["y"], name="add"))
        inputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["n", 4, 32, 32]))
        out = "y"
    if log_tail:  # log of a conv output that is negative somewhere: NaN in FP32
        nodes.append(helper.make_node("Log", ["c"], ["y"], name="log"))
        out = "y"
    g = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info(out, TensorProto.FLOAT,
                                                                             ["n", 4, 32, 32])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.save(m, path)
    return path


# -- config: a constant input, a seed that does nothing ---------------------------------------

@pytest.mark.parametrize("override,line", [
    ("preprocess.std=[0,0,0]",
     "error: preprocess.std: [0.0, 0.0, 0.0] holds a 0 (dividing by it makes every input NaN/Inf) "
     "(fix: give the per-channel standard deviations, e.g. preprocess.std: [0.229, 0.224, 0.225], "
     "or leave std out)"),
    ("preprocess.scale=0",
     "error: preprocess.scale: 0.0 makes every input constant (fix: use a finite non-zero scale, "
     "e.g. preprocess.scale: 0.0039215686 (1/255))"),
    ("preprocess.mean=[.nan,0,0]",
     "error: preprocess.mean: [nan, 0.0, 0.0] holds a value that is not finite (fix: give finite "
     "numbers, e.g. preprocess.mean: [0.5, 0.5, 0.5])"),
    ("calibration.seed=3",
     "error: calibration.seed is set but nothing in this run is random (calibration.shuffle is "
     "false, LSQ and AdaRound are off), so it has no effect (fix: set calibration.shuffle: true to draw the "
     "calibration files at random with that seed, or remove calibration.seed)"),
])
def test_config_errors(tiny_config, capsys, override, line):
    assert run(["--config", tiny_config, "--set", override]) == 1
    assert last_err(capsys) == line
    assert not out_of(tiny_config).exists()


def test_seed_drives_the_shuffled_split(tmp_path):
    from xtrt.config import load_config
    from xtrt.quant.job import _split_files as _files

    make_images(tmp_path / "img", n=12)
    cfg_path = write_config(tmp_path / "c.yaml", model="m.onnx",
                            calibration={"data": "img", "steps": 2, "batch_size": 2,
                                         "shuffle": True, "seed": 1})
    a = _files(load_config(cfg_path))[0]
    assert _files(load_config(cfg_path))[0] == a                      # repeatable
    assert _files(load_config(cfg_path, ["calibration.seed=2"]))[0] != a   # the seed matters
    unshuffled = load_config(cfg_path, ["calibration.shuffle=false", "calibration.seed=null"])
    assert _files(unshuffled)[0] == sorted((tmp_path / "img").iterdir())[:4]  # sorted order


# -- calibration data: NaN / Inf / constant / decompression bombs ----------------------------

def _npy_config(tiny_config, tmp_path, arrays) -> Path:
    return edit(tiny_config, calibration__data=str(tensors(tmp_path / "t", arrays)))


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_all_non_finite_tensors(tiny_config, tmp_path, capsys, value):
    cfg = _npy_config(tiny_config, tmp_path, {f"{i}": np.full((2, 3, 32, 32), value, np.float32)
                                              for i in range(3)})
    assert run(["--config", cfg, "-q"]) == 1
    assert last_err(capsys) == (
        "error: no usable samples in 3 file(s); 3 unreadable or not finite, e.g. 0.npy: holds "
        "6144 NaN/Inf values (fix: give a folder of readable jpg/png/bmp/webp images or finite "
        ".npy/.npz tensors)")
    assert_nothing_finished(out_of(cfg))


def test_non_finite_tensor_files_are_skipped_and_counted(tiny_config, tmp_path, capsys):
    rng = np.random.default_rng(0)
    good = {f"g{i}": rng.random((2, 3, 32, 32), dtype=np.float32) for i in range(6)}
    bad = np.ones((2, 3, 32, 32), np.float32)
    bad[0, 0, 0, 0] = np.nan
    cfg = _npy_config(tiny_config, tmp_path, {**good, "a_bad": bad})
    edit(cfg, calibration__steps=2)
    assert run(["--config", cfg, "-q", *FAST]) == 0
    out = capsys.readouterr()
    assert "skipped 1 unreadable or non-finite file(s), e.g. a_bad.npy: holds 1 NaN/Inf values" \
        in out.err
    assert out.out.strip().splitlines()[-1].startswith("PASSED xtrt.quant")
    import json
    scales = json.loads((out_of(cfg) / "quant_cfg.json").read_text())["activations"]
    assert all(np.isfinite(v["scale"]) and v["scale"] > 0 for v in scales.values())


def test_constant_tensors(tiny_config, tmp_path, capsys):
    cfg = _npy_config(tiny_config, tmp_path, {f"{i}": np.zeros((2, 3, 32, 32), np.float32)
                                              for i in range(3)})
    assert run(["--config", cfg, "-q"]) == 1
    assert last_err(capsys) == (
        "error: every value of the 6 sample(s) from 3 file(s) is 0: constant data gives "
        "calibration nothing to measure (fix: check the files (all-zero tensors?) and "
        "preprocess.scale/mean/std)")
    assert_nothing_finished(out_of(cfg))


def test_decompression_bomb_is_skipped_and_counted(tiny_config, image_dir, capsys):
    bomb_png(image_dir / "aaa_bomb.png")
    assert run(["--config", tiny_config, "-q", *FAST]) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable or non-finite file(s), e.g. aaa_bomb.png: cannot decode image" in err
    assert "more pixels than PIL's limit" in err and "Traceback" not in err


def test_only_a_decompression_bomb(tiny_config, tmp_path, capsys):
    (tmp_path / "b").mkdir()
    cfg = edit(tiny_config, calibration__data=str(bomb_png(tmp_path / "b" / "bomb.png").parent))
    assert run(["--config", cfg, "-q"]) == 1
    line = last_err(capsys)
    assert line.startswith("error: no usable samples in 1 file(s); 1 unreadable or not finite, "
                           f"e.g. bomb.png: cannot decode image '{tmp_path / 'b' / 'bomb.png'}': "
                           "it claims more pixels than PIL's limit")


# -- models ----------------------------------------------------------------------------------

def test_int64_input_model(tiny_config, tmp_path, capsys):
    cfg = edit(tiny_config, model=str(small_model(tmp_path / "i64.onnx", input_type=TensorProto.INT64)))
    assert run(["--config", cfg, "-q"]) == 1
    assert last_err(capsys) == (
        "error: model input 'input' takes int64 tensors; xtrt.quant feeds it preprocessed float32 "
        "images (fix: export the model with a float32 image input (preprocessing, casts and "
        "normalisation outside the graph))")
    assert_nothing_finished(out_of(cfg))


def test_two_input_model(tiny_config, tmp_path, capsys):
    cfg = edit(tiny_config, model=str(small_model(tmp_path / "two.onnx", second_input=True)))
    assert run(["--config", cfg, "-q"]) == 1
    # two image-shaped inputs: which one the images feed is the user's to say (a model with one
    # image input and other inputs works: tests/quant/test_graphs.py)
    assert last_err(capsys) == (
        "error: the model has 2 inputs (['input', 'extra']) and 2 4-D float image input(s) "
        "(fix: set input.name to the input that images (or the arrays) feed)")


def test_fp32_output_not_finite(tiny_config, tmp_path, capsys):
    cfg = edit(tiny_config, model=str(small_model(tmp_path / "log.onnx", log_tail=True)))
    assert run(["--config", cfg, "-q"]) == 1
    line = last_err(capsys)
    assert line.startswith("error: the FP32 model's output 'y' holds NaN/Inf on the held-out data")
    assert line.endswith("(fix: check the model and its preprocessing on those inputs)")
    assert_nothing_finished(out_of(cfg))


# -- user code: preprocess plugins and op plugins that raise or exit --------------------------

@pytest.mark.parametrize("body,line", [
    ("raise ValueError('boom')", "raised ValueError: boom (fix: fix that function (run with -v "
                                 "for the traceback))"),
    ("import sys; sys.exit(3)", "called sys.exit(3) (fix: return the preprocessed array instead "
                                "of exiting)"),
])
def test_preprocess_plugin_fails(tiny_config, tmp_path, capsys, monkeypatch, body, line):
    (tmp_path / "pre.py").write_text(f"def pre(img):\n    {body}\n")
    cfg = edit(tiny_config, preprocess={"preset": "plugin", "plugin": "pre.py:pre"})
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # preprocess.plugin is resolved against the config's folder
    assert run(["--config", cfg, "-q"]) == 1
    assert last_err(capsys) == f"error: preprocess plugin {tmp_path / 'pre.py'}:pre {line}"
    assert_nothing_finished(out_of(cfg))


def test_op_plugin_that_exits_while_loading(tiny_config, tmp_path, capsys, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    (work / "my_ops.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.chdir(work)  # --plugin is resolved against the working directory
    assert run(["--config", tiny_config, "-q", "--plugin", "my_ops.py"]) == 1
    assert last_err(capsys) == (f"error: plugin file '{work / 'my_ops.py'}' called sys.exit(3) "
                                "while loading (fix: remove the sys.exit call from that file)")


def test_config_plugins_resolve_against_the_config(tiny_config, tmp_path, capsys, monkeypatch):
    (tmp_path / "cfg_ops.py").write_text("raise RuntimeError('loaded from the config folder')\n")
    edit(tiny_config, plugins=["cfg_ops.py"])
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert run(["--config", tiny_config, "-q"]) == 1
    assert last_err(capsys).startswith(f"error: could not load plugin file '{tmp_path / 'cfg_ops.py'}': "
                                       "RuntimeError: loaded from the config folder")


# -- the output folder -----------------------------------------------------------------------

def test_folder_with_user_files_is_refused_at_the_start(tiny_config, tmp_path, capsys, monkeypatch):
    out = out_of(tiny_config)
    (out / "sub").mkdir(parents=True)
    (out / "thesis.txt").write_text("three years of work")
    import xtrt.model.load as load

    def must_not_run(*a, **k):
        raise AssertionError("the model was loaded before the output folder was checked")
    monkeypatch.setattr(load, "load_model", must_not_run)
    assert run(["--config", tiny_config, "-q"]) == 1
    assert last_err(capsys) == (
        f"error: output folder '{out}' holds files xtrt did not write ('sub' and 1 more); xtrt "
        "never replaces or deletes them (fix: choose a new or empty folder, or one an earlier "
        "xtrt run wrote)")
    assert (out / "thesis.txt").read_text() == "three years of work" and (out / "sub").is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["sub", "thesis.txt"]


def test_a_file_as_output_folder(tiny_config, tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("mine")
    edit(tiny_config, output_dir=str(f))
    assert run(["--config", tiny_config, "-q"]) == 1
    assert last_err(capsys) == (f"error: output folder '{f}' is a file, not a folder (fix: give a "
                                "folder path (a new or empty folder))")
    assert f.read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no hidden copy of it


def test_rerun_replaces_only_what_xtrt_wrote(tiny_config, capsys):
    out = out_of(tiny_config)
    assert run(["--config", tiny_config, "-q", *FAST]) == 0
    (out / "profile").mkdir()  # another xtrt run's folder (xtrt.profile's default place)
    (out / "profile" / MANIFEST_NAME).write_text('{"tool": "xtrt.profile", "files": []}')
    first = (out / "report.json").stat().st_mtime_ns
    assert run(["--config", tiny_config, "-q", *FAST, "--set", "calibration.method=kl"]) == 0
    assert (out / "report.json").stat().st_mtime_ns != first
    assert (out / "profile" / MANIFEST_NAME).is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".xtrt-staging")]
    import json
    listed = json.loads((out / MANIFEST_NAME).read_text())
    assert listed["tool"] == "xtrt.quant" and "quantized.onnx" in listed["files"]
    assert "profile" not in listed["files"]


_HOLD = """
import fcntl, os, sys, time
os.makedirs(sys.argv[1], exist_ok=True)
fd = os.open(os.path.join(sys.argv[1], '.xtrt.lock'), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, str(os.getpid()).encode())
print('locked', flush=True)
time.sleep(60)
"""


def test_concurrent_run_is_refused_naming_the_pid(tiny_config, capsys):
    out = out_of(tiny_config)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.perf_counter()
        assert run(["--config", tiny_config, "-q"]) == 1
        assert time.perf_counter() - t0 < 5  # at once, not after the calibration
        assert last_err(capsys) == (
            f"error: output folder '{out}' is in use by another xtrt run (pid {holder.pid}) "
            "(fix: wait for that run to finish, or choose another output folder)")
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]


def _start_quant(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "xtrt.quant", "--config", str(cfg), "-q"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_staging(out: Path, proc: subprocess.Popen) -> Path:
    for _ in range(600):
        found = list(out.glob(".xtrt-staging-*.partial")) if out.is_dir() else []
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("no staging folder appeared")


def test_sigterm_removes_the_staging_folder(tiny_config):
    out = out_of(tiny_config)
    proc = _start_quant(tiny_config)
    try:
        staging = _wait_for_staging(out, proc)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("error: interrupted by SIGTERM; nothing was written "
                                            "(the staging folder was removed)")
    assert not staging.exists()
    assert_nothing_finished(out)


def test_sigkilled_run_is_cleaned_by_the_next_run(tiny_config, capsys):
    out = out_of(tiny_config)
    proc = _start_quant(tiny_config)
    try:
        staging = _wait_for_staging(out, proc)
        (staging / "quantized.onnx").write_bytes(b"half")  # as if it had got that far
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert staging.is_dir() and (staging / "XTRT-INCOMPLETE-RUN.txt").is_file()
    assert staging.name.endswith(".partial")
    assert not [n for n in os.listdir(out) if n in FINISHED]  # nothing finished-looking on top
    assert run(["--config", tiny_config, "-q", *FAST]) == 0
    assert not staging.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".xtrt-staging")]
    onnx.checker.check_model(onnx.load(out / "quantized.onnx"))


# -- results checked before PASSED (the pipeline's call sites) -------------------------------

def test_nan_scale_after_calibration_is_an_error(tiny_config, capsys, monkeypatch):
    from xtrt.quant import export

    real = export.tensor_scales

    def with_nan(*a, **k):
        s = real(*a, **k)
        s["r1"] = float("nan")
        return s
    monkeypatch.setattr(export, "tensor_scales", with_nan)
    assert run(["--config", tiny_config, "-q", *FAST]) == 1
    assert last_err(capsys).startswith("error: activation scale of tensor 'r1' is nan: the "
                                       "calibration data or the activations hold NaN/Inf")
    assert_nothing_finished(out_of(tiny_config))


def test_non_finite_int8_output_is_an_error(tiny_config, capsys, monkeypatch):
    from xtrt.quant import evaluate, verify

    real = verify.evaluate

    def poisoned(*a, **k):
        ev = real(*a, **k)
        ev.outputs["logits"]["nonfinite"] = 7
        return ev
    monkeypatch.setattr(verify, "evaluate", poisoned)
    monkeypatch.setattr(evaluate, "evaluate", poisoned)  # the evaluation stage's own name
    assert run(["--config", tiny_config, "-q", *FAST]) == 1
    assert last_err(capsys).startswith("error: the INT8 model's output 'logits' holds 7 NaN/Inf "
                                       "values on the held-out data; its SQNR would be meaningless")
    assert_nothing_finished(out_of(tiny_config))

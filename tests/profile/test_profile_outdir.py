"""xtrt.profile --out: the user's files are never lost; plugin paths resolve like xtrt.quant's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from xtrt.cli import run_main
from xtrt.outdir import MANIFEST_NAME
from xtrt.profile.__main__ import main

FAST = ["--steps", "2", "--warmup", "1", "--no-trace", "--batch", "1", "-q"]


def _run(capsys, *argv):
    rc = run_main(main, [str(a) for a in argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, cap.out, cap.err


def test_out_with_user_files_is_refused_and_kept(tiny_model, tmp_path, capsys):
    v = tmp_path / "v"
    (v / "sub").mkdir(parents=True)
    (v / "thesis.txt").write_text("x")
    rc, _, err = _run(capsys, tiny_model, "--out", v, *FAST)
    assert rc == 1
    assert err.strip().splitlines()[0] == (
        f"error: --out '{v}' holds files xtrt did not write ('sub' and 1 more); xtrt never "
        "replaces or deletes them (fix: choose a new or empty folder, or one an earlier xtrt run "
        "wrote)")
    assert err.strip().splitlines()[-1].startswith("FAILED | ")
    assert (v / "thesis.txt").read_text() == "x" and (v / "sub").is_dir()
    assert sorted(p.name for p in v.iterdir()) == ["sub", "thesis.txt"]


def test_out_that_is_a_file_is_refused_and_kept(tiny_model, tmp_path, capsys):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    rc, _, err = _run(capsys, tiny_model, "--out", f, *FAST)
    assert rc == 1
    assert err.strip().splitlines()[0] == (f"error: --out '{f}' is a file, not a folder (fix: give "
                                           "a folder path (a new or empty folder))")
    assert f.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == \
        ["notes.txt", "tiny.onnx"]


def test_rerun_replaces_its_own_files_only(tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    for _ in range(2):
        rc, stdout, err = _run(capsys, tiny_model, "--out", out, *FAST)
        assert rc == 0, err
    assert stdout.strip().splitlines()[-1].endswith(f"| {out}")
    man = json.loads((out / MANIFEST_NAME).read_text())
    assert man["tool"] == "xtrt.profile" and "profile.json" in man["files"]
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".xtrt-")) == [MANIFEST_NAME]


def test_concurrent_run_is_refused(tiny_model, tmp_path, capsys):
    out = tmp_path / "o"
    hold = ("import fcntl, os, sys, time\nos.makedirs(sys.argv[1], exist_ok=True)\n"
            "fd = os.open(os.path.join(sys.argv[1], '.xtrt.lock'), os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\nos.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True)\ntime.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", hold, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        rc, _, err = _run(capsys, tiny_model, "--out", out, *FAST)
    finally:
        p.kill()
        p.wait()
    assert rc == 1
    assert err.strip().splitlines()[0] == (
        f"error: --out '{out}' is in use by another xtrt run (pid {p.pid}) (fix: wait for that "
        "run to finish, or choose another output folder)")


def test_config_preprocess_plugin_resolves_against_the_config(tiny_model, photos, tmp_path,
                                                               capsys, monkeypatch):
    cfg_dir = tmp_path / "cfg"
    cfg_dir.mkdir()
    (cfg_dir / "pre.py").write_text("def pre(img):\n    raise ValueError('from the config folder')\n")
    (cfg_dir / "c.yaml").write_text("model: x.onnx\npreprocess: {preset: plugin, plugin: pre.py:pre}\n")
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(capsys, tiny_model, "--config", cfg_dir / "c.yaml", "--images", photos,
                      "--out", tmp_path / "o", *FAST)
    assert rc == 1
    assert err.strip().splitlines()[0] == (
        f"error: preprocess plugin {cfg_dir / 'pre.py'}:pre raised ValueError: from the config "
        "folder (fix: fix that function (run with -v for the traceback))")
    assert not (tmp_path / "o").exists()


def test_cli_preprocess_plugin_resolves_against_the_working_directory(tiny_model, photos, tmp_path,
                                                                      capsys, monkeypatch):
    (tmp_path / "pre.py").write_text("import sys\ndef pre(img):\n    sys.exit(4)\n")
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(capsys, tiny_model, "--images", photos, "--preprocess-plugin", "pre.py:pre",
                      "--out", tmp_path / "o", *FAST)
    assert rc == 1
    assert err.strip().splitlines()[0] == ("error: preprocess plugin pre.py:pre called sys.exit(4) "
                                           "(fix: return the preprocessed array instead of exiting)")


def test_decompression_bomb_is_skipped(tiny_model, photos, tmp_path, capsys):
    from tests.quant.test_bad_inputs import bomb_png

    bomb_png(photos / "zz_bomb.png")
    rc, _, err = _run(capsys, tiny_model, "--images", photos, "--out", tmp_path / "o", *FAST)
    assert rc == 0, err
    assert "skipped 1 unreadable file(s), e.g. zz_bomb.png" in err
    data = json.loads((tmp_path / "o" / "profile.json").read_text())
    assert data["inputs"]["files"] == 4 and "more pixels than PIL's limit" in data["inputs"]["skipped"][0]

"""xtrt.outdir.OutputDir: staging, whole-result swap, manifest, foreign files, lock, signals."""
from __future__ import annotations

import json
import os
import signal

import pytest

from xtrt.errors import OutputError
from xtrt.outdir import INCOMPLETE_MARKER, LOCK_NAME, MANIFEST_NAME, Interrupted, OutputDir


def visible(path) -> list[str]:
    return sorted(n for n in os.listdir(path) if not n.startswith("."))


def write_run(path, files: dict[str, str], tool="xtrt.test", **kw) -> dict:
    with OutputDir(path, tool, **kw) as od:
        assert (od.staging / INCOMPLETE_MARKER).is_file()
        assert od.staging.name.startswith(".xtrt-staging-") and od.staging.name.endswith(".partial")
        for name, text in files.items():
            (od.staging / name).parent.mkdir(parents=True, exist_ok=True)
            (od.staging / name).write_text(text)
        return od.commit()


def test_commit_swaps_in_the_whole_result_and_lists_it(tmp_path):
    out = tmp_path / "a" / "b"
    got = write_run(out, {"one.json": "1", "tb/x": "x"})
    assert got == {"one.json": out / "one.json", "tb": out / "tb"}
    assert visible(out) == ["one.json", "tb"]
    assert sorted(os.listdir(out)) == [MANIFEST_NAME, LOCK_NAME, "one.json", "tb"]
    man = json.loads((out / MANIFEST_NAME).read_text())
    assert man["tool"] == "xtrt.test" and man["files"] == ["one.json", "tb"]
    assert man["state"] == "complete"
    # a second run replaces what the first wrote, including names it no longer writes
    write_run(out, {"two.json": "2"})
    assert visible(out) == ["two.json"]


def test_abort_leaves_the_old_result_and_removes_new_folders(tmp_path):
    out = tmp_path / "o"
    write_run(out, {"r.json": "old"})
    with pytest.raises(RuntimeError):
        with OutputDir(out, "xtrt.test") as od:
            (od.staging / "r.json").write_text("new")
            raise RuntimeError("the run failed")
    assert (out / "r.json").read_text() == "old" and visible(out) == ["r.json"]
    with pytest.raises(RuntimeError):
        with OutputDir(tmp_path / "new" / "deep", "xtrt.test"):
            raise RuntimeError("failed")
    assert not (tmp_path / "new").exists()  # folders this run made are gone again


def test_foreign_files_are_refused_and_untouched(tmp_path):
    (tmp_path / "thesis.txt").write_text("x")
    with pytest.raises(OutputError) as e:
        OutputDir(tmp_path, "xtrt.test").open()
    assert str(e.value) == (
        f"output folder '{tmp_path}' holds files xtrt did not write ('thesis.txt'); xtrt never "
        "replaces or deletes them (fix: choose a new or empty folder, or one an earlier xtrt run "
        "wrote)")
    assert (tmp_path / "thesis.txt").read_text() == "x"
    # force: written beside them, never touched
    write_run(tmp_path, {"r.json": "1"}, force=True)
    write_run(tmp_path, {"q.json": "1"}, force=True)
    assert visible(tmp_path) == ["q.json", "thesis.txt"]


def test_collision_with_a_foreign_file_at_commit(tmp_path):
    with OutputDir(tmp_path, "xtrt.test", force=True) as od:
        (od.staging / "r.json").write_text("new")
        (tmp_path / "r.json").write_text("user's")
        with pytest.raises(OutputError, match="now holds 'r.json', which xtrt did not write"):
            od.commit()
    assert (tmp_path / "r.json").read_text() == "user's"
    assert not list(tmp_path.glob(".xtrt-staging-*"))


def test_other_tool_and_nested_xtrt_folders(tmp_path):
    write_run(tmp_path / "q", {"quant_cfg.json": "{}"}, tool="xtrt.quant")
    with pytest.raises(OutputError, match="holds the outputs of xtrt.quant, not xtrt.profile"):
        OutputDir(tmp_path / "q", "xtrt.profile").open()
    write_run(tmp_path / "q" / "profile", {"profile.json": "{}"}, tool="xtrt.profile")
    write_run(tmp_path / "q", {"quant_cfg.json": "{}"}, tool="xtrt.quant")  # profile/ is fine
    assert visible(tmp_path / "q") == ["profile", "quant_cfg.json"]
    assert visible(tmp_path / "q" / "profile") == ["profile.json"]


def test_folder_of_an_xtrt_without_manifest_is_adopted(tmp_path):
    (tmp_path / "profile.json").write_text("{}")
    (tmp_path / "sweep.png").write_text("")
    write_run(tmp_path, {"profile.json": "new"}, adopt=("profile.json", "sweep.png"))
    assert visible(tmp_path) == ["profile.json"]
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "README.md").write_text("user's")  # no signature file: not adopted
    with pytest.raises(OutputError, match="holds files xtrt did not write"):
        OutputDir(tmp_path / "x", "xtrt.test", adopt=("profile.json", "README.md")).open()


def test_a_file_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("mine")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        OutputDir(f, "xtrt.test").open()
    assert f.read_text() == "mine" and os.listdir(tmp_path) == ["f"]


def test_second_open_is_refused_while_locked(tmp_path):
    with OutputDir(tmp_path, "xtrt.test"):
        with pytest.raises(OutputError) as e:
            OutputDir(tmp_path, "xtrt.test").open()
        assert f"is in use by another xtrt run (pid {os.getpid()})" in str(e.value)


def test_dead_runs_are_removed(tmp_path):
    write_run(tmp_path, {"r.json": "1"})
    # .xtrt-staging-PID: a run killed while it was making (marking) its staging folder
    for name in (".xtrt-staging-999999.partial", ".xtrt-old-999999", ".xtrt-staging-999998"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "quantized.onnx").write_text("half")
    write_run(tmp_path, {"r.json": "2"})
    assert sorted(os.listdir(tmp_path)) == [MANIFEST_NAME, LOCK_NAME, "r.json"]


def test_sigterm_removes_staging_and_raises_interrupted(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as e:
        with OutputDir(tmp_path / "o", "xtrt.test") as od:
            (od.staging / "r.json").write_text("x")
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                pass
    assert e.value.signum == signal.SIGTERM
    assert not (tmp_path / "o").exists()
    assert signal.getsignal(signal.SIGTERM) is before

"""Atomic JSON/text writers: content, JSON-safety, no temp files left, OutputError text."""
from __future__ import annotations

import errno
import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from xtrt.errors import OutputError
from xtrt.report import REPORT_SCHEMA_VERSION
from xtrt.report.files import atomic_path, to_jsonable, write_json_atomic, write_text_atomic


def test_json_safe_values(tmp_path):
    obj = {"schema_version": REPORT_SCHEMA_VERSION, "sqnr": math.inf, "low": -np.inf, "bad": float("nan"),
           "f32": np.float32(0.5), "i64": np.int64(3), "flag": np.bool_(True), "arr": np.arange(3),
           "path": Path("/a/b"), "tup": (1, 2), 5: "int key"}
    path = write_json_atomic(tmp_path / "r.json", obj)
    back = json.loads(path.read_text())
    assert back == {"schema_version": 1, "sqnr": "inf", "low": "-inf", "bad": None, "f32": 0.5, "i64": 3,
                    "flag": True, "arr": [0, 1, 2], "path": "/a/b", "tup": [1, 2], "5": "int key"}
    assert "NaN" not in path.read_text() and "Infinity" not in path.read_text()
    assert os.listdir(tmp_path) == ["r.json"]  # no temporary file left behind
    with pytest.raises(TypeError, match="cannot write object to JSON"):
        to_jsonable(object())


def test_text_atomic_replaces_and_keeps_mode(tmp_path):
    p = tmp_path / "sub" / "report.md"  # missing folder is created
    write_text_atomic(p, "one")
    write_text_atomic(p, "two")
    assert p.read_text() == "two"
    assert os.listdir(p.parent) == ["report.md"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_failed_write_leaves_old_file(tmp_path):
    p = tmp_path / "plot.png"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            assert tmp.suffix == ".png" and tmp.parent == tmp_path
            tmp.write_bytes(b"half")
            raise RuntimeError("boom")
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["plot.png"]


def test_unwritable_folder_message(tmp_path):
    (tmp_path / "afile").write_text("x")
    target = tmp_path / "afile" / "x.json"
    with pytest.raises(OutputError) as e:
        write_json_atomic(target, {"a": 1})
    assert str(e.value).startswith(f"cannot write {target}: ")
    assert e.value.hint == "choose an output folder you can write to (its parents must be folders, not files)"
    with pytest.raises(OutputError, match=r"cannot write .*afile/y\.md"):
        write_text_atomic(tmp_path / "afile" / "y.md", "text")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_hint(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError) as e:
            write_text_atomic(ro / "x.txt", "t")
        assert "fix its permissions" in str(e.value)
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("err, hint", [
    (OSError(errno.ENOSPC, "No space left on device"), "free disk space or write the outputs to another disk"),
    (PermissionError(errno.EACCES, "Permission denied"),
     "choose an output folder you can write to, or fix its permissions"),
])
def test_disk_full_and_permission_hints(tmp_path, monkeypatch, err, hint):
    def fail(*args, **kwargs):
        raise err

    monkeypatch.setattr("xtrt.report.files.os.replace", fail)
    with pytest.raises(OutputError) as e:
        write_json_atomic(tmp_path / "r.json", {})
    assert str(e.value) == f"cannot write {tmp_path / 'r.json'}: {err.strerror} (fix: {hint})"
    assert os.listdir(tmp_path) == []  # the temporary file is removed

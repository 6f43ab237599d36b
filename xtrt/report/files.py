"""Atomic file writers: JSON, text, and a context manager for anything else (plots).

Every writer writes to a hidden temporary file in the target folder and renames it over the
target with :func:`os.replace`, so a reader sees the old file or the complete new one, never
half of it, and a failed run leaves no file that looks finished. The target folder is created if
missing. Any OS failure becomes :class:`~xtrt.errors.OutputError` naming the path.

JSON is strict (no ``NaN``/``Infinity`` tokens, which many parsers reject): ``+inf`` and
``-inf`` are written as the strings ``"inf"`` and ``"-inf"`` (an SQNR of identical tensors is
``inf`` and that information is worth keeping), ``nan`` as ``null``. numpy scalars and arrays
become numbers and lists, paths become strings, tuples and sets become lists, dataclasses dicts.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from xtrt.errors import OutputError

__all__ = ["to_jsonable", "write_json_atomic", "write_text_atomic", "atomic_path"]


def _float(v: float) -> float | str | None:
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return v


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` that :func:`json.dumps` accepts with ``allow_nan=False`` (rules above)."""
    import numpy as np  # numpy is always installed; kept local so this module imports instantly

    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _float(float(obj))
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k) if not isinstance(k, str) else k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(v) for v in items]
    raise TypeError(f"cannot write {type(obj).__name__} to JSON: {obj!r}")


def _output_error(path: Path, e: OSError) -> OutputError:
    reason = e.strerror or str(e)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free disk space or write the outputs to another disk"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "choose an output folder you can write to, or fix its permissions"
    else:
        hint = "choose an output folder you can write to (its parents must be folders, not files)"
    return OutputError(f"cannot write {path}: {reason}", hint=hint)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); rename it to ``path`` on success.

    On an exception the temporary file is removed and the target left untouched. OS errors
    (creating the folder, renaming) become OutputError; errors raised by the body propagate.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.stem}.{secrets.token_hex(4)}.tmp{target.suffix}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _output_error(target, e) from e
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as e:
        raise _output_error(target, e) from e
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    target = Path(path)
    with atomic_path(target) as tmp:
        # os.open with 0o666 lets the umask decide the mode, as for any plain file
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return target


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; return the path."""
    return _write_bytes(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON (see the module docstring for inf/nan/numpy) atomically."""
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, ensure_ascii=False)
    return write_text_atomic(path, text + "\n")

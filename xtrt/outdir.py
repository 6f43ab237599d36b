"""A staged, locked output folder shared by ``xtrt.quant`` and ``xtrt.profile``.

A run opens the folder at its start (so an unusable folder fails before any work), writes every
file into a private staging folder and, when all of it is written, swaps the whole result in::

    OUT/.xtrt.lock                 flock held by the running process (its pid inside)
    OUT/.xtrt-manifest.json        the top-level names xtrt wrote here (and which tool)
    OUT/.xtrt-staging-PID.partial/ the run being written; XTRT-INCOMPLETE-RUN.txt inside says so
    OUT/.xtrt-old-PID/             the previous result while it is swapped out (removed at once)

Rules:

* Only names listed in the manifest are ever replaced or removed. A folder that holds anything
  else (a file or folder xtrt did not write) is refused with one line and left as it is; a
  subfolder holding its own manifest (``xtrt.profile``'s ``profile/`` inside a quant folder) is
  xtrt's and left alone. ``force=True`` accepts foreign entries and leaves them untouched (a
  collision with an output name is still refused).
* A second run into a locked folder fails at once, naming the other run's pid.
* SIGTERM and SIGINT remove the staging folder (the run then unwinds with
  :class:`Interrupted`); a SIGKILLed run's staging folder is removed by the next run into the
  folder (it holds the lock, so no other run is writing there).
* The swap renames the old entries away and the new ones in; the manifest names the union of
  both while it happens, so even a crash in that window leaves only files the next run may
  replace.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Iterable

from xtrt.errors import OutputError

__all__ = ["OutputDir", "Interrupted", "LOCK_NAME", "MANIFEST_NAME", "INCOMPLETE_MARKER"]

log = logging.getLogger(__name__)

LOCK_NAME = ".xtrt.lock"
MANIFEST_NAME = ".xtrt-manifest.json"
INCOMPLETE_MARKER = "XTRT-INCOMPLETE-RUN.txt"
_STAGING_RE = re.compile(r"^\.xtrt-(staging|old)-(\d+)(\.partial)?$")
_MANIFEST_TMP = ".xtrt-manifest.json.tmp"


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived during a run; its staging folder has been removed."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _hint(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space or choose an output folder on another disk"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "choose an output folder you can write to, or fix its permissions"
    return "choose a writable output folder (its parents must be folders, not files)"


def _is_control(name: str) -> bool:
    return name in (LOCK_NAME, MANIFEST_NAME, _MANIFEST_TMP) or bool(_STAGING_RE.match(name))


class OutputDir:
    """The output folder of one run (see the module docstring).

    Args:
        path: the folder (created with its parents if missing).
        tool: who writes it, e.g. ``"xtrt.quant"``; a folder another tool wrote is refused.
        force: accept entries xtrt did not write (they stay untouched).
        adopt: names that a run of an older xtrt (no manifest) wrote: a folder without a
            manifest that holds ``adopt[0]`` and nothing outside ``adopt`` is taken as xtrt's.
        option: how the user names the folder in messages (``output_dir``, ``--out``).

    Use ``with OutputDir(...) as od:`` (``open()`` / ``abort()``), write into ``od.staging``,
    then ``od.commit()`` before leaving the block; leaving without commit discards the run.
    """

    def __init__(self, path: str | os.PathLike, tool: str, *, force: bool = False,
                 adopt: Iterable[str] = (), option: str = "output folder",
                 handle_signals: bool = True):
        self.path = Path(os.path.abspath(os.fspath(path)))
        self.tool = tool
        self.force = force
        self.adopt = tuple(adopt)
        self.option = option
        self.handle_signals = handle_signals
        self.staging = self.path / f".xtrt-staging-{os.getpid()}.partial"
        self._lock_fd: int | None = None
        self._created: list[Path] = []
        self._old_handlers: dict[int, object] = {}
        self._previous: list[str] = []
        self._made_lock = False
        self.committed = False

    # -- opening ---------------------------------------------------------------------------
    def __enter__(self) -> "OutputDir":
        return self.open()

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()

    def open(self) -> "OutputDir":
        """Check the folder, take the lock, clean up dead runs, create the staging folder.

        Opening an open folder is a no-op (``with open_output_dir(...)`` is fine).
        """
        if self._lock_fd is not None:
            return self
        if self.path.exists() and not self.path.is_dir():
            raise OutputError(f"{self.option} {str(self.path)!r} is a file, not a folder",
                              "give a folder path (a new or empty folder)")
        try:
            self._created = [d for d in (self.path, *self.path.parents) if not d.exists()][::-1]
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
            self._previous = self._check_contents()
            self._remove_dead_runs()
            # made under a name the next run also cleans, marked, then renamed: a kill at any
            # point leaves either that or a marked staging folder, never an unmarked one
            making = self.staging.with_suffix("")
            making.mkdir()
            (making / INCOMPLETE_MARKER).write_text(
                f"{self.tool} (pid {os.getpid()}) was writing here and did not finish.\n"
                "Nothing in this folder is a result; the next run into the folder removes it.\n")
            making.rename(self.staging)
        except OSError as e:
            self.abort()
            raise OutputError(f"cannot write to {self.option} {str(self.path)!r}: "
                              f"{e.strerror or e}", _hint(e)) from e
        except BaseException:
            self.abort()
            raise
        self._install_signals()
        return self

    def _lock(self) -> None:
        self._made_lock = not (self.path / LOCK_NAME).exists()
        fd = os.open(self.path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputError(f"{self.option} {str(self.path)!r} is in use by another xtrt run "
                              f"(pid {other})",
                              "wait for that run to finish, or choose another output folder") \
                from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _read_manifest(self) -> dict | None:
        p = self.path / MANIFEST_NAME
        if not p.is_file():
            return None
        try:
            data = json.loads(p.read_text())
            if isinstance(data, dict) and isinstance(data.get("files"), list):
                return data
        except (OSError, ValueError):
            pass
        raise OutputError(f"{self.option} {str(self.path)!r} has an unreadable {MANIFEST_NAME}",
                          "choose a new or empty output folder")

    def _check_contents(self) -> list[str]:
        """Names a previous run of this tool wrote (replaceable); refuse foreign entries."""
        manifest = self._read_manifest()
        names = sorted(n for n in os.listdir(self.path) if not _is_control(n))
        if manifest is not None and manifest.get("tool") != self.tool:
            raise OutputError(f"{self.option} {str(self.path)!r} holds the outputs of "
                              f"{manifest.get('tool')}, not {self.tool}",
                              f"choose another folder for {self.tool}")
        if manifest is not None:
            ours = set(manifest["files"])
        elif self.adopt and self.adopt[0] in names and set(names) <= set(self.adopt):
            ours = set(names)  # written by an xtrt from before manifests
        else:
            ours = set()
        foreign = [n for n in names if n not in ours and not self._other_xtrt_folder(n)]
        if foreign and not self.force:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise OutputError(f"{self.option} {str(self.path)!r} holds files xtrt did not write "
                              f"({foreign[0]!r}{more}); xtrt never replaces or deletes them",
                              "choose a new or empty folder, or one an earlier xtrt run wrote")
        return sorted(ours)

    def _other_xtrt_folder(self, name: str) -> bool:
        return (self.path / name / MANIFEST_NAME).is_file()

    def _remove_dead_runs(self) -> None:
        """Staging/swap folders left by killed runs (we hold the lock: no other run writes)."""
        for name in os.listdir(self.path):
            m = _STAGING_RE.match(name)
            if m:  # our own pid too: an earlier run in this process that was not cleaned up
                log.info("removing %s left by an interrupted run (pid %s)", name, m.group(2))
                shutil.rmtree(self.path / name, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.path / _MANIFEST_TMP).unlink()

    # -- signals ---------------------------------------------------------------------------
    def _install_signals(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, old in self._old_handlers.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, old)  # type: ignore[arg-type]
        self._old_handlers = {}

    def _on_signal(self, signum, frame) -> None:
        self.abort()
        raise Interrupted(signum)

    # -- commit / abort --------------------------------------------------------------------
    def _write_manifest(self, files: Iterable[str], state: str) -> None:
        tmp = self.path / _MANIFEST_TMP
        tmp.write_text(json.dumps({"tool": self.tool, "state": state, "pid": os.getpid(),
                                   "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                time.gmtime()),
                                   "files": sorted(files)}, indent=2) + "\n")
        os.replace(tmp, self.path / MANIFEST_NAME)

    def commit(self) -> dict[str, Path]:
        """Swap the staged result in; return {name: final path} for the top-level entries."""
        new = sorted(n for n in os.listdir(self.staging)  # hidden names: the run's scratch
                     if n != INCOMPLETE_MARKER and not n.startswith("."))
        trash = self.path / f".xtrt-old-{os.getpid()}"
        clash = [n for n in new if n not in self._previous and (self.path / n).exists()
                 and not _is_control(n)]
        if clash:
            self.abort()
            raise OutputError(f"{self.option} {str(self.path)!r} now holds {clash[0]!r}, which xtrt "
                              "did not write; the run's outputs were not moved in",
                              "move that file away, or choose a new or empty folder")
        moved_old: list[str] = []
        moved_new: list[str] = []
        try:
            self._write_manifest(set(self._previous) | set(new), "committing")
            trash.mkdir()
            for n in self._previous:
                if os.path.lexists(self.path / n):
                    os.replace(self.path / n, trash / n)
                    moved_old.append(n)
            for n in new:
                os.replace(self.staging / n, self.path / n)
                moved_new.append(n)
            self._write_manifest(new, "complete")
        except OSError as e:
            self._roll_back(trash, moved_old, moved_new)
            self.abort()
            raise OutputError(f"cannot move the outputs into {str(self.path)!r}: "
                              f"{e.strerror or e}", _hint(e)) from e
        self.committed = True
        shutil.rmtree(trash, ignore_errors=True)
        shutil.rmtree(self.staging, ignore_errors=True)
        shutil.rmtree(self.staging.with_suffix(""), ignore_errors=True)
        self._finish()
        return {n: self.path / n for n in new}

    def _roll_back(self, trash: Path, moved_old: list[str], moved_new: list[str]) -> None:
        with contextlib.suppress(OSError):
            for n in moved_new:
                os.replace(self.path / n, self.staging / n)
            for n in moved_old:
                os.replace(trash / n, self.path / n)
            self._write_manifest(self._previous, "complete") if self._previous else \
                (self.path / MANIFEST_NAME).unlink(missing_ok=True)
            trash.rmdir()

    def abort(self) -> None:
        """Discard the staged run; remove folders this run created if nothing else is there."""
        if self.committed:
            return
        shutil.rmtree(self.staging, ignore_errors=True)
        shutil.rmtree(self.staging.with_suffix(""), ignore_errors=True)
        self._finish()

    def _finish(self) -> None:
        self._restore_signals()
        fd, self._lock_fd = self._lock_fd, None
        if fd is None:
            return
        if not self.committed and self._made_lock and \
                not (self.path / MANIFEST_NAME).exists():
            # a refused or failed first run leaves no trace of xtrt in the folder
            with contextlib.suppress(OSError):
                (self.path / LOCK_NAME).unlink()
            with contextlib.suppress(OSError):  # the folders this run made, if left empty
                for d in reversed(self._created):
                    d.rmdir()
        os.close(fd)

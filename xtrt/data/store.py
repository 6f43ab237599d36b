"""A re-iterable store of batches (and arrays computed for them) that stays within a memory budget.

Held-out evaluation runs the same images many times (method search, the final check, every
fallback trial) against FP32 outputs computed once.  Decoding them again for every pass is slow,
keeping them all in memory grows with the image count.  The store keeps batches in memory up to
``memory_bytes`` and writes the rest to ``.npy`` files in a private folder (read back one batch at a
time, deleted by :meth:`close`), so memory is bounded whatever the number of images.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from xtrt.data.source import Batch

__all__ = ["BatchStore"]

DEFAULT_MEMORY_BYTES = 256 << 20


@dataclass
class _Entry:
    batch: Batch | None            # in memory, or None when spilled
    extra: list[np.ndarray] | None
    files: list[Path] | None       # spilled arrays: feeds first (by key order), then extra
    keys: list[str]
    paths: list
    metas: list
    n_extra: int


class BatchStore:
    """Append ``(batch, extra arrays)`` once; iterate as often as needed.

    Args:
        memory_bytes: bytes of arrays kept in memory; later entries go to disk.
        spill_dir: parent folder of the spill folder (default: the system temp folder).
    """

    def __init__(self, memory_bytes: int = DEFAULT_MEMORY_BYTES, spill_dir: str | Path | None = None):
        self.memory_bytes = int(memory_bytes)
        self._parent = spill_dir
        self._dir: Path | None = None
        self._entries: list[_Entry] = []
        self._in_memory = 0
        self.spilled_batches = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def count(self) -> int:
        """Number of samples."""
        return sum(len(e.paths) if e.paths else self._size(e) for e in self._entries)

    @staticmethod
    def _size(e: _Entry) -> int:
        if e.batch is not None:
            return e.batch.size
        return int(np.load(e.files[0], mmap_mode="r").shape[0])

    def append(self, batch: Batch, extra: Sequence[np.ndarray] = ()) -> None:
        extra = [np.asarray(a) for a in extra]
        nbytes = sum(a.nbytes for a in batch.feeds.values()) + sum(a.nbytes for a in extra)
        keys = list(batch.feeds)
        if self._in_memory + nbytes <= self.memory_bytes:
            self._in_memory += nbytes
            self._entries.append(_Entry(batch, extra, None, keys, list(batch.paths),
                                        list(batch.metas), len(extra)))
            return
        if self._dir is None:
            if self._parent is not None:
                Path(self._parent).mkdir(parents=True, exist_ok=True)
            self._dir = Path(tempfile.mkdtemp(prefix="xtrt-spill-", dir=self._parent))
        i = len(self._entries)
        files = []
        for j, a in enumerate([batch.feeds[k] for k in keys] + extra):
            f = self._dir / f"{i:06d}-{j}.npy"
            np.save(f, a, allow_pickle=False)
            files.append(f)
        self.spilled_batches += 1
        self._entries.append(_Entry(None, None, files, keys, list(batch.paths), list(batch.metas),
                                    len(extra)))

    def items(self, limit: int | None = None) -> Iterator[tuple[Batch, list[np.ndarray]]]:
        """``(batch, extra)`` in append order; spilled ones are read back one at a time."""
        for n, e in enumerate(self._entries):
            if limit is not None and n >= limit:
                return
            if e.batch is not None:
                yield e.batch, e.extra
                continue
            arrays = [np.load(f, allow_pickle=False) for f in e.files]
            feeds = dict(zip(e.keys, arrays[:len(e.keys)]))
            yield Batch(feeds, list(e.paths), list(e.metas)), arrays[len(e.keys):]

    def __iter__(self) -> Iterator[Batch]:
        for b, _ in self.items():
            yield b

    def batches(self, limit: int | None = None) -> list[Batch]:
        """The first ``limit`` batches as a list (for the few-batch analyses)."""
        return [b for b, _ in self.items(limit)]

    @property
    def paths(self) -> list:
        return [p for e in self._entries for p in e.paths]

    @property
    def metas(self) -> list:
        return [m for e in self._entries for m in e.metas]

    def close(self) -> None:
        """Delete the spill folder (the in-memory entries stay usable)."""
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._entries = [e for e in self._entries if e.batch is not None]

    def __enter__(self) -> "BatchStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

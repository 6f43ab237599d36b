"""Decode + preprocess in worker threads, ahead of the model: the ``--workers N`` pipeline.

:class:`PrefetchFeed` gives the batches :class:`xtrt.profile.stages.ImageFeed` gives (the same
files, cycled in the same order, the same preprocessing, bit-identical arrays), but decodes and
preprocesses them in ``workers`` threads (PIL's decoder and resizer and numpy release the GIL)
while the model runs.  Each image is written straight into its row of a batch buffer (pinned on
CUDA, so the host-to-device copy needs no staging copy); a ring of ``depth + 1`` buffers bounds
the prefetch window: ``depth`` batches are being filled while the consumer holds one.

The consumer's wait in :meth:`PrefetchFeed.next` is the decode + preprocess time that the
workers did not hide behind the rest of the step.
"""
from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from xtrt.errors import DataError

__all__ = ["PrefetchFeed"]


class PrefetchFeed:
    """Batches of ``batch`` preprocessed images, filled by ``workers`` threads, in file order.

    Args:
        files: the photos (cycled, as :class:`~xtrt.profile.stages.ImageFeed` does).
        preprocess: image (RGB uint8 HWC) -> (CHW array, meta).
        input_name, sample_shape, dtype: the model input the batches feed.
        batch: images per batch.
        workers: decode/preprocess threads.
        depth: batches filled ahead (None: enough to keep every worker busy, at least 2).
        alloc: (tag, shape, dtype) -> a batch buffer (e.g. a pinned one); None: ``np.empty``.
    """

    synthetic = False
    prefetched = True

    def __init__(self, files: Sequence[Path], preprocess: Callable, input_name: str,
                 sample_shape: Sequence[int], dtype, batch: int, workers: int, *,
                 depth: int | None = None, alloc: Callable | None = None):
        self.files = list(files)
        self.preprocess_one = preprocess
        self.input_name = input_name
        self.sample_shape = tuple(sample_shape)
        self.dtype = np.dtype(dtype)
        self.batch_size = int(batch)
        self.workers = max(1, int(workers))
        self.depth = depth or max(2, -(-2 * self.workers // self.batch_size))
        shape = (self.batch_size, *self.sample_shape)
        alloc = alloc or (lambda tag, shp, dt: np.empty(shp, dt))
        n_buffers = self.depth + 1               # the window: the batch held + depth ahead
        self._buffers = [alloc(i, shape, self.dtype) for i in range(n_buffers)]
        self._free = deque(range(len(self._buffers)))
        self._pending: deque = deque()          # (slot, futures)
        self._current: int | None = None
        self._cycle = itertools.cycle(self.files)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="xtrt-prefetch")
        self._top_up()

    def _fill_one(self, slot: int, row: int, path: Path) -> None:
        """Decode + preprocess one image into row ``row`` of buffer ``slot`` (in a worker)."""
        from xtrt.data.images import decode_image

        x, _meta = self.preprocess_one(decode_image(path))
        if tuple(x.shape) != self.sample_shape:
            raise DataError(f"preprocessing gives {list(x.shape)} but input {self.input_name!r} "
                            f"takes {list(self.sample_shape)}",
                            "make preprocess.size/crop (or the plugin's output) match the model "
                            "input, or set --imgsz")
        self._buffers[slot][row] = x    # the cast np.stack(...).astype(dtype) would make

    def _top_up(self) -> None:
        while self._free:            # every free buffer is being filled
            slot = self._free.popleft()
            futs = [self._pool.submit(self._fill_one, slot, i, next(self._cycle))
                    for i in range(self.batch_size)]
            self._pending.append((slot, futs))

    def next(self, batch: int | None = None) -> np.ndarray:
        """The next batch, in file order.  The array is valid until the next call (its buffer is
        then refilled); copy it to keep it."""
        if batch is not None and batch != self.batch_size:
            raise ValueError(f"this feed makes batches of {self.batch_size}, not {batch}")
        if self._current is not None:
            self._free.append(self._current)
            self._current = None
        self._top_up()
        slot, futs = self._pending.popleft()
        try:
            for f in futs:
                f.result()
        except BaseException:
            self._free.append(slot)
            raise
        self._current = slot
        self._top_up()
        return self._buffers[slot]

    def close(self) -> None:
        """Stop the workers (pending work is cancelled)."""
        for _, futs in self._pending:
            for f in futs:
                f.cancel()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "PrefetchFeed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

"""Calibration / evaluation sources: batches of numpy arrays keyed by input name.

A source knows nothing of PPQ.  It streams: images are decoded and preprocessed a few at a time
(by ``workers`` threads, in file order, so the batches are bit-identical to a serial run), and
preprocessed batches are kept for re-iteration only while they fit a memory budget
(``cache_bytes``); past it every pass decodes again, so memory does not grow with the image count.
"""
from __future__ import annotations

import logging
import os
import random
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from xtrt.data.images import TENSOR_SUFFIXES, decode_image
from xtrt.data.preprocess import PreMeta
from xtrt.errors import DataError, XtrtError

__all__ = ["Batch", "BatchSource", "split_files", "expected_sample_shape", "default_workers"]

#: preprocessed batches a source keeps in memory for re-iteration (past it: decode again)
DEFAULT_CACHE_BYTES = 256 << 20


def default_workers() -> int:
    """Decode threads: one per core, at most 8 (PIL's decoder and resizer release the GIL)."""
    return max(1, min(8, os.cpu_count() or 1))

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """One batch: ``feeds`` for the model, the files it came from and how each was preprocessed."""

    feeds: dict[str, np.ndarray]
    paths: list[Path] = field(default_factory=list)
    metas: list[PreMeta] = field(default_factory=list)

    @property
    def size(self) -> int:
        return next(iter(self.feeds.values())).shape[0]


def split_files(files: Sequence[Path], calib_count: int | None, eval_count: int | None,
                *, seed: int = 0, shuffle: bool = False) -> tuple[list[Path], list[Path]]:
    """Deterministically split files into calibration and held-out evaluation sets (disjoint)."""
    files = list(files)
    if shuffle:
        random.Random(seed).shuffle(files)
    n_cal = len(files) if calib_count is None else min(calib_count, len(files))
    cal, rest = files[:n_cal], files[n_cal:]
    ev = rest if eval_count is None else rest[:eval_count]
    return cal, ev


def expected_sample_shape(shape: Sequence) -> tuple | None:
    """The per-sample shape (without batch) where fully known, else None."""
    rest = list(shape[1:])
    return tuple(int(d) for d in rest) if all(isinstance(d, int) and d > 0 for d in rest) else None


class BatchSource:
    """Iterable of :class:`Batch` over image or tensor files.

    Args:
        files: image files and/or .npy/.npz files (deterministic order is the caller's).
        input_name: the model input the arrays feed.
        sample_shape: expected per-sample shape (C, H, W); None skips the check.
        preprocess: image -> (chw float32, PreMeta); needed only for image files.
        batch_size: samples per batch (the last batch may be smaller unless drop_last).
        limit: stop after this many samples.
        cache_bytes: keep preprocessed batches for re-iteration up to this many bytes.
        workers: decode/preprocess threads (None: :func:`default_workers`; 1: serial).
        progress: wrap iteration in a tqdm bar with this description (None: no bar).
        other_inputs: a multi-input model's other inputs, name -> (per-sample dims, dtype name):
            only ``.npz`` files can feed them (one array per input name); images cannot.
    """

    def __init__(self, files: Sequence[Path], input_name: str, sample_shape: tuple | None,
                 preprocess: Callable | None, batch_size: int = 1, *, limit: int | None = None,
                 drop_last: bool = False, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 progress: str | None = None, dtype=np.float32, workers: int | None = None,
                 other_inputs: dict | None = None):
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}", "use a positive batch size")
        self.files = list(files)
        self.input_name = input_name
        self.sample_shape = sample_shape
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.limit = limit
        self.drop_last = drop_last
        self.cache_bytes = cache_bytes
        self.progress = progress
        self.dtype = np.dtype(dtype)
        self.workers = default_workers() if workers is None else max(1, int(workers))
        self.other_inputs = dict(other_inputs or {})
        self.skipped: list[tuple[Path, str]] = []
        self.used = 0
        self._cache: list[Batch] | None = None

    # -- samples -------------------------------------------------------------------------------
    def _npz_inputs(self, path: Path) -> Iterator[tuple[dict, PreMeta]]:
        """Samples of a multi-input model from one ``.npz``: an array under every input name."""
        names = [self.input_name, *self.other_inputs]
        if path.suffix.lower() != ".npz":
            raise DataError(f"{path.name}: a .npy holds one array, but the model has inputs "
                            f"{names}", "save one .npz per batch with an array per input, "
                            f"np.savez(f, {', '.join(f'{n}=...' for n in names)})")
        with np.load(path, allow_pickle=False) as z:
            missing = [n for n in names if n not in z.files]
            if missing:
                raise DataError(f"{path.name}: npz holds {z.files}, not {missing}",
                                f"save an array per model input, np.savez(f, "
                                f"{', '.join(f'{n}=...' for n in names)})")
            specs = {self.input_name: (list(self.sample_shape or z[self.input_name].shape[1:]),
                                       self.dtype.name), **self.other_inputs}
            arrays = {n: _as_batch(path, n, z[n], *specs[n]) for n in names}
        sizes = {len(a) for a in arrays.values()}
        if len(sizes) != 1:
            raise DataError(f"{path.name}: the arrays hold different sample counts "
                            f"{ {n: len(a) for n, a in arrays.items()} }",
                            "save the same number of samples for every input")
        for i in range(sizes.pop()):
            sample = {n: a[i] for n, a in arrays.items()}
            yield sample, PreMeta(tuple(sample[self.input_name].shape[-2:]))

    def _tensor_samples(self, path: Path) -> Iterator[tuple[np.ndarray, PreMeta]]:
        if self.other_inputs:
            yield from self._npz_inputs(path)
            return
        try:
            if path.suffix.lower() == ".npz":
                with np.load(path, allow_pickle=False) as z:
                    key = self.input_name if self.input_name in z.files else (
                        z.files[0] if len(z.files) == 1 else None)
                    if key is None:
                        raise DataError(
                            f"{path.name}: npz holds {z.files}, none named {self.input_name!r}",
                            f"save the array under the input name, np.savez(f, {self.input_name}=x)")
                    arr = z[key]
            else:
                arr = np.load(path, allow_pickle=False)
        except XtrtError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read tensor file {str(path)!r}: {exc}",
                            "re-save it with numpy.save / numpy.savez") from exc
        if not np.issubdtype(arr.dtype, np.floating):
            raise DataError(f"tensor file {path.name} has dtype {arr.dtype}, the model input "
                            f"{self.input_name!r} takes {self.dtype}",
                            "save preprocessed float32 arrays (x.astype('float32'))")
        if self.sample_shape is not None:
            want = tuple(self.sample_shape)
            if arr.shape == want:
                arr = arr[None]
            elif arr.ndim != len(want) + 1 or tuple(arr.shape[1:]) != want:
                raise DataError(f"tensor file {path.name} has shape {list(arr.shape)}, the model input "
                                f"{self.input_name!r} takes [N, {', '.join(map(str, want))}]",
                                "save arrays of the model's input shape (one sample or a batch)")
        if not np.isfinite(arr).all():
            self._skip(path, f"holds {arr.size - int(np.isfinite(arr).sum())} NaN/Inf values")
            return
        for sample in arr:
            yield sample.astype(self.dtype, copy=False), PreMeta(tuple(sample.shape[-2:]))

    def _decode(self, path: Path):
        """Decode + preprocess one image (runs in a worker): (x, meta) or the DataError."""
        try:
            img = decode_image(path)
        except DataError as exc:
            return exc
        if self.preprocess is None:
            raise DataError("image files need a preprocess preset", "set preprocess.preset")
        x, meta = self.preprocess(img)
        return np.asarray(x).astype(self.dtype, copy=False), meta

    def _image_sample(self, path: Path, result) -> tuple[np.ndarray, PreMeta] | None:
        if self.other_inputs:
            names = [self.input_name, *self.other_inputs]
            raise DataError(f"images can feed only the image input {self.input_name!r}; the "
                            f"model also takes {list(self.other_inputs)}",
                            "give .npz calibration files with an array per input, np.savez(f, "
                            f"{', '.join(f'{n}=...' for n in names)}) (set input.name if "
                            "the image input is another one)")
        if isinstance(result, DataError):
            self._skip(path, result.message)
            return None
        x, meta = result
        if not np.isfinite(x).all():
            self._skip(path, "preprocessing gives NaN/Inf values")
            return None
        if self.sample_shape is not None and tuple(x.shape) != tuple(self.sample_shape):
            raise DataError(f"preprocessing gives {list(x.shape)} but input {self.input_name!r} "
                            f"takes {list(self.sample_shape)}",
                            "make preprocess.size/crop match the model input (or input.shape)")
        return x, meta

    def _decoded(self) -> Iterator[tuple[Path, object]]:
        """(path, decode result) in file order; images decoded ahead by a bounded thread window."""
        if self.workers <= 1:
            for path in self.files:
                yield path, (None if path.suffix.lower() in TENSOR_SUFFIXES else self._decode(path))
            return
        window = 2 * self.workers
        with ThreadPoolExecutor(self.workers, thread_name_prefix="xtrt-decode") as pool:
            pending: deque = deque()
            files = iter(self.files)
            try:
                while True:
                    while len(pending) < window:
                        path = next(files, None)
                        if path is None:
                            break
                        tensor = path.suffix.lower() in TENSOR_SUFFIXES
                        pending.append((path, None if tensor else pool.submit(self._decode, path)))
                    if not pending:
                        return
                    path, fut = pending.popleft()
                    yield path, (fut.result() if fut is not None else None)
            finally:
                for _, fut in pending:
                    if fut is not None:
                        fut.cancel()

    def _skip(self, path: Path, why: str) -> None:
        self.skipped.append((path, why))
        log.debug("skipped %s: %s", path, why)

    def _samples(self) -> Iterator[tuple[np.ndarray, PreMeta, Path]]:
        n = 0
        for path, result in self._decoded():
            if path.suffix.lower() in TENSOR_SUFFIXES:
                items = ((x, m) for x, m in self._tensor_samples(path))
            else:
                one = self._image_sample(path, result)
                items = iter([one] if one is not None else [])
            for x, meta in items:
                yield x, meta, path
                n += 1
                if self.limit is not None and n >= self.limit:
                    return

    # -- batches -------------------------------------------------------------------------------
    def _generate(self) -> Iterator[Batch]:
        self.skipped = []
        xs, metas, paths = [], [], []
        count = 0
        lo, hi = np.inf, -np.inf
        for x, meta, path in self._samples():
            xs.append(x), metas.append(meta), paths.append(path)
            img = x[self.input_name] if isinstance(x, dict) else x   # the image input decides
            lo, hi = min(lo, float(img.min(initial=np.inf))), max(hi, float(img.max(initial=-np.inf)))
            if len(xs) == self.batch_size:
                count += len(xs)
                yield Batch(self._stack(xs), paths, metas)
                xs, metas, paths = [], [], []
        if xs and not self.drop_last:
            count += len(xs)
            yield Batch(self._stack(xs), paths, metas)
        self.used = count
        if count == 0:
            what = f"{len(self.files)} file(s)"
            why = f"; {len(self.skipped)} unreadable or not finite, e.g. " \
                  f"{self.skipped[0][0].name}: {self.skipped[0][1]}" if self.skipped else ""
            raise DataError(f"no usable samples in {what}{why}",
                            "give a folder of readable jpg/png/bmp/webp images or finite "
                            ".npy/.npz tensors")
        if lo == hi:
            raise DataError(f"every value of the {count} sample(s) from {len(self.files)} file(s) "
                            f"is {lo:g}: constant data gives calibration nothing to measure",
                            "check the files (all-zero tensors?) and preprocess.scale/mean/std")
        if self.skipped:
            log.warning("skipped %d unreadable or non-finite file(s), e.g. %s: %s",
                        len(self.skipped), self.skipped[0][0].name, self.skipped[0][1])

    def _stack(self, xs: list) -> dict[str, np.ndarray]:
        if isinstance(xs[0], dict):
            return {k: np.stack([x[k] for x in xs]) for k in xs[0]}
        return {self.input_name: np.stack(xs)}

    def __iter__(self) -> Iterator[Batch]:
        if self._cache is not None:
            yield from self._cache
            return
        kept: list[Batch] | None = []
        size = 0
        gen = self._generate()
        if self.progress:
            from tqdm import tqdm

            total = self.limit if self.limit is not None else len(self.files)
            gen = _progress(gen, tqdm(total=total, desc=self.progress, unit="img", leave=False))
        for batch in gen:
            if kept is not None:
                size += sum(a.nbytes for a in batch.feeds.values())
                if size <= self.cache_bytes:
                    kept.append(batch)
                else:
                    kept = None
            yield batch
        if kept is not None:
            self._cache = kept

    def __len__(self) -> int:
        """Number of batches (an upper bound before the first pass when files are unreadable)."""
        if self._cache is not None:
            return len(self._cache)
        n = len(self.files) if self.limit is None else min(self.limit, len(self.files))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def _as_batch(path: Path, name: str, arr: np.ndarray, dims: list, dtype: str) -> np.ndarray:
    """``arr`` as [n, *dims] of ``dtype`` (one sample gets a batch axis); same-kind casts only."""
    want = np.dtype(dtype)
    if np.issubdtype(want, np.floating) != np.issubdtype(arr.dtype, np.floating) or \
            arr.dtype.kind == "b" and want.kind != "b":
        raise DataError(f"{path.name}: array {name!r} has dtype {arr.dtype}, the model input "
                        f"takes {want}", f"save {name!r} as {want} (x.astype('{want}'))")
    if tuple(arr.shape) == tuple(dims):
        arr = arr[None]
    elif arr.ndim != len(dims) + 1 or list(arr.shape[1:]) != list(dims):
        raise DataError(f"{path.name}: array {name!r} has shape {list(arr.shape)}, the model "
                        f"input takes [N, {', '.join(map(str, dims))}]",
                        "save arrays of the model's input shape (one sample or a batch)")
    return arr.astype(want, copy=False)


def _progress(gen: Iterator[Batch], bar) -> Iterator[Batch]:
    try:
        for batch in gen:
            bar.update(batch.size)
            yield batch
    finally:
        bar.close()

"""The profiled pipeline: where inputs come from, what post-processing is, and one timed step.

A step runs the six stages of :data:`xtrt.profile.verdict.STAGES` in order, each inside a
``record_function`` range of its name (for the trace) and timed with ``perf_counter`` (for the
latency figures, which therefore do not depend on the profiler's own bookkeeping).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import numpy as np

from xtrt.errors import DataError

__all__ = ["ImageFeed", "SyntheticFeed", "Postprocess", "make_postprocess", "run_step",
           "StepTimes", "check_images"]

log = logging.getLogger(__name__)

RangeFactory = Callable[[str], ContextManager]


def _no_range(name: str) -> ContextManager:
    return contextlib.nullcontext()


def check_images(files: Sequence[Path], limit: int) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Decode up to ``limit`` readable files once; return (readable, skipped with reasons).

    Unreadable files are skipped (the caller warns), as in ``xtrt.quant``; none readable is an error.
    """
    from xtrt.data.images import decode_image

    good: list[Path] = []
    bad: list[tuple[Path, str]] = []
    for path in files:
        if len(good) >= limit:
            break
        if path.suffix.lower() in (".npy", ".npz"):
            bad.append((path, "tensor files are not images"))
            continue
        try:
            decode_image(path)
        except DataError as exc:
            bad.append((path, exc.message))
            continue
        good.append(path)
    if not good:
        why = f"; e.g. {bad[0][0].name}: {bad[0][1]}" if bad else ""
        raise DataError(f"no readable images among {len(files)} file(s){why}",
                        "give --images a folder of readable jpg/png/bmp/webp photos, "
                        "or leave it out to profile on synthetic tensors")
    return good, bad


class ImageFeed:
    """Real photos: decode (PIL) and preprocess (the xtrt.quant presets/plugins) per batch.

    Files are cycled so any batch size can be filled from a small folder.
    """

    synthetic = False

    def __init__(self, files: Sequence[Path], preprocess: Callable, input_name: str,
                 sample_shape: tuple[int, ...], dtype=np.float32):
        self.files = list(files)
        self.preprocess_one = preprocess
        self.input_name = input_name
        self.sample_shape = tuple(sample_shape)
        self.dtype = np.dtype(dtype)
        self._cycle = itertools.cycle(self.files)

    def decode(self, batch: int) -> list[np.ndarray]:
        from xtrt.data.images import decode_image

        return [decode_image(next(self._cycle)) for _ in range(batch)]

    def preprocess(self, images: list[np.ndarray]) -> np.ndarray:
        xs = []
        for img in images:
            x, _meta = self.preprocess_one(img)
            if tuple(x.shape) != self.sample_shape:
                raise DataError(f"preprocessing gives {list(x.shape)} but input {self.input_name!r} "
                                f"takes {list(self.sample_shape)}",
                                "make preprocess.size/crop (or the plugin's output) match the model "
                                "input, or set --imgsz")
            xs.append(x)
        return np.stack(xs).astype(self.dtype, copy=False)


class SyntheticFeed:
    """Random tensors of the model's input shape; decode and preprocess are not measured."""

    synthetic = True

    def __init__(self, input_name: str, sample_shape: tuple[int, ...], dtype=np.float32, seed: int = 0):
        self.input_name = input_name
        self.sample_shape = tuple(sample_shape)
        rng = np.random.default_rng(seed)
        self._pool = rng.random((8, *self.sample_shape), dtype=np.float32).astype(dtype)

    def decode(self, batch: int) -> None:
        return None

    def preprocess(self, images) -> np.ndarray:  # images is None
        raise AssertionError("not called for synthetic inputs")

    def batch(self, batch: int) -> np.ndarray:
        idx = np.arange(batch) % len(self._pool)
        return self._pool[idx]


# -- post-processing for plugin-free models -------------------------------------------------------
@dataclass
class Postprocess:
    """Host post-processing of the model outputs; ``kind`` names it in the report."""

    kind: str
    fn: Callable[[list[np.ndarray]], object]


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float, max_det: int) -> np.ndarray:
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    order = scores.argsort()[::-1]
    keep = []
    while order.size and len(keep) < max_det:
        i = order[0]
        keep.append(i)
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = (xx2 - xx1).clip(0) * (yy2 - yy1).clip(0)
        ovr = inter / (areas[i] + areas[order[1:]] - inter + 1e-9)
        order = order[1:][ovr <= iou]
    return np.asarray(keep, dtype=np.int64)


def yolo_decode_nms(outputs: list[np.ndarray], conf: float = 0.25, iou: float = 0.45,
                    max_det: int = 100) -> list[np.ndarray]:
    """YOLOv8-style ``[N, 4 + classes, anchors]`` (cx, cy, w, h, scores) -> per image
    ``[k, 6]`` (x1, y1, x2, y2, score, class) after class-aware NMS."""
    pred = outputs[0]
    result = []
    for p in pred:
        p = p.T                                   # [anchors, 4 + C]
        cls = p[:, 4:].argmax(1)
        score = p[np.arange(len(p)), 4 + cls]
        m = score > conf
        b, s, c = p[m, :4], score[m], cls[m]
        xyxy = np.concatenate([b[:, :2] - b[:, 2:] / 2, b[:, :2] + b[:, 2:] / 2], 1)
        keep = _nms(xyxy + c[:, None] * 4096.0, s, iou, max_det) if len(s) else np.zeros(0, int)
        result.append(np.concatenate([xyxy[keep], s[keep, None], c[keep, None]], 1))
    return result


def topk_softmax(outputs: list[np.ndarray], k: int = 5) -> list[np.ndarray]:
    """Classifier ``[N, classes]`` -> top-k class ids per image."""
    x = outputs[0].astype(np.float64)
    e = np.exp(x - x.max(1, keepdims=True))
    p = e / e.sum(1, keepdims=True)
    return list(np.argsort(-p, 1)[:, :k])


def make_postprocess(output_shapes: Sequence[Sequence]) -> Postprocess:
    """Pick host post-processing from the output shapes of a plugin-free model.

    One output ``[N, 4 + C, A]`` with ``A > 4 + C``: YOLOv8 decode + NMS (numpy). One output
    ``[N, K]``: softmax + top-5. Anything else: none (the stage stays empty).
    """
    if len(output_shapes) == 1:
        shape = list(output_shapes[0])
        if len(shape) == 3 and isinstance(shape[1], int) and shape[1] > 4 and \
                (not isinstance(shape[2], int) or shape[2] > shape[1]):
            return Postprocess("YOLO decode + NMS (numpy)", yolo_decode_nms)
        if len(shape) == 2:
            return Postprocess("softmax + top-5 (numpy)", topk_softmax)
    return Postprocess("none", lambda outs: outs)


# -- one step -------------------------------------------------------------------------------------
@dataclass
class StepTimes:
    """Seconds spent in each stage of one step, and in the whole step."""

    stages: dict[str, float]
    wall: float


def run_step(feed, backend, post: Postprocess | None, batch: int,
             extra_feeds: dict[str, np.ndarray] | None = None,
             rf: RangeFactory | None = None) -> StepTimes:
    """Run one batch through every stage and time each.

    ``backend`` provides ``to_device``, ``infer``, ``to_host``, ``tail`` (None when the model has
    no plugin tail) and ``sync``; ``rf`` makes the named trace ranges (None: no ranges).
    """
    rf = rf or _no_range
    pc = time.perf_counter
    t: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(name: str):
        """The named trace range, and its time in ``t``."""
        with rf(name):
            t0 = pc()
            yield
            t[name] = pc() - t0

    start = pc()
    if feed.synthetic:
        x = feed.batch(batch)
    elif getattr(feed, "prefetched", False):
        with stage("decode"):        # waiting for the workers (xtrt.profile.prefetch): the
            x = feed.next(batch)     # decode + preprocess time they did not hide
    else:
        with stage("decode"):
            images = feed.decode(batch)
        with stage("preprocess"):
            x = feed.preprocess(images)
    feeds = {feed.input_name: x}
    if extra_feeds:
        feeds.update(extra_feeds)
    with stage("h2d"):
        dev = backend.to_device(feeds)
        backend.sync()
    with stage("inference"):
        dev_out = backend.infer(dev)
        backend.sync()
    with stage("d2h"):
        outs = backend.to_host(dev_out)
    with stage("postprocess"):
        if backend.tail is not None:
            outs = backend.tail(feeds, outs)
        elif post is not None:
            post.fn(outs)
    return StepTimes(t, pc() - start)

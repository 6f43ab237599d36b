"""Decode and preprocess on the GPU: nvJPEG (``torchvision.io.decode_jpeg(..., device='cuda')``)
plus letterbox / resize-crop / normalise in torch on the device.

The host only reads the files (worker threads); the compressed bytes go to nvJPEG in one batched
call, and the decoded images are resized, padded or cropped and normalised on the device into a
batch tensor that ONNX Runtime reads through I/O binding.  No float image crosses the bus.
Files nvJPEG does not take (PNG, BMP, ...; a JPEG it refuses) are decoded on the host with
:func:`xtrt.data.images.decode_image` and preprocessed on the device like the rest.

The pixels differ slightly from the host path (PIL's decoder and its bilinear resize against
nvJPEG's IDCT and torch's antialiased bilinear): :func:`torch_letterbox` and
:func:`torch_resize_crop` run on any torch device, so the tests compare them with
:func:`xtrt.data.preprocess.letterbox` on the CPU.  xtrt.quant keeps the host path.

:func:`gpu_decode_unavailable` says, in one line, why the path cannot run here (no CUDA, no
torchvision, a preprocess plugin); callers show that line instead of failing.
"""
from __future__ import annotations

import itertools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ["gpu_decode_unavailable", "torch_letterbox", "torch_resize_crop",
           "device_preprocess", "GpuDecodeFeed", "JPEG_SUFFIXES"]

JPEG_SUFFIXES = (".jpg", ".jpeg")


def gpu_decode_unavailable(device: str, pre=None) -> str | None:
    """None when GPU decode can run here for preprocessing ``pre`` (a PreprocessConfig), else why not."""
    if device != "cuda":
        return "GPU decode needs --device cuda"
    if pre is not None and pre.preset not in ("letterbox", "resize_crop"):
        return (f"GPU decode runs the letterbox and resize_crop presets only, not "
                f"preset {pre.preset!r}")
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        return f"GPU decode needs torch ({exc})"
    if not torch.cuda.is_available():
        return "GPU decode needs CUDA (torch.cuda.is_available() is False)"
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except Exception as exc:   # not installed, or built against another torch
        return f"GPU decode needs torchvision with nvJPEG (import failed: {type(exc).__name__}: {exc})"
    return None


def _finish(img, out, color: str, scale: float, mean, std):
    """float [N,] C, H, W ``img`` (0..255) -> ``out`` float: colour order, scale, mean, std."""
    import torch

    if color == "bgr":
        img = img.flip(-3)
    x = img * scale
    if mean is not None:
        x = x - torch.tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    if std is not None:
        x = x / torch.tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    out.copy_(x)
    return out


def _resize(img, nh: int, nw: int):
    """uint8/float [N,] C, H, W -> float of (nh, nw): bilinear, antialiased when shrinking (as
    PIL's resize, whose uint8 result the rounding gives)."""
    import torch.nn.functional as F

    x = img.float()
    if tuple(x.shape[-2:]) == (nh, nw):
        return x
    batched = x.dim() == 4
    x = F.interpolate(x if batched else x[None], size=(nh, nw), mode="bilinear",
                      align_corners=False, antialias=True)
    return (x if batched else x[0]).clamp_(0, 255).round_()


def torch_letterbox(img, size: Sequence[int], out=None, *, pad_value: int = 114,
                    color: str = "rgb", scale: float = 1 / 255.0, mean=None, std=None):
    """:func:`xtrt.data.preprocess.letterbox` in torch: uint8 CHW ``img`` (or N images of one
    size, NCHW) -> float CHW / NCHW (into ``out`` when given) on ``img``'s device."""
    import torch

    h, w = int(img.shape[-2]), int(img.shape[-1])
    lead = tuple(img.shape[:-3])
    th, tw = int(size[0]), int(size[1])
    r = min(th / h, tw / w)
    nh, nw = max(1, round(h * r)), max(1, round(w * r))
    top, left = (th - nh) // 2, (tw - nw) // 2
    canvas = torch.full((*lead, 3, th, tw), float(pad_value), dtype=torch.float32,
                        device=img.device)
    canvas[..., top:top + nh, left:left + nw] = _resize(img, nh, nw)
    if out is None:
        out = torch.empty((*lead, 3, th, tw), dtype=torch.float32, device=img.device)
    return _finish(canvas, out, color, scale, mean, std)


def torch_resize_crop(img, short_side: int, crop: Sequence[int], out=None, *, color: str = "rgb",
                      scale: float = 1 / 255.0, mean=(0.485, 0.456, 0.406),
                      std=(0.229, 0.224, 0.225)):
    """:func:`xtrt.data.preprocess.resize_crop` in torch (uint8 CHW / NCHW -> float)."""
    import torch

    h, w = int(img.shape[-2]), int(img.shape[-1])
    lead = tuple(img.shape[:-3])
    r = short_side / min(h, w)
    nh, nw = max(int(crop[0]), round(h * r)), max(int(crop[1]), round(w * r))
    ch, cw = int(crop[0]), int(crop[1])
    top, left = (nh - ch) // 2, (nw - cw) // 2
    cropped = _resize(img, nh, nw)[..., top:top + ch, left:left + cw]
    if out is None:
        out = torch.empty((*lead, 3, ch, cw), dtype=torch.float32, device=img.device)
    return _finish(cropped, out, color, scale, mean, std)


def device_preprocess(pre, input_hw: tuple[int, int] | None) -> Callable:
    """A PreprocessConfig (letterbox / resize_crop) -> ``fn(uint8 CHW or NCHW tensor, out) ->
    out``, the torch twin of :func:`xtrt.data.preprocess.build_preprocess` with the same defaults."""
    if pre.preset == "letterbox":
        size = tuple(pre.size) if pre.size else input_hw
        return lambda img, out: torch_letterbox(img, size, out, pad_value=pre.pad_value,
                                                color=pre.color, scale=pre.scale, mean=pre.mean,
                                                std=pre.std)
    if pre.preset == "resize_crop":
        crop = tuple(pre.crop) if pre.crop else input_hw
        short = pre.short_side or int(round(max(crop) * 256 / 224))
        mean = pre.mean if pre.mean is not None else (0.485, 0.456, 0.406)
        std = pre.std if pre.std is not None else (0.229, 0.224, 0.225)
        return lambda img, out: torch_resize_crop(img, short, crop, out, color=pre.color,
                                                  scale=pre.scale, mean=mean, std=std)
    raise ValueError(f"no device preprocessing for preset {pre.preset!r}")


def _read(path: Path):
    """In a worker: ('jpeg', raw bytes as a uint8 tensor) or ('image', decoded uint8 CHW tensor)."""
    import torch

    if path.suffix.lower() in JPEG_SUFFIXES:
        return "jpeg", torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8), path
    return "image", torch.from_numpy(_writable(path)).permute(2, 0, 1).contiguous(), path


def _writable(path: Path) -> np.ndarray:
    """:func:`xtrt.data.images.decode_image`, as an array torch may wrap (writable)."""
    from xtrt.data.images import decode_image

    hwc = decode_image(path)
    return hwc if hwc.flags.writeable else hwc.copy()


class GpuDecodeFeed:
    """Batches of ``batch`` images decoded and preprocessed on ``device``, in file order (cycled).

    ``workers`` threads read files ahead (``depth`` batches).  One producer thread decodes each
    batch with nvJPEG and preprocesses every image into a device batch tensor (two, used in turn)
    on its own CUDA stream, one batch ahead, so batch k+1 is decoded while the caller runs batch
    k (ONNX Runtime's run releases the GIL).  :meth:`next` returns a batch once its device work
    is done.  ``decode_jpeg`` and ``device_pre`` are injected for the CPU tests (a host decoder
    with torchvision's contract, the torch preprocessing on the CPU).
    """

    synthetic = False
    prefetched = True
    on_device = True

    def __init__(self, files: Sequence[Path], device_pre: Callable, input_name: str,
                 sample_shape: Sequence[int], batch: int, workers: int, *, device: str = "cuda",
                 depth: int = 2, decode_jpeg: Callable | None = None, dtype=np.float32):
        import torch

        self._torch = torch
        self.files = [Path(f) for f in files]
        self.device = torch.device(device)
        self.device_pre = device_pre
        self.input_name = input_name
        self.sample_shape = tuple(sample_shape)
        self.batch_size = int(batch)
        self.workers = max(1, int(workers))
        self.depth = max(1, int(depth))
        if decode_jpeg is None:
            from torchvision.io import ImageReadMode, decode_jpeg as tv_decode

            def decode_jpeg(datas):
                return tv_decode(datas, mode=ImageReadMode.RGB, device=self.device)
        self._decode_jpeg = decode_jpeg
        tdtype = torch.from_numpy(np.zeros(0, np.dtype(dtype))).dtype   # the model input's
        # two buffers: the producer fills batch k+1's while the caller reads batch k's; it starts
        # on batch k+1 only when the caller asks for batch k, after it is done with batch k-1
        self._out = [torch.empty((self.batch_size, *self.sample_shape), dtype=tdtype,
                                 device=self.device) for _ in range(2)]
        self._slot = 0
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.jpeg_images = 0           # decoded by nvJPEG (or the injected decoder)
        self.host_images = 0           # decoded on the host (not JPEG, or refused by nvJPEG)
        self.refused: list[str] = []   # "name: why" for JPEGs the batched decoder refused
        self._cycle = itertools.cycle(self.files)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="xtrt-gpudecode")
        self._producer = ThreadPoolExecutor(1, thread_name_prefix="xtrt-gpudecode-device")
        self._pending: deque = deque()
        for _ in range(self.depth):
            self._submit()
        self._ahead = self._producer.submit(self._produce)

    def _submit(self) -> None:
        self._pending.append([self._pool.submit(_read, next(self._cycle))
                              for _ in range(self.batch_size)])

    def _decode(self, items) -> list:
        """Decoded uint8 CHW images of one batch, in order (JPEGs batched on the device)."""
        imgs: list = [None] * len(items)
        jpeg = [i for i, (kind, _, _) in enumerate(items) if kind == "jpeg"]
        for i, (kind, data, _) in enumerate(items):
            if kind == "image":
                imgs[i] = data.to(self.device)
                self.host_images += 1
        if jpeg:
            try:
                out = self._decode_jpeg([items[i][1] for i in jpeg])
                for i, img in zip(jpeg, out):
                    imgs[i] = img
                self.jpeg_images += len(jpeg)
            except (RuntimeError, ValueError) as exc:   # one file it refuses fails the call
                why = (str(exc).splitlines() or [type(exc).__name__])[0][:120]
                for i in jpeg:
                    path = items[i][2]
                    self.refused.append(f"{path.name}: {why}")
                    imgs[i] = self._host_decode(path)
                    self.host_images += 1
        return imgs

    def _host_decode(self, path: Path):
        hwc = _writable(path)
        return self._torch.from_numpy(hwc).permute(2, 0, 1).to(self.device)

    def _produce(self):
        """In the producer thread: the next batch, decoded and preprocessed, device work done."""
        futs = self._pending.popleft()
        self._submit()
        items = [f.result() for f in futs]
        out = self._out[self._slot]
        self._slot = (self._slot + 1) % len(self._out)
        ctx = self._torch.cuda.stream(self._stream) if self._stream is not None else _null()
        with ctx:
            groups: dict[tuple, list[int]] = {}     # images of one size are preprocessed together
            imgs = self._decode(items)
            for row, img in enumerate(imgs):
                if img.shape[0] == 1:
                    imgs[row] = img = img.expand(3, -1, -1)
                groups.setdefault(tuple(img.shape), []).append(row)
            for rows in groups.values():
                got = self.device_pre(self._torch.stack([imgs[r] for r in rows]), None)
                if tuple(got.shape[1:]) != self.sample_shape:
                    from xtrt.errors import DataError

                    raise DataError(f"device preprocessing gives {list(got.shape[1:])} but input "
                                    f"{self.input_name!r} takes {list(self.sample_shape)}",
                                    "make preprocess.size/crop match the model input, or set "
                                    "--imgsz")
                if len(rows) == rows[-1] - rows[0] + 1:
                    out[rows[0]:rows[-1] + 1].copy_(got)
                else:
                    for k, r in enumerate(rows):
                        out[r].copy_(got[k])
        if self._stream is not None:   # the whole device: nvJPEG may use streams of its own
            self._torch.cuda.synchronize(self.device)
        return out

    def next(self, batch: int | None = None):
        """The next batch as a device tensor [batch, C, H, W] (``dtype``), ready to read.  Valid
        until the call after next (its buffer is then refilled); copy it to keep it."""
        if batch is not None and batch != self.batch_size:
            raise ValueError(f"this feed makes batches of {self.batch_size}, not {batch}")
        try:
            out = self._ahead.result()
        finally:
            self._ahead = self._producer.submit(self._produce)
        return out

    def close(self) -> None:
        """Stop the producer and the readers (work not started is cancelled)."""
        self._ahead.cancel()
        self._producer.shutdown(wait=True)
        for futs in self._pending:
            for f in futs:
                f.cancel()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "GpuDecodeFeed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

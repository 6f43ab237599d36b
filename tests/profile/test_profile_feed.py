"""The feed table's pipelines: N workers, pinned + overlapped copies, GPU decode (CPU stand-ins
where CUDA is absent), the reasons a row cannot run, and the one-line summary."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from xtrt.cli import run_main
from xtrt.profile.__main__ import main


def _image_pre(img):
    """Output depends on the image, so a batch out of order (or overwritten) differs."""
    return img[:8, :8].astype(np.float32).transpose(2, 0, 1) / 255.0, None


class _CopyingBackend:
    """A CPU backend that copies feeds to 'device' tensors through a DeviceFeed, as the CUDA
    backends do, and infers the per-image sums of what it was given."""

    name = "fake"
    device = "cpu"
    tail = None

    def __init__(self, slots: int = 2):
        from xtrt.runtime.feed import DeviceFeed

        self.feeder = DeviceFeed("cpu", slots=slots)
        self.runs = 0
        self.waits = []
        self.events = []

    def host_buffer(self, name, shape, dtype, tag=0):
        return self.feeder.host_buffer(name, shape, dtype, tag)

    def to_device(self, feeds):
        self.events.append("copy")
        return self.feeder.put(feeds)

    def sync(self):
        self.feeder.wait()

    def infer(self, dev, wait=True):
        self.runs += 1
        self.waits.append(wait)
        self.events.append("infer")
        x = dev["x"]
        x = x.numpy() if hasattr(x, "numpy") else x
        return [x.reshape(len(x), -1).sum(1)]

    def to_host(self, out):
        return out


def _serial_sums(files, steps, batch):
    from xtrt.profile.stages import ImageFeed

    feed = ImageFeed(files, _image_pre, "x", (3, 8, 8))
    return [feed.preprocess(feed.decode(batch)).reshape(batch, -1).sum(1) for _ in range(steps)]


@pytest.mark.parametrize("kind", ["workers", "pinned"])
def test_loops_keep_file_order(photos, kind):
    """Every step infers the batch the serial feed gives at that step; the pinned loop copies
    batch k+1 before batch k's inference and reuses its buffers."""
    from xtrt.profile.prefetch import PrefetchFeed
    from xtrt.profile.workers import run_loop

    files = sorted(photos.iterdir())
    be = _CopyingBackend()
    alloc = (lambda tag, shp, dt: be.host_buffer("x", shp, dt, tag)) if kind == "pinned" else None
    got = {}
    with PrefetchFeed(files, _image_pre, "x", (3, 8, 8), np.float32, 3, 2, alloc=alloc) as pf:
        sums, walls = run_loop(kind, be, pf, None, 3, steps=5, warmup=1,
                               on_output=lambda i, outs: got.setdefault(i, outs[0]))
    want = _serial_sums(files, 6, 3)
    for i in range(6):
        assert np.allclose(got[i], want[i]), f"step {i} inferred another batch"
    assert len(walls) == 5 and set(sums) >= {"decode", "h2d", "inference", "postprocess"}
    if kind == "pinned":
        assert be.waits == [False] * 6                    # inference does not wait on a copy
        assert be.events == ["copy"] + ["copy", "infer"] * 6   # batch k+1's copy before k runs
        assert be.feeder.host_copies == 0                 # the workers filled the pinned buffers
        assert be.feeder.transfers == 7                   # one batch ahead, then one per step
        assert len(be.feeder._dev) == 2                   # two device buffers, reused in turn


def test_pinned_loop_needs_two_device_buffers(photos):
    """With one device buffer the copy of batch k+1 overwrites batch k before it is read."""
    from xtrt.profile.prefetch import PrefetchFeed
    from xtrt.profile.workers import run_loop

    files = sorted(photos.iterdir())
    be = _CopyingBackend(slots=1)
    got = {}
    with PrefetchFeed(files, _image_pre, "x", (3, 8, 8), np.float32, 3, 2,
                      alloc=lambda tag, shp, dt: be.host_buffer("x", shp, dt, tag)) as pf:
        run_loop("pinned", be, pf, None, 3, steps=3, warmup=0,
                 on_output=lambda i, outs: got.setdefault(i, outs[0]))
    want = _serial_sums(files, 3, 3)
    assert not np.allclose(got[0], want[0])


def _jpegs(tmp_path, n=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for i in range(n):
        yy, xx = np.mgrid[0:60 + 10 * i, 0:80]
        img = np.stack([xx * 3, yy * 3, (xx + yy) * 2], -1) % 256
        img = (img + rng.integers(0, 20, img.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i}.jpg", quality=95)
    Image.fromarray(np.full((50, 70, 3), 200, np.uint8)).save(folder / "z.png")
    return sorted(folder.iterdir())


def _pil_decode_jpeg(datas):
    """The batched decoder's contract (CPU bytes in, uint8 CHW tensors out), with PIL."""
    import torch
    from PIL import Image

    return [torch.from_numpy(np.asarray(Image.open(io.BytesIO(d.numpy().tobytes())).convert("RGB"))
                             .copy()).permute(2, 0, 1) for d in datas]


def test_gpu_decode_feed_on_cpu_matches_host_letterbox(tmp_path):
    """The GPU decode feed's logic on the CPU: order kept (JPEGs batched, PNG decoded on the host),
    and the torch letterbox within one grey level of the PIL one."""
    from xtrt.config import PreprocessConfig
    from xtrt.data.images import decode_image
    from xtrt.data.preprocess import letterbox
    from xtrt.runtime.feed_gpu import GpuDecodeFeed, device_preprocess

    files = _jpegs(tmp_path)
    pre = device_preprocess(PreprocessConfig(preset="letterbox", size=[64, 64]), (64, 64))
    with GpuDecodeFeed(files, pre, "x", (3, 64, 64), 3, 2, device="cpu",
                       decode_jpeg=_pil_decode_jpeg) as feed:
        batches = [feed.next(3).clone() for _ in range(4)]          # 12 images, 4 files cycled
    # the producer may have decoded a fifth batch ahead
    n = feed.jpeg_images + feed.host_images
    assert n in (12, 15) and feed.host_images == sum(k % 4 == 3 for k in range(n))
    assert not feed.refused
    order = [files[i % 4] for i in range(12)]
    for k, path in enumerate(order):
        want, _ = letterbox(decode_image(path), (64, 64))
        got = batches[k // 3][k % 3].numpy()
        assert np.abs(got - want).max() <= 1.01 / 255, f"image {k} ({path.name})"


def test_gpu_decode_feed_falls_back_when_the_decoder_refuses(tmp_path):
    from xtrt.config import PreprocessConfig
    from xtrt.runtime.feed_gpu import GpuDecodeFeed, device_preprocess

    def refuse(datas):
        raise RuntimeError("nvjpeg: unsupported JPEG\nmore")

    files = _jpegs(tmp_path)
    pre = device_preprocess(PreprocessConfig(preset="resize_crop", crop=[32, 32]), (32, 32))
    with GpuDecodeFeed(files, pre, "x", (3, 32, 32), 4, 1, device="cpu", decode_jpeg=refuse) as f:
        x = f.next()
        assert tuple(x.shape) == (4, 3, 32, 32)
    assert f.jpeg_images == 0 and f.host_images in (4, 8)
    assert f.refused[:3] == [f"{p.name}: nvjpeg: unsupported JPEG" for p in files[:3]]


def test_gpu_decode_unavailable_says_why(monkeypatch):
    import sys

    import torch

    from xtrt.config import PreprocessConfig
    from xtrt.runtime.feed_gpu import gpu_decode_unavailable

    assert gpu_decode_unavailable("cpu") == "GPU decode needs --device cuda"
    plugin = PreprocessConfig(preset="plugin", plugin="p.py:f")
    assert "letterbox and resize_crop presets only, not preset 'plugin'" in \
        gpu_decode_unavailable("cuda", plugin)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_decode_unavailable("cuda") == \
        "GPU decode needs CUDA (torch.cuda.is_available() is False)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "torchvision.io", None)        # import fails
    why = gpu_decode_unavailable("cuda", PreprocessConfig(preset="letterbox"))
    assert why.startswith("GPU decode needs torchvision with nvJPEG (import failed: ")


def _row(kind, workers, ips, label, inp, inf, big):
    from xtrt.profile.verdict import WorkersRow

    return WorkersRow(workers, 32, ips, 32e3 / ips, inp, inf, inf, label, big, True, kind)


def test_feed_line_names_each_step_gain_and_the_next_bottleneck():
    from xtrt.profile.verdict import feed_line

    rows = [_row("today", 1, 54.0, "CPU-bound", 0.87, 0.05, "decode"),
            _row("workers", 8, 356.0, "CPU-bound", 0.5, 0.16, "decode"),
            _row("pinned", 8, 420.0, "CPU-bound", 0.6, 0.2, "decode"),
            _row("gpu_decode", 8, 1500.0, "GPU-bound", 0.1, 0.7, "inference")]
    text = feed_line(rows)
    assert text.startswith("1 thread 54.0 img/s (CPU-bound) -> 8 workers 356.0 (x6.59) -> "
                           "8 workers + pinned/async 420.0 (x1.18) -> GPU decode (8 readers) "
                           "1500.0 (x3.57); best: GPU decode (8 readers), x27.8 over today, "
                           "GPU-bound, next bottleneck: inference; fix: feed it as 'GPU decode "
                           "(8 readers)'; then the model is the limit (inference 70% of the step)")
    still = feed_line(rows[:3])
    assert "best: 8 workers + pinned/async, x7.8 over today, CPU-bound, next bottleneck: waiting " \
           "for decode+preprocess; fix: the input pipeline is still the limit" in still


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_feed_rows(tiny_model, photos, tmp_path, capsys):
    """On CUDA: today, N workers, N workers + pinned/async, and GPU decode (or its reason)."""
    from xtrt.runtime.feed_gpu import gpu_decode_unavailable
    from xtrt.runtime.session import cuda_ep_available

    if not cuda_ep_available():
        pytest.skip("needs onnxruntime-gpu")
    out = tmp_path / "o"
    rc = run_main(main, [str(tiny_model), "--images", str(photos), "--batch", "4", "--device",
                         "cuda", "--workers", "2", "--out", str(out), "--steps", "3",
                         "--warmup", "1"])
    stdout = capsys.readouterr().out
    assert rc == 0
    rows = json.loads((out / "profile.json").read_text())["workers"]["rows"]
    kinds = [r["kind"] for r in rows]
    why = gpu_decode_unavailable("cuda")
    assert kinds == ["today", "workers", "pinned"] + ([] if why else ["gpu_decode"])
    if why:
        assert f"no 'GPU decode (2 readers)' row: {why}" in stdout
    assert all(r["throughput_ips"] > 0 for r in rows) and "feed: 1 thread " in stdout


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_gpu_decode_matches_host_letterbox(tmp_path):
    """nvJPEG + the device letterbox against PIL + the host letterbox: a few grey levels on
    average (benchmarks/feed_pixels.py measures it on real photos)."""
    from xtrt.config import PreprocessConfig
    from xtrt.data.images import decode_image
    from xtrt.data.preprocess import letterbox
    from xtrt.runtime.feed_gpu import GpuDecodeFeed, device_preprocess, gpu_decode_unavailable

    why = gpu_decode_unavailable("cuda")
    if why:
        pytest.skip(why)
    files = _jpegs(tmp_path)
    pre = device_preprocess(PreprocessConfig(preset="letterbox", size=[64, 64]), (64, 64))
    with GpuDecodeFeed(files, pre, "x", (3, 64, 64), 4, 2, device="cuda") as feed:
        x = feed.next().cpu().numpy()
    assert feed.jpeg_images in (3, 6) and feed.host_images in (1, 2), feed.refused
    for k, path in enumerate(files):
        want, _ = letterbox(decode_image(path), (64, 64))
        diff = np.abs(x[k] - want)
        # nvJPEG's IDCT and chroma upsampling are not libjpeg's: a few levels on average; a
        # swapped channel, a shifted or unscaled image is tens of levels
        assert diff.mean() < 4 / 255 and diff.max() < 96 / 255, (path.name, diff.mean() * 255)


def test_cuda_rows_that_cannot_run_are_named_not_silent(monkeypatch):
    """Without torchvision/CUDA the GPU decode row is replaced by a note with the reason, and a
    CUDA row that fails is a note naming the error; the rows that ran stay."""
    import torch

    from xtrt.config import PreprocessConfig
    from xtrt.profile import api, workers
    from xtrt.profile.inputs import InputPlan
    from xtrt.profile.sweep import BatchResult, ModelProfile
    from xtrt.profile.verdict import decide, latency_stats

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    asked = []

    def fake_row(kind, *a, **k):
        asked.append(kind)
        if kind == "pinned":
            raise RuntimeError("CUDA error: an illegal memory access\ntraceback text")
        return _row(kind, 4, 300.0, "CPU-bound", 0.5, 0.2, "decode")

    monkeypatch.setattr(workers, "measure_row", fake_row)
    lat = latency_stats([0.1])
    shares = {"decode": 0.8, "inference": 0.1}
    head = BatchResult(32, lat, lat, 50.0, 900.0, {}, decide(shares, device="cuda", batch=32,
                                                              gpu_busy_share=0.05))
    mp = ModelProfile("m", "m.onnx", "ort", "cuda", "none", [], [head])

    class Feed:
        synthetic = False
        pre_config = PreprocessConfig(preset="letterbox", size=[64, 64])

    notes = []
    opts = api.ProfileOptions(model="m.onnx", workers=4)
    api._workers_rows(mp, None, Feed(), None, opts, "cuda", InputPlan("x", (3, 64, 64), None,
                                                                        np.float32), notes)
    assert asked == ["workers", "pinned"]
    assert [r.kind for r in mp.workers] == ["today", "workers"]
    assert notes == ["m: no 'GPU decode (4 readers)' row: GPU decode needs CUDA "
                     "(torch.cuda.is_available() is False)",
                     "m: the '4 workers + pinned/async' row failed: RuntimeError: CUDA error: an "
                     "illegal memory access"]
    assert mp.feed_line.startswith("1 thread 50.0 img/s (CPU-bound) -> 4 workers 300.0 (x6.00)")


@pytest.mark.parametrize("preset", ["letterbox", "resize_crop"])
def test_same_size_images_are_preprocessed_together(tmp_path, preset):
    """Images of one size in a batch go through the device preprocessing as one NCHW call; each
    row still matches the host preprocessing of its own file (BGR, mean and std included)."""
    from xtrt.config import PreprocessConfig
    from xtrt.data.images import decode_image
    from xtrt.data.preprocess import build_preprocess
    from xtrt.runtime.feed_gpu import GpuDecodeFeed, device_preprocess

    files = _jpegs(tmp_path, n=2)            # 0.jpg (60x80), 1.jpg (70x80), z.png (50x70)
    cfg = PreprocessConfig(preset=preset, size=[48, 40], crop=[24, 24], color="bgr",
                           mean=[0.1, 0.2, 0.3], std=[0.5, 0.6, 0.7])
    pre, host = device_preprocess(cfg, (48, 40)), build_preprocess(cfg, (48, 40))
    calls = []

    def counting(img, out):
        calls.append(tuple(img.shape))
        return pre(img, out)

    shape = (3, 48, 40) if preset == "letterbox" else (3, 24, 24)
    from PIL import Image

    flipped = tmp_path / "mixed" / "0_flipped.jpg"             # 0.jpg's size, other pixels
    Image.open(files[0]).transpose(Image.FLIP_LEFT_RIGHT).save(flipped, quality=95)
    files = [files[0], files[2], flipped, files[1], files[0]]   # three of 60x80, apart
    with GpuDecodeFeed(files, counting, "x", shape, 5, 2, device="cpu",
                       decode_jpeg=_pil_decode_jpeg) as feed:
        x = feed.next().clone().numpy()
    assert calls[:3] == [(3, 3, 60, 80), (1, 3, 50, 70), (1, 3, 70, 80)]
    for k, path in enumerate(files):
        want, _ = host(decode_image(path))
        assert np.abs(x[k] - want).max() <= 1.01 / 255 / 0.5, f"row {k} ({path.name})"

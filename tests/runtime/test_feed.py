"""xtrt.runtime.feed: pinned buffers and asynchronous host-to-device copies.

The bookkeeping (buffer reuse, no host copy for a producer's own buffer, device slots) runs on
the CPU with ordinary memory; the ``gpu`` tests check the pinned, asynchronous path on CUDA and
skip without it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xtrt.runtime.feed import DeviceFeed

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _needs_ort_cuda():
    from xtrt.runtime.session import cuda_ep_available

    if not cuda_ep_available():
        pytest.skip("needs onnxruntime-gpu")


def test_put_copies_exactly_and_reuses_buffers():
    feed = DeviceFeed("cpu", pin=False, slots=2)
    rng = np.random.default_rng(0)
    a, b, c = (rng.standard_normal((2, 3, 4, 4)).astype(np.float32) for _ in range(3))
    ta = feed.put({"x": a})["x"]
    assert np.array_equal(ta.numpy(), a) and ta.dtype == torch.float32
    tb = feed.put({"x": b})["x"]
    assert tb.data_ptr() != ta.data_ptr()        # the next batch lands in the other slot
    assert np.array_equal(ta.numpy(), a)          # ... so the previous one is still intact
    tc = feed.put({"x": c})["x"]
    assert tc.data_ptr() == ta.data_ptr()         # slots are reused in turn
    assert np.array_equal(tc.numpy(), c)
    assert feed.host_copies == 3 and feed.transfers == 3


def test_producer_buffer_needs_no_host_copy():
    feed = DeviceFeed("cpu", pin=False)
    buf = feed.host_buffer("x", (2, 3), np.float32, tag=1)
    assert feed.host_buffer("x", (2, 3), np.float32, tag=1) is buf
    buf[:] = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = feed.put({"x": buf, "ids": np.array([[1, 2]], np.int64)})
    assert feed.host_copies == 1                  # only the array that was not the buffer
    assert np.array_equal(out["x"].numpy(), buf) and out["ids"].dtype == torch.int64
    view = buf[:, :2]                             # same address, other strides: copied
    feed.put({"x": view})
    assert feed.host_copies == 2


@pytest.mark.gpu
@needs_cuda
def test_cuda_put_is_pinned_async_and_bit_identical():
    feed = DeviceFeed("cuda")
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal((4, 3, 64, 64)).astype(np.float32) for _ in range(3)]
    for a in arrays:
        dev = feed.put({"x": a})["x"]
        assert feed.event is not None              # the copy runs on the side stream
        feed.wait()
        assert dev.is_cuda and np.array_equal(dev.cpu().numpy(), a)
    buf = feed.host_buffer("x", (4, 3, 64, 64), np.float32)
    assert torch.from_numpy(buf).is_pinned()


@pytest.mark.gpu
@needs_cuda
def test_cuda_ort_backend_feeds_pinned_inputs(tmp_path):
    """The profiler's CUDA backend: the bound input is the batch, bit for bit; the outputs match
    the CPU session; a producer filling host_buffer costs no staging copy."""
    import onnx

    from xtrt.profile.backends import OrtBackend
    from tests.profile.conftest import conv_stack

    _needs_ort_cuda()
    model = onnx.load(conv_stack(tmp_path / "m.onnx"))
    gpu, cpu = OrtBackend(model, "cuda"), OrtBackend(model, "cpu")
    x = gpu.host_buffer("x", (2, 3, 32, 32), np.float32, 0)
    x[:] = np.random.default_rng(2).random((2, 3, 32, 32), dtype=np.float32)
    dev = gpu.to_device({"x": x})
    gpu.sync()
    assert np.array_equal(dev["x"].cpu().numpy(), x) and gpu.feeder.host_copies == 0
    got = gpu.to_host(gpu.infer(dev))
    want = cpu.to_host(cpu.infer(cpu.to_device({"x": x})))
    assert np.allclose(got[0], want[0], atol=2e-3 * max(1.0, float(np.abs(want[0]).max())))


@pytest.mark.gpu
@needs_cuda
def test_cuda_split_runner_matches_cpu(tmp_path):
    """xtrt.quant's evaluation runner on CUDA feeds through pinned buffers; same results."""
    import onnx

    from xtrt.runtime.split import SplitRunner
    from tests.profile.conftest import conv_stack

    _needs_ort_cuda()
    model = onnx.load(conv_stack(tmp_path / "m.onnx"))
    gpu, cpu = SplitRunner(model, device="cuda"), SplitRunner(model, device="cpu")
    for seed in range(3):
        feeds = {"x": np.random.default_rng(seed).random((2, 3, 32, 32), dtype=np.float32)}
        got, want = gpu.run(feeds), cpu.run(feeds)
        assert np.allclose(got[0], want[0], atol=2e-3 * max(1.0, float(np.abs(want[0]).max())))
    assert gpu._feeder is not None and gpu._feeder.transfers == 3


def test_run_fed_equals_session_run(tmp_path):
    """The I/O-binding path (here with CPU tensors standing in for CUDA ones) gives the
    session's own outputs, bit for bit, over batches of two shapes."""
    import onnx

    from tests.profile.conftest import conv_stack
    from xtrt.runtime.feed import run_fed
    from xtrt.runtime.session import make_session

    sess = make_session(onnx.load(conv_stack(tmp_path / "m.onnx")), "cpu")
    feed = DeviceFeed("cpu", pin=False)
    rng = np.random.default_rng(3)
    for n in (2, 1, 2):
        x = rng.random((n, 3, 32, 32), dtype=np.float32)
        got = run_fed(sess, {"x": x}, ["y"], feed)
        want = sess.run(["y"], {"x": x})
        assert got[0].shape == want[0].shape == (n, 10)
        assert np.array_equal(got[0], want[0])
    assert feed.transfers == 3

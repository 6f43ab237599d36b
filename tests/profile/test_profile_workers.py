"""xtrt.profile --workers N: the prefetching feed, the N-worker row and its verdict (CPU)."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from xtrt.cli import run_main
from xtrt.profile.__main__ import main

FAST = ["--steps", "3", "--warmup", "1"]


def _run(capsys, *argv):
    rc = run_main(main, [str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _jittery_preprocess(seed: int = 0):
    """A preprocess whose run time varies per call (so workers finish out of order) and whose
    output depends on the image (so a batch in the wrong order differs), float64 out."""
    rng = np.random.default_rng(seed)
    delays = iter(list(rng.uniform(0, 0.004, 10_000)))

    def pre(img):
        time.sleep(next(delays))
        small = img[:16, :16].astype(np.float64).transpose(2, 0, 1) / 7.0
        return small + 1e-9, None
    return pre


@pytest.mark.parametrize("workers", [1, 3])
def test_prefetched_batches_equal_the_serial_feed(photos, workers):
    """The same files in the same (cycled) order, bit-identical arrays of the same dtype."""
    from xtrt.profile.prefetch import PrefetchFeed
    from xtrt.profile.stages import ImageFeed

    files = sorted(photos.iterdir())
    serial = ImageFeed(files, _jittery_preprocess(), "x", (3, 16, 16))
    with PrefetchFeed(files, _jittery_preprocess(1), "x", (3, 16, 16), np.float32, 3,
                      workers) as pf:
        for step in range(5):           # 15 images: the 4 files cycled across batch boundaries
            want = serial.preprocess(serial.decode(3))
            got = pf.next(3)
            assert got.dtype == want.dtype == np.float32
            assert np.array_equal(got, want), f"batch {step} differs from the serial feed"


def test_prefetch_window_is_bounded(photos):
    """At most ``depth`` batches are filled ahead while the consumer holds one."""
    from xtrt.profile.prefetch import PrefetchFeed

    calls = []

    def pre(img):
        calls.append(1)
        return np.zeros((3, 8, 8), np.float32), None

    files = sorted(photos.iterdir())
    with PrefetchFeed(files, pre, "x", (3, 8, 8), np.float32, 2, 2, depth=2) as pf:
        pf.next()
        time.sleep(0.2)                 # let the workers run as far as they may
        assert len(calls) == 2 * 3      # the batch held + 2 ahead, not more
        assert len(pf._buffers) == 3


def test_prefetch_passes_on_a_shape_error(photos):
    from xtrt.errors import DataError
    from xtrt.profile.prefetch import PrefetchFeed

    with PrefetchFeed(sorted(photos.iterdir()), lambda img: (np.zeros((3, 4, 4)), None), "x",
                      (3, 8, 8), np.float32, 2, 2) as pf:
        with pytest.raises(DataError, match=r"preprocessing gives \[3, 4, 4\]"):
            pf.next()


def test_workers_row_and_verdict(tiny_model, photos, tmp_path, capsys):
    """A slow (GIL-releasing) preprocessing step: 2 workers roughly double the images/s."""
    plugin = tmp_path / "slow_pre.py"
    plugin.write_text(
        "import time\nimport numpy as np\n"
        "def pre(img):\n    time.sleep(0.03)\n    return np.zeros((3, 32, 32), np.float32)\n")
    out = tmp_path / "o"
    rc, stdout, err = _run(capsys, tiny_model, "--images", photos, "--batch", "2", "--workers", "2",
                           "--preprocess-plugin", f"{plugin}:pre", "--out", out, *FAST)
    assert rc == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("verdict: preprocessing-bound at batch 2 on CPU")
    line = next(x for x in lines if x.startswith("decode workers: "))
    assert "preprocessing-bound at batch 2 with 1 decode thread (decode+preprocess " in line
    assert "; with 2 workers: " in line and "x more images/s (" in line and "; fix: " in line
    assert any(x.startswith("as you run it today (1 thread) ") for x in lines)
    assert any(x.startswith("2 workers ") for x in lines)
    assert any(x.startswith("note: tiny: the pinned/async and GPU decode rows need --device cuda")
               for x in lines)
    feed = next(x for x in lines if x.startswith("feed: "))
    assert feed.startswith("feed: 1 thread ") and " -> 2 workers " in feed and "; best: 2 workers" in feed
    data = json.loads((out / "profile.json").read_text())
    rows = data["workers"]["rows"]
    assert [r["workers"] for r in rows] == [1, 2] and [r["batch"] for r in rows] == [2, 2]
    assert [r["name"] for r in rows] == ["as you run it today (1 thread)", "2 workers"]
    assert data["workers"]["line"] == line[len("decode workers: "):]
    assert data["models"][0]["workers"] == data["workers"]
    today, two = rows
    assert today["throughput_ips"] == pytest.approx(data["models"][0]["batches"][0]["throughput_ips"])
    assert two["throughput_ips"] > 1.5 * today["throughput_ips"]
    # 2 workers halve a 30 ms-per-image step; the step still waits for them (the model is tiny)
    assert today["input_share"] > 0.8 and two["input_share"] > 0.5
    assert two["label"] == "preprocessing-bound" and "the input pipeline is still the limit" in line
    assert two["gpu_busy_share"] is None


def test_one_worker_is_todays_profile(tiny_model, photos, tmp_path, capsys):
    rc, stdout, err = _run(capsys, tiny_model, "--images", photos, "--batch", "2", "--workers", "1",
                           "--out", tmp_path / "o", *FAST)
    assert rc == 0, err
    assert "decode workers" not in stdout and "as you run it today" not in stdout
    data = json.loads((tmp_path / "o" / "profile.json").read_text())
    assert data["workers"] is None and data["models"][0]["workers"] is None
    assert data["options"]["workers"] == 1


def test_synthetic_inputs_have_no_workers_row(tiny_model, tmp_path, capsys):
    rc, stdout, _ = _run(capsys, tiny_model, "--batch", "2", "--workers", "2",
                         "--out", tmp_path / "o", *FAST)
    assert rc == 0 and "decode workers" not in stdout


def test_default_workers_follow_the_core_count(monkeypatch):
    from xtrt.data.source import default_workers
    from xtrt.profile.__main__ import build_parser

    assert build_parser().parse_args(["m.onnx"]).workers is None    # None: default_workers()
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    assert default_workers() == 8


def test_bad_workers_is_usage_error(tiny_model, capsys):
    with pytest.raises(SystemExit) as exc:
        main([str(tiny_model), "--workers", "0"])
    assert exc.value.code == 2


def _row(workers, ips, label, inp, inf, busy=None):
    from xtrt.profile.verdict import WorkersRow

    return WorkersRow(workers, 32, ips, 32e3 / ips, inp, inf, busy, label)


def test_workers_line_says_what_to_fix_and_by_how_much():
    from xtrt.profile.verdict import workers_line

    text = workers_line(_row(1, 210.0, "CPU-bound", 0.87, 0.08, 0.11),
                        _row(8, 651.0, "GPU-bound", 0.05, 0.80, 0.80))
    assert text.startswith("CPU-bound at batch 32 with 1 decode thread (decode+preprocess 87%); "
                           "with 8 workers: GPU-bound, 3.1x more images/s (210.0 -> 651.0); "
                           "fix: feed it as '8 workers'; then the model is the limit (inference "
                           "80% of the step): a faster model (INT8, a TensorRT engine)")
    still = workers_line(_row(1, 100.0, "preprocessing-bound", 0.9, 0.1),
                         _row(2, 101.0, "preprocessing-bound", 0.85, 0.1))
    assert "1.0x more images/s" in still and "the input pipeline is still the limit" in still
    assert still.endswith("'2 workers' gains nothing here: the cores are already busy")
    slower = workers_line(_row(1, 100.0, "inference-bound", 0.1, 0.8),
                          _row(2, 80.0, "balanced", 0.3, 0.4))
    assert "0.8x the images/s (slower)" in slower and "both matter" in slower
    assert slower.endswith("'2 workers' is slower than today (its threads share the cores with "
                           "inference)")
    model = workers_line(_row(1, 100.0, "inference-bound", 0.1, 0.8),
                         _row(2, 102.0, "inference-bound", 0.0, 0.9))
    assert "fix: the model is the limit (inference 90% of the step)" in model
    assert model.endswith("more decode workers change little")


def test_cuda_row_without_trace_estimates_busy_from_inference():
    """On CUDA the untraced N-worker row's GPU busy share is the inference share, marked."""
    from xtrt.profile.sweep import BatchResult
    from xtrt.profile.verdict import decide, latency_stats
    from xtrt.profile.workers import row_from_result

    shares = {"decode": 0.1, "preprocess": 0.0, "h2d": 0.05, "inference": 0.7, "d2h": 0.05,
              "postprocess": 0.1}
    v = decide(shares, device="cuda", batch=8)
    lat = latency_stats([0.01, 0.01])
    res = BatchResult(8, lat, lat, 800.0, 1000.0, {}, v)
    row = row_from_result(res, 4, "cuda")
    assert row.gpu_busy_share == pytest.approx(0.7) and row.gpu_busy_estimated
    assert row.label == "GPU-bound" and row.input_share == pytest.approx(0.1)
    traced = BatchResult(8, lat, lat, 800.0, 1000.0, {},
                         decide(shares, device="cuda", batch=8, gpu_busy_share=0.2))
    row = row_from_result(traced, 1, "cuda")
    assert row.gpu_busy_share == 0.2 and not row.gpu_busy_estimated and row.label == "CPU-bound"


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_workers_row(tiny_model, photos, tmp_path, capsys):
    """On CUDA the N-worker row fills pinned buffers (no staging copy) and estimates GPU busy."""
    from xtrt.runtime.session import cuda_ep_available

    if not cuda_ep_available():
        pytest.skip("needs onnxruntime-gpu")
    out = tmp_path / "o"
    rc, stdout, err = _run(capsys, tiny_model, "--images", photos, "--batch", "4", "--device",
                           "cuda", "--workers", "2", "--out", out, *FAST)
    assert rc == 0, err
    assert "decode workers: " in stdout and "GPU busy estimated as the" in stdout
    rows = json.loads((out / "profile.json").read_text())["workers"]["rows"]
    assert rows[0]["gpu_busy_share"] is not None and not rows[0]["gpu_busy_estimated"]
    assert rows[1]["gpu_busy_estimated"] and rows[1]["throughput_ips"] > 0

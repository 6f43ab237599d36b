"""Each plot writes a real PNG (header, size) atomically and returns its path."""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from xtrt.errors import OutputError
from xtrt.report.plots import plot_activation_scatter, plot_batch_sweep, plot_fallback_tradeoff, plot_layer_snr

PNG = b"\x89PNG\r\n\x1a\n"


def _check_png(path, folder):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 1024
    assert sorted(os.listdir(folder)) == [path.name]  # nothing temporary left


def test_layer_snr(tmp_path):
    rng = np.random.default_rng(0)
    layers = [{"name": f"/model.{i}/conv/Conv_{i}", "op_type": ["Conv", "Mul", "Add", "Concat"][i % 4],
               "snr_db": float(rng.uniform(5, 40))} for i in range(60)]
    layers.append({"name": "/perfect", "op_type": "Relu", "snr_db": math.inf})
    path = plot_layer_snr(layers, tmp_path / "snr.png", top=20)
    assert path == tmp_path / "snr.png"
    _check_png(path, tmp_path)


def test_layer_noise_ratio_and_empty(tmp_path):
    layers = [{"name": "a", "op_type": "Conv", "noise_ratio": 0.2}, {"name": "b", "op_type": "Sigmoid",
                                                                      "noise_ratio": 0.01}]
    _check_png(plot_layer_snr(layers, tmp_path / "nr.png"), tmp_path)
    empty = tmp_path / "e"
    _check_png(plot_layer_snr([], empty / "none.png"), empty)


def test_activation_scatter(tmp_path):
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(4, 64, 20, 20)).astype(np.float32)
    test = np.round(ref / 0.05) * 0.05
    _check_png(plot_activation_scatter(ref, test, "/model.2/Conv_output_0", tmp_path / "s.png",
                                       max_points=5000, sqnr_db=31.0), tmp_path)


def test_fallback_tradeoff(tmp_path):
    trials = [{"n_fp32_layers": n, "metric": m, "passed": m >= 0.9, "chosen": n == 3}
              for n, m in [(0, 0.55), (1, 0.71), (2, 0.86), (3, 0.93), (5, 0.95)]]
    _check_png(plot_fallback_tradeoff(trials, "mAP50-95 vs FP32", 0.9, tmp_path / "f.png"), tmp_path)


def test_batch_sweep(tmp_path):
    rows = [{"batch": b, "throughput": 80 * b / (1 + 0.1 * b), "latency_p50_ms": 12.5 * (1 + 0.1 * b),
             "latency_p99_ms": 15 * (1 + 0.1 * b)} for b in (1, 2, 4, 8, 16)]
    _check_png(plot_batch_sweep(rows, tmp_path / "b.png"), tmp_path)


def test_plot_unwritable(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match=r"cannot write .*afile/b\.png"):
        plot_batch_sweep([{"batch": 1, "throughput": 1.0}], tmp_path / "afile" / "b.png")


def test_fallback_tradeoff_chosen_index(tmp_path):
    # the shape of xtrt.analysis.fallback.FallbackResult.as_dict()["trials"]
    trials = [{"trial": 0, "n_fp32_layers": 0, "fp32_layers": [], "metric": 0.4, "passed": False},
              {"trial": 1, "n_fp32_layers": 2, "fp32_layers": ["a", "b"], "metric": None, "passed": False},
              {"trial": 2, "n_fp32_layers": 4, "fp32_layers": ["a", "b", "c", "d"], "metric": 0.8,
               "passed": True}]
    _check_png(plot_fallback_tradeoff(trials, "top-1 agreement", 0.75, tmp_path / "f.png", chosen=2), tmp_path)

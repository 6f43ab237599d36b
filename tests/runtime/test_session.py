"""Session creation: provider choice and the CUDA errors users see."""
from __future__ import annotations

import pytest

from tests.conftest import make_classifier
from xtrt.errors import DeviceError
from xtrt.runtime import session as S


def test_cuda_without_onnxruntime_gpu_names_the_install(monkeypatch):
    monkeypatch.setattr(S, "cuda_ep_available", lambda: False)
    with pytest.raises(DeviceError) as ei:
        S.providers_for("cuda")
    assert "no CUDAExecutionProvider" in str(ei.value) and "onnxruntime-gpu" in ei.value.hint


def test_cuda_ep_that_does_not_start_is_one_clear_error(monkeypatch, tmp_path):
    """onnxruntime-gpu installed but its CUDA/cuDNN libraries missing: ORT silently falls back to
    the CPU provider; xtrt says so instead of running on the CPU under a 'cuda' label."""
    import onnxruntime as ort

    real = ort.InferenceSession

    def cpu_only(model, sess_options=None, providers=None):
        return real(model, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(S, "cuda_ep_available", lambda: True)
    monkeypatch.setattr(ort, "InferenceSession", cpu_only)
    with pytest.raises(DeviceError) as ei:
        S.make_session(str(make_classifier(tmp_path / "m.onnx")), "cuda")
    assert str(ei.value).startswith("onnxruntime-gpu could not start its CUDA execution provider")
    assert "--device cpu" in ei.value.hint


def test_unknown_device():
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        S.providers_for("tpu")

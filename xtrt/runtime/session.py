"""The single place that creates ONNX Runtime sessions.

Verify, analysis, profile and the split runner all get their sessions here, so provider choice,
threading and the "no spin-wait" rule are decided once.
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np

from xtrt.errors import DeviceError, ModelError, UnsupportedOpError

__all__ = ["providers_for", "make_session", "run_session", "cuda_ep_available", "ort_message",
           "BASIC_DISABLED"]

log = logging.getLogger(__name__)

#: ORT passes a 'basic' session does not run.  ``WeightBiasQuantization`` rewrites the float bias of
#: a Conv/ConvTranspose/Gemm behind DequantizeLinear inputs as an int32 DequantizeLinear with scale
#: x_scale * w_scale, computed in the scales' and bias's type.  With float16 scales and biases
#: (ModelOpt's ``high_precision_dtype=fp16`` models) that quotient overflows: ModelOpt's fp16
#: EfficientNet-Lite0 scored -10.8 dB against FP32 with the pass and 17.4 dB without it (17.5 dB
#: with no optimisation at all).  TensorRT adds a float bias; the pass only feeds ORT's own
#: QLinearConv fusion, which 'basic' does not run, so at 'basic' it changes numbers only.
BASIC_DISABLED = ("WeightBiasQuantization",)


def ort_message(exc: BaseException) -> str:
    """ONNX Runtime's whole error text on one line (its messages span lines: the first line alone
    drops the indices and sizes that say what went wrong)."""
    text = " ".join(part.strip() for part in str(exc).splitlines() if part.strip())
    return text or type(exc).__name__


def cuda_ep_available() -> bool:
    """True when onnxruntime has the CUDA execution provider (onnxruntime-gpu)."""
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


_PRELOADED = False


def _preload_cuda_libraries() -> None:
    """Load the CUDA/cuDNN libraries that pip-installed torch/nvidia wheels bring, so that the
    onnxruntime-gpu wheel finds them (ORT >= 1.21 has ``preload_dlls``; older ones need nothing)."""
    global _PRELOADED
    if _PRELOADED:
        return
    _PRELOADED = True
    import onnxruntime as ort

    try:
        import torch  # noqa: F401  (its CUDA libraries are the ones ORT should find)
    except ImportError:
        pass
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception as exc:  # missing optional libraries: the session check below decides
            log.debug("onnxruntime.preload_dlls: %s", exc)


def providers_for(device: str) -> list[str]:
    """ORT providers for ``device`` ('cpu' or 'cuda'); raises DeviceError when CUDA EP is absent."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if not cuda_ep_available():
            raise DeviceError(
                "--device cuda was asked for, but onnxruntime has no CUDAExecutionProvider",
                "install the GPU extra (pip install 'xtrt[gpu]', i.e. onnxruntime-gpu) or use --device cpu")
        _preload_cuda_libraries()
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise DeviceError(f"unknown device {device!r}", "use --device cpu or --device cuda")


def make_session(model, device: str = "cpu", *, threads: int | None = None,
                 enable_profiling: bool = False, profile_prefix: str | None = None,
                 optimization: str = "auto", cuda_options: dict | None = None):
    """Create an ``onnxruntime.InferenceSession``.

    Args:
        model: path to an ONNX file, serialized bytes, or an ``onnx.ModelProto``.
        device: 'cpu' or 'cuda'.
        threads: intra-op threads (None: ORT default).
        enable_profiling: turn on ORT's own per-node profiler.
        profile_prefix: file prefix for ORT's profile JSON.
        optimization: 'all', 'extended', 'basic', 'disable', or 'auto': 'basic' for a model with
            QuantizeLinear nodes, else 'all'.  ORT's CPU Q/DQ fusion (QLinearConv, u8s8 without
            VNNI) saturates: EfficientNet-Lite0's Q/DQ model gave 2.6 dB SQNR against FP32 at 'all'
            and 19.6 dB at 'basic' (DequantizeLinear + float Conv, the semantics TensorRT runs).
            'basic' also turns off ORT's ``WeightBiasQuantization`` (see :data:`BASIC_DISABLED`).
        cuda_options: CUDA EP provider options (e.g. ``arena_extend_strategy``) for device 'cuda'.
    """
    import onnxruntime as ort

    if optimization == "auto":
        optimization = "basic" if _has_qdq(model) else "all"
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # Idle sessions must not spin-wait and steal the cores from the rest of the pipeline.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        so.intra_op_num_threads = int(threads)
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[optimization]
    if enable_profiling:
        so.enable_profiling = True
        if profile_prefix:
            so.profile_file_prefix = profile_prefix
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    try:
        providers: list = providers_for(device)
        if cuda_options and device == "cuda":
            providers = [("CUDAExecutionProvider", dict(cuda_options)), *providers[1:]]
        extra = {"disabled_optimizers": list(BASIC_DISABLED)} if optimization == "basic" else {}
        sess = ort.InferenceSession(model, sess_options=so, providers=providers, **extra)
    except DeviceError:
        raise
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NotImplemented types
        text = ort_message(exc)
        if "NOT_IMPLEMENTED" in str(exc) or "Could not find an implementation" in str(exc) \
                or "is not a registered function/op" in str(exc):
            raise UnsupportedOpError(
                f"ONNX Runtime cannot run this model: {text}",
                "if the op is a TensorRT plugin, run it through xtrt.runtime.split (handlers in xtrt.ops) "
                "or register a handler with --plugin my_ops.py") from exc
        raise ModelError(f"ONNX Runtime rejected the model: {text}",
                         "check the model with onnx.checker and re-export it") from exc
    if device == "cuda" and "CUDAExecutionProvider" not in sess.get_providers():
        raise DeviceError("onnxruntime-gpu could not start its CUDA execution provider (CUDA or cuDNN "
                          "libraries not found)",
                          "install onnxruntime-gpu matching your CUDA (its nvidia-* wheels or the "
                          "system CUDA/cuDNN), or use --device cpu")
    return sess


def _has_qdq(model) -> bool:
    """Whether ``model`` (path, bytes or ModelProto) holds a QuantizeLinear node."""
    if not hasattr(model, "graph"):
        import onnx

        try:
            model = onnx.load_model_from_string(model) if isinstance(model, bytes) else \
                onnx.load(str(model), load_external_data=False)
        except Exception:  # let ORT report an unreadable model in its own words
            return False
    return any(n.op_type == "QuantizeLinear" for n in model.graph.node)


def run_session(session, feeds: dict[str, np.ndarray],
                output_names: Sequence[str] | None = None) -> list[np.ndarray]:
    """Run ``session`` on ``feeds`` and return outputs in the model's output order."""
    names = list(output_names) if output_names else [o.name for o in session.get_outputs()]
    return session.run(names, feeds)

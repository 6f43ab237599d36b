"""xtrt.lint: is a Q/DQ ONNX model what TensorRT needs?

* :mod:`xtrt.lint.qdq` — pure structural checks (:func:`~xtrt.lint.qdq.lint_qdq` -> findings);
* :mod:`xtrt.lint.trt_rtx` — parse and build with the TensorRT-RTX builder (SM89, no GPU), and read
  which layers take Int8 (:func:`~xtrt.lint.trt_rtx.build_with_trt_rtx`);
* ``python -m xtrt.lint MODEL.onnx [--trt-rtx]`` (console script ``xtrt-lint``).
"""
from xtrt.lint.qdq import Finding, errors, lint_qdq, summarize

__all__ = ["Finding", "errors", "lint_qdq", "summarize"]

"""xtrt: make ONNX vision models ready for INT8 deployment on TensorRT."""
from __future__ import annotations

__version__ = "0.1.0"

from xtrt.errors import XtrtError  # noqa: E402

__all__ = ["__version__", "XtrtError"]

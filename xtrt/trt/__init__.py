"""TensorRT's rules for explicit (Q/DQ) INT8, in one place: :mod:`xtrt.trt.rules`."""
from xtrt.trt import rules

__all__ = ["rules"]

"""Op handlers for plugins and ops that ONNX Runtime or PPQ cannot run.

``import xtrt.ops`` registers the built-in handlers in :data:`REGISTRY`:

* ``EfficientNMS_TRT``, ``EfficientNMS_ONNX_TRT``, ``NonMaxSuppression`` (:mod:`xtrt.ops.nms`)
* ``BatchedNMS_TRT``, ``BatchedNMSDynamic_TRT`` (:mod:`xtrt.ops.batched_nms`)
* ``ROIAlign_TRT`` / ``RoIAlign_TRT``, ``RoiAlign`` (:mod:`xtrt.ops.roi_align`)

User handlers come from ``REGISTRY.load_plugin("my_ops.py")`` (the ``--plugin`` flag).
torch is imported only when a handler runs.
"""
from __future__ import annotations

from xtrt.ops.registry import REGISTRY, OpHandler, OpRegistry, node_attrs, unknown_op_error
from xtrt.ops import batched_nms as _batched_nms  # noqa: E402,F401  (registers handlers)
from xtrt.ops import nms as _nms  # noqa: E402,F401
from xtrt.ops import roi_align as _roi_align  # noqa: E402,F401

__all__ = ["REGISTRY", "OpHandler", "OpRegistry", "node_attrs", "unknown_op_error"]

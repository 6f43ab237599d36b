"""User-facing errors.

A user error (bad model, bad config, bad data, missing handler, unwritable output) raises
:class:`XtrtError` or a subclass.  The CLI catches exactly this type and prints one line with the
problem and the fix; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = [
    "XtrtError", "ConfigError", "ModelError", "DataError", "UnsupportedOpError",
    "OutputError", "DeviceError", "QuantizationError",
]


class XtrtError(Exception):
    """Base class of every error that is the user's to fix.

    Args:
        message: what is wrong, naming the file/key/node concerned.
        hint: how to fix it (optional).
    """

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.hint})" if self.hint else self.message


class ConfigError(XtrtError):
    """Unknown key, bad value, missing required field in a config or --set override."""


class ModelError(XtrtError):
    """Missing, corrupt or unsupported model file, or an input shape that does not fit it."""


class DataError(XtrtError):
    """Calibration/evaluation data that cannot be used (empty folder, wrong shape or dtype)."""


class UnsupportedOpError(XtrtError):
    """An op type that neither ONNX Runtime/PPQ nor a registered xtrt handler can execute."""


class OutputError(XtrtError):
    """An output folder or file that cannot be written (permissions, full disk)."""


class DeviceError(XtrtError):
    """A device was asked for that is not there (e.g. --device cuda without CUDA)."""


class QuantizationError(XtrtError):
    """Quantization could not complete for a reason the user can act on."""

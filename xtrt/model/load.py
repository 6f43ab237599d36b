"""Load, check and save ONNX models with user-facing errors."""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from xtrt.errors import ModelError, OutputError

__all__ = ["load_model", "save_model_atomic", "input_infos", "output_names", "dims_of"]

log = logging.getLogger(__name__)


def load_model(path: str | Path):
    """Load an ONNX model (external data included). Raises ModelError if missing or corrupt."""
    import onnx

    p = Path(path)
    if not p.exists():
        raise ModelError(f"model file {str(p)!r} does not exist",
                         "check the path (config key 'model' or the MODEL argument)")
    if not p.is_file():
        raise ModelError(f"model path {str(p)!r} is not a file", "point it at an .onnx file")
    try:
        model = onnx.load(str(p), load_external_data=True)
    except Exception as exc:
        raise ModelError(f"model file {str(p)!r} is not a readable ONNX model "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})",
                         "re-export it, or check that the download/copy is complete") from exc
    if not model.graph.node:
        raise ModelError(f"model file {str(p)!r} has an empty graph",
                         "re-export it; is this really an ONNX model?")
    return model


def dims_of(value_info) -> list[int | str | None]:
    """Shape of a ValueInfoProto as ints (static), strings (symbolic) or None (unknown)."""
    out: list[int | str | None] = []
    for d in value_info.type.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def input_infos(model) -> list[tuple[str, list[int | str | None], int]]:
    """(name, dims, onnx elem_type) of the real graph inputs (initializers excluded)."""
    inits = {i.name for i in model.graph.initializer}
    return [(i.name, dims_of(i), i.type.tensor_type.elem_type)
            for i in model.graph.input if i.name not in inits]


def output_names(model) -> list[str]:
    return [o.name for o in model.graph.output]


def save_model_atomic(model, path: str | Path) -> Path:
    """Save to a temporary file in the destination folder, then rename.

    Models over 1.8 GB are saved with external data beside the file.
    """
    import onnx

    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write to folder {str(p.parent)!r}: {exc.strerror or exc}",
                          "choose a writable output_dir (or fix its permissions)") from exc
    try:
        big = model.ByteSize() > 1_800_000_000
        onnx.save(model, tmp, save_as_external_data=big,
                  location=p.name + ".data" if big else None)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, p)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"cannot write {str(p)!r}: {exc.strerror or exc}",
                          "free disk space or choose another output_dir") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p

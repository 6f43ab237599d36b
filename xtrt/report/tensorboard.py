"""TensorBoard event file with scalars, texts and PNG images, next to a profiler trace.

Uses tensorboard's own TensorFlow-free event writer and protobufs (the ones
``torch.utils.tensorboard`` also uses underneath), so it needs neither TensorFlow nor torch. PNG
files are embedded as they are (no decoding, no Pillow). Point ``logdir`` at the folder where the
torch profiler wrote its ``*.pt.trace.json`` and ``tensorboard --logdir`` shows both in one run.
"""
from __future__ import annotations

import math
import os
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from xtrt.errors import OutputError

__all__ = ["write_tensorboard"]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(data: bytes, path: Path) -> tuple[int, int]:
    """(height, width) from a PNG's IHDR chunk."""
    if len(data) < 24 or not data.startswith(_PNG_MAGIC) or data[12:16] != b"IHDR":
        raise OutputError(f"cannot add {path} to TensorBoard: it is not a PNG file",
                          hint="pass PNG images (as written by xtrt.report.plots)")
    width, height = struct.unpack(">II", data[16:24])
    return height, width


def _scalar_points(tag: str, value: float | Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    if isinstance(value, (int, float)) or type(value).__module__ == "numpy":
        return [(0, float(value))]
    try:
        return [(int(s), float(v)) for s, v in value]
    except (TypeError, ValueError):
        raise TypeError(f"scalar {tag!r}: expected a number or a list of (step, value), got {value!r}") from None


def write_tensorboard(logdir: str | os.PathLike, scalars: Mapping[str, float | Sequence[tuple[int, float]]],
                      texts: Mapping[str, str] | None = None,
                      images: Mapping[str, str | os.PathLike] | None = None,
                      *, step: int = 0) -> Path:
    """Write one event file under ``logdir``; return its path.

    Args:
        logdir: the run folder (created if missing).
        scalars: tag -> a number (written at ``step``) or a list of ``(step, value)`` points.
            Non-finite values are skipped (TensorBoard draws them badly).
        texts: tag -> markdown text (the Text tab renders markdown, tables included).
        images: tag -> path of a PNG file, written at ``step``.
        step: the step of single-number scalars, texts and images.

    Raises:
        OutputError: ``logdir`` cannot be written, or an image cannot be read or is not a PNG.
    """
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData
    from tensorboard.summary.writer.event_file_writer import EventFileWriter

    logdir = Path(logdir)
    summaries: list[tuple[int, Summary]] = []
    for tag, value in scalars.items():
        for s, v in _scalar_points(tag, value):
            if math.isfinite(v):
                summaries.append((s, Summary(value=[Summary.Value(tag=tag, simple_value=v)])))
    text_meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name="text", content=TextPluginData(version=0).SerializeToString()))
    for tag, text in (texts or {}).items():
        tensor = TensorProto(dtype="DT_STRING", string_val=[str(text).encode("utf-8")],
                             tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
        summaries.append((step, Summary(value=[Summary.Value(tag=tag, metadata=text_meta, tensor=tensor)])))
    for tag, png in (images or {}).items():
        png = Path(png)
        try:
            data = png.read_bytes()
        except OSError as e:
            raise OutputError(f"cannot add {png} to TensorBoard: {e.strerror}",
                              hint="write the plot before the TensorBoard file") from e
        h, w = _png_size(data, png)
        img = Summary.Image(height=h, width=w, colorspace=4 if data[25] in (4, 6) else 3,
                            encoded_image_string=data)
        summaries.append((step, Summary(value=[Summary.Value(tag=tag, image=img)])))

    try:
        writer = EventFileWriter(str(logdir), filename_suffix=".xtrt")
    except OSError as e:
        raise OutputError(f"cannot write TensorBoard logs to {logdir}: {e.strerror or e}",
                          hint="choose a log folder you can write to (its parents must be folders)") from e
    try:
        for s, summary in summaries:
            writer.add_event(Event(wall_time=time.time(), step=s, summary=summary))
        writer.flush()
    finally:
        writer.close()
    name = getattr(writer, "_file_name", None)  # no public accessor for the file name
    if name is None:
        name = max(logdir.glob("events.out.tfevents.*.xtrt"), key=os.path.getmtime)
    return Path(name)

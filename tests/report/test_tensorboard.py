"""TensorBoard event file readable by tensorboard's own EventAccumulator."""
from __future__ import annotations

import pytest

from xtrt.errors import OutputError
from xtrt.report.tensorboard import write_tensorboard


def _png(path):
    from xtrt.report.plots import plot_batch_sweep
    return plot_batch_sweep([{"batch": 1, "throughput": 10.0, "latency_ms": 5.0},
                             {"batch": 2, "throughput": 15.0, "latency_ms": 7.0}], path)


def test_scalars_texts_images_read_back(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    png = _png(tmp_path / "sweep.png")
    run = tmp_path / "run"
    event_file = write_tensorboard(run, {"quant/sqnr_db": 31.5, "quant/inf": float("inf"),
                                         "sweep/throughput": [(1, 10.0), (2, 15.0), (4, 18.5)]},
                                   {"report": "# title\n| a | b |\n|---|---|\n| 1 | 2 |"},
                                   {"plots/sweep": png})
    assert event_file.parent == run and event_file.name.startswith("events.out.tfevents.")
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    acc.Reload()
    assert acc.Tags()["scalars"] == ["quant/sqnr_db", "sweep/throughput"]  # inf skipped
    assert [(e.step, e.value) for e in acc.Scalars("quant/sqnr_db")] == [(0, 31.5)]
    assert [(e.step, e.value) for e in acc.Scalars("sweep/throughput")] == [(1, 10.0), (2, 15.0), (4, 18.5)]
    text = acc.Tensors("report")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("# title")
    assert acc.summary_metadata["report"].plugin_data.plugin_name == "text"
    img = acc.Images("plots/sweep")[0]
    assert img.encoded_image_string == png.read_bytes() and img.width > 100 and img.height > 100


def test_unwritable_logdir(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match=r"cannot write TensorBoard logs to .*afile/run"):
        write_tensorboard(tmp_path / "afile" / "run", {"a": 1.0}, {})


def test_not_a_png(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("not a png")
    with pytest.raises(OutputError, match=r"x\.png to TensorBoard: it is not a PNG file"):
        write_tensorboard(tmp_path / "run", {}, {}, {"x": bad})

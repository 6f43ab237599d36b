"""xtrt.report: render results it is given (tables, JSON/markdown files, PNG plots, TensorBoard).

Nothing here computes a metric; :mod:`xtrt.analysis` does that. Heavy imports (matplotlib,
tensorboard) happen inside the functions that need them, so importing this package is instant.

The quant report (``report.json``, rendered by :func:`render_report_md`) is a dict with
``"schema_version": REPORT_SCHEMA_VERSION`` and any of these keys; each is optional::

    summary      {key: scalar}: model, output model, status, runtime_s, calibration images, ...
    outputs      {output name: xtrt.analysis.metrics.OutputComparer.result() entry}
    task         {"kind": "classify"|"detect", "metrics": [{"name", "fp32", "int8", "delta", "note"}], ...}
                 (a list of such metric rows, or a flat {key: scalar} dict, is rendered too)
    worst_layers [{"name", "op_type", "snr_db" and/or "noise_ratio", ...}], worst first
    fallback     {"metric_name", "target", "trials": [{"n_fp32_layers", "metric", "layers", "passed",
                 "chosen"}], "chosen": ...}
    placement    {key: scalar | list | list of dicts}: what was quantized, what stays float, why
    plots        {caption: path relative to the markdown file}

Changing what a key means, or removing one, bumps REPORT_SCHEMA_VERSION; adding keys does not.
"""
from __future__ import annotations

#: Version of the report JSON layout described above.
REPORT_SCHEMA_VERSION = 1

from xtrt.report.files import atomic_path, to_jsonable, write_json_atomic, write_text_atomic  # noqa: E402
from xtrt.report.markdown import render_report_md  # noqa: E402
from xtrt.report.plots import (  # noqa: E402
    plot_activation_scatter, plot_batch_sweep, plot_fallback_tradeoff, plot_layer_snr,
)
from xtrt.report.table import render_table  # noqa: E402
from xtrt.report.tensorboard import write_tensorboard  # noqa: E402

__all__ = [
    "REPORT_SCHEMA_VERSION", "render_table", "render_report_md", "to_jsonable", "write_json_atomic",
    "write_text_atomic", "atomic_path", "plot_layer_snr", "plot_activation_scatter",
    "plot_fallback_tradeoff", "plot_batch_sweep", "write_tensorboard",
]

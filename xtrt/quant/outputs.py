"""Write a quantization run's outputs: the model and side files, report.json / report.md, plots,
TensorBoard scalars.  Everything goes into the staging folder of an :class:`xtrt.outdir.OutputDir`
opened at the start of the run (:func:`open_output_dir`); its ``commit()`` swaps the result in.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from xtrt.config import config_to_dict
from xtrt.outdir import OutputDir

if TYPE_CHECKING:  # pragma: no cover
    from xtrt.quant.pipeline import QuantResult

__all__ = ["QUANT_OUTPUTS", "open_output_dir", "write_outputs"]

log = logging.getLogger(__name__)


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch

    import xtrt
    from xtrt.backend import ppq as ppq_backend

    return {"xtrt": xtrt.__version__, "ppq": ppq_backend.ppq_version(), "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__}


#: what xtrt.quant writes; a folder an older xtrt (without a manifest) wrote may hold these
QUANT_OUTPUTS = ("quantized.onnx", "quant_cfg.json", "dynamic_range.json", "calibration.cache",
                 "resolved_config.yaml", "report.json", "report.md", "tensorboard",
                 "layers_noise.png", "layers_alone.png", "fallback.png", "worst_layer_scatter.png")


def open_output_dir(path: Path, *, force: bool = False) -> OutputDir:
    """Open ``output_dir`` for a quantization run (checked, locked, staged: xtrt.outdir).

    Call it before any work; write with :func:`write_outputs` into ``.staging``, then
    ``commit()``; leaving its ``with`` block (or ``abort()``) without commit discards the run.
    """
    return OutputDir(path, "xtrt.quant", force=force, adopt=QUANT_OUTPUTS,
                     option="output folder").open()


def write_outputs(stage: Path, out_dir: Path, cfg, prepared, cal, placement, qmodel, ev_int8, ev_sim,
                   layers, fallback, timings, ed, qmodel_all_int8, cal_engine, search=None) -> QuantResult:
    import yaml

    from xtrt.model.load import save_model_atomic
    from xtrt.quant import export as ex
    from xtrt.report import REPORT_SCHEMA_VERSION
    from xtrt.report.files import write_json_atomic, write_text_atomic
    from xtrt.report.markdown import render_report_md

    versions = _versions()
    scales = ex.tensor_scales(prepared.model, cal, placement)
    cfg_dict = config_to_dict(cfg)
    save_model_atomic(qmodel, stage / "quantized.onnx")
    write_json_atomic(stage / "quant_cfg.json", ex.quant_cfg(
        scales, placement, cal, config=cfg_dict, versions=versions, input_name=prepared.input_name,
        input_shape=prepared.input_shape, dynamic_batch=prepared.dynamic_batch))
    write_json_atomic(stage / "dynamic_range.json", ex.dynamic_ranges(scales))
    write_text_atomic(stage / "calibration.cache", ex.calibration_cache_text(scales))
    write_text_atomic(stage / "resolved_config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))

    worst = layers[0]["name"] if layers else None
    report = {
        "schema_version": REPORT_SCHEMA_VERSION,
        "title": f"xtrt quantization report: {Path(cfg.model).name}",
        "summary": {
            "model": str(cfg.path(cfg.model)), "task": ed.task, "device": cfg.device,
            "int8_ops": len(placement.quantize), "float_ops": len(placement.keep_float),
            "calibration_images": sum(1 for _ in cal.quantized_ops) and None,
            "held_out_images": ev_int8.images, "worst_layer": worst,
        },
        "preparation": {"steps": prepared.steps, "source_opset": prepared.source_opset,
                        "nodes_before": prepared.nodes_before, "nodes_after": prepared.nodes_after,
                        "max_abs_diff_vs_source": prepared.max_abs_diff,
                        "dynamic_batch": prepared.dynamic_batch,
                        "calibration_shape": prepared.input_shape},
        "calibration": {"method": (search or {}).get("chosen", cfg.calibration.method),
                        "requested": cfg.calibration.method,
                        "method_search": search, "seconds": timings.get("calibrate"),
                        "engine": cal_engine,
                        "lsq": cfg.quantization.lsq.enabled},
        "outputs": ev_int8.outputs,
        "task": _task_rows(ev_int8, ev_sim),
        "ppq_simulation": {"outputs": {k: {"sqnr_db": v["sqnr_db"], "cosine": v["cosine"]}
                                       for k, v in ev_sim.outputs.items()},
                           "task": ev_sim.task},
        "worst_layers": layers[:10],
        "layers": layers,
        "fallback": fallback.as_dict() if fallback else None,
        "placement": placement.as_dict(),
        "timings_s": timings,
        "versions": versions,
    }
    report["summary"].pop("calibration_images")
    from xtrt.quant.pipeline import QuantResult

    files = QuantResult(output_dir=out_dir, report=report)
    plots = _plots(stage, report, fallback, cfg, prepared, qmodel_all_int8, ed.batches)
    report["plots"] = [p.name for p in plots]
    _tensorboard(stage, report)
    write_json_atomic(stage / "report.json", report)
    write_text_atomic(stage / "report.md", render_report_md(report))
    # the caller commits the staging folder (OutputDir.commit); these are the final paths
    for item in sorted(stage.iterdir()):
        if not item.name.startswith(("XTRT-", ".")):
            files.files[item.name] = out_dir / item.name
    files.report = report
    return files


def _task_rows(ev_int8, ev_sim) -> dict:
    t = dict(ev_int8.task)
    t["ppq_simulation"] = {k: v for k, v in ev_sim.task.items() if k != "kind"}
    return t


def _tensor_values(model, tensor: str, batches, device: str) -> np.ndarray:
    """Values of an intermediate tensor on ``batches`` (ORT; the body of a plugin model)."""
    from xtrt.model.split import runnable_body, with_outputs
    from xtrt.runtime.session import make_session

    sess = make_session(with_outputs(runnable_body(model), [tensor]), device)
    return np.concatenate([sess.run([tensor], b.feeds)[0].reshape(-1) for b in batches])


def _worst_layer_scatter(stage: Path, prepared, qmodel, layer: str, batches, device: str):
    from xtrt.analysis.metrics import sqnr_db
    from xtrt.report import plots

    node = next((n for n in prepared.model.graph.node if n.name == layer), None)
    if node is None or not batches:
        return None
    out = node.output[0]
    ref = _tensor_values(prepared.model, out, batches[:2], device)
    test = _tensor_values(qmodel, out, batches[:2], device)
    return plots.plot_activation_scatter(ref, test, f"{layer} output ({node.op_type})",
                                         stage / "worst_layer_scatter.png",
                                         sqnr_db=sqnr_db(ref, test))


def _plots(stage: Path, report: dict, fallback, cfg, prepared=None, qmodel=None,
           batches=()) -> list[Path]:
    from xtrt.report import plots

    out = []
    worst = (report.get("summary") or {}).get("worst_layer")
    if worst and prepared is not None:
        try:
            p = _worst_layer_scatter(stage, prepared, qmodel, worst, list(batches), cfg.device)
            if p is not None:
                out.append(p)
        except Exception as exc:  # a plot must never fail the run
            log.warning("could not draw the worst layer's activations: %s", exc)
    layers = report.get("layers") or []
    if layers:
        out.append(plots.plot_layer_snr(layers, stage / "layers_noise.png", metric="noise_ratio",
                                        title="Graph-wise noise/signal per quantized layer, "
                                              "accumulated through the graph (lower is better)"))
    alone = [{"name": r["name"], "op_type": r["op_type"], "noise_ratio": r["layerwise_noise_ratio"]}
             for r in layers if r.get("layerwise_noise_ratio") is not None]
    if alone:
        out.append(plots.plot_layer_snr(alone, stage / "layers_alone.png", metric="noise_ratio",
                                        title="Layer-wise: output noise/signal with only that layer "
                                              "in INT8 (the fallback ranking; lower is better)"))
    if fallback and fallback.trials:
        target = cfg.analysis.target
        goal = target.goal()
        out.append(plots.plot_fallback_tradeoff(
            [dict(t, chosen=(i == fallback.chosen)) for i, t in enumerate(fallback.trials)],
            target.metric, goal, stage / "fallback.png"))
    return out


def _tensorboard(stage: Path, report: dict) -> None:
    from xtrt.report.tensorboard import write_tensorboard

    scalars = {}
    for name, o in (report.get("outputs") or {}).items():
        if o.get("sqnr_db") is not None and np.isfinite(o["sqnr_db"]):
            scalars[f"fidelity/{name}/sqnr_db"] = float(o["sqnr_db"])
        if o.get("cosine") is not None:
            scalars[f"fidelity/{name}/cosine"] = float(o["cosine"])
    task = report.get("task") or {}
    for key in ("top1_agreement", "map50_95", "map50"):
        if isinstance(task.get(key), (int, float)):
            scalars[f"task/{key}"] = float(task[key])
    fb = report.get("fallback")
    if fb:
        scalars["fallback/metric"] = [(t["n_fp32_layers"], float(t["metric"]))
                                      for t in fb["trials"] if t.get("metric") is not None]
    texts = {"summary": "\n".join(f"- {k}: {v}" for k, v in report["summary"].items())}
    write_tensorboard(stage / "tensorboard" / "quant", scalars, texts,
                      images={p: stage / p for p in report.get("plots", [])} or None)

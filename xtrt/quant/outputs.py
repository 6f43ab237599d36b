"""Write a quantization run's outputs: the model and side files, report.json / report.md, plots,
TensorBoard scalars.  It renders the :class:`~xtrt.quant.result.RunRecord` it is given and
computes nothing.  Everything goes into the staging folder of the output folder claimed at the
start of the run (:func:`claim_output_dir`, an :class:`xtrt.outdir.OutputDir`); ``commit()``
swaps the whole result in.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np

from xtrt.config import config_to_dict
from xtrt.outdir import OutputDir

from xtrt.quant.result import QuantResult, RunRecord

__all__ = ["QUANT_OUTPUTS", "OutputClaim", "claim_output_dir", "kept_float_reasons",
           "write_outputs"]

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


class OutputClaim:
    """An output folder claimed for one run (an opened :class:`xtrt.outdir.OutputDir`): checked,
    locked, with a private staging folder that :meth:`commit` swaps in whole."""

    def __init__(self, out_dir: Path, *, force: bool = False):
        self._dir = OutputDir(out_dir, "xtrt.quant", force=force, adopt=QUANT_OUTPUTS,
                              option="output folder").open()
        self.out_dir, self.stage = self._dir.path, self._dir.staging

    def commit(self) -> dict[str, Path]:
        """Swap the staged outputs in; {name: final path}."""
        return self._dir.commit()

    def release(self) -> None:
        """After commit: nothing left to do; otherwise the staging folder is removed."""
        self._dir.abort()


def claim_output_dir(path: Path, *, force: bool = False) -> OutputClaim:
    """Claim ``path`` before any work (xtrt.outdir): one line if it is a file, holds files xtrt
    did not write, is in use by another run, or cannot be written."""
    return OutputClaim(path, force=force)


def write_outputs(rec: RunRecord) -> QuantResult:
    """Write every output of ``rec`` into the job's staging folder, then move them into place."""
    import yaml

    from xtrt.model.load import save_model_atomic
    from xtrt.quant import export as ex
    from xtrt.report.files import write_json_atomic, write_text_atomic
    from xtrt.report.markdown import render_report_md
    from xtrt.trt.kept_float import write_kept_float

    t0 = time.perf_counter()
    job, prepared, cal, placement = rec.job, rec.prepared, rec.calibrated.result, rec.placement
    cfg, stage = job.cfg, job.stage
    versions = _versions()
    scales = ex.tensor_scales(prepared.model, cal, placement)
    cfg_dict = config_to_dict(cfg)
    write_kept_float(rec.qmodel, kept_float_reasons(placement, rec.qmodel, rec.precision))
    save_model_atomic(rec.qmodel, stage / "quantized.onnx")
    write_json_atomic(stage / "quant_cfg.json", {**ex.quant_cfg(
        scales, placement, cal, config=cfg_dict, versions=versions, input_name=prepared.input_name,
        input_shape=prepared.input_shape, dynamic_batch=prepared.dynamic_batch),
        "float_precision": rec.precision})
    write_json_atomic(stage / "dynamic_range.json", ex.dynamic_ranges(scales))
    write_text_atomic(stage / "calibration.cache", ex.calibration_cache_text(scales))
    write_text_atomic(stage / "resolved_config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
    report = _report(rec, versions)
    plots = _plots(stage, report, rec.fallback, cfg, rec.scatter)
    report["plots"] = [p.name for p in plots]
    _tensorboard(stage, report)
    # this stage's own time (files, plots, TensorBoard), up to the report itself
    report["timings_s"] = {**rec.timings, "report": round(time.perf_counter() - t0, 3)}
    write_json_atomic(stage / "report.json", report)
    write_text_atomic(stage / "report.md", render_report_md(report))
    shutil.rmtree(stage / ".cache", ignore_errors=True)
    files = job._claim.commit()
    return QuantResult(output_dir=job.output_dir, files=files, report=report)


def kept_float_reasons(placement, model, precision: dict | None) -> dict[str, str]:
    """Node -> why it is float in the written ``model``: the layers TensorRT could run in INT8
    that the placement kept float (decode tail, exclusions, the fallback), and the nodes the FP16
    export keeps FP32 (measured on calibration data).  Written into the model's metadata
    (xtrt.trt.kept_float) so that xtrt.lint reports them as kept float, not as hazards."""
    from xtrt.trt.rules import INT8_OP_TYPES

    ops = {n.name: n.op_type for n in model.graph.node}
    out = {n: why for n, why in placement.keep_float.items() if ops.get(n) in INT8_OP_TYPES}
    for n, why in ((precision or {}).get("kept_fp32") or {}).items():
        if n in ops:
            out[n] = f"{out[n]}; " if n in out else ""
            out[n] += f"FP32 in the FP16 export: {why}"
    return out


def _report(rec: RunRecord, versions: dict) -> dict:
    from xtrt.report import REPORT_SCHEMA_VERSION

    job, prepared, placement, plan = rec.job, rec.prepared, rec.placement, rec.calibrated.plan
    cfg, ev, sim = job.cfg, rec.evaluation, rec.simulation
    layers = rec.analysis.layers
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "title": f"xtrt quantization report: {Path(cfg.model).name}",
        "summary": {
            "model": str(job.model_path), "task": rec.task, "device": cfg.device,
            "int8_ops": len(placement.quantize), "float_ops": len(placement.keep_float),
            "calibration_images": rec.calibrated.images,
            "held_out_images": 0 if job.judged_on_calibration else ev.images,
            "judged_on": rec.judged_on, "choices_made_on": rec.chosen_on,
            "worst_layer": rec.analysis.worst,
        },
        "preparation": {"steps": prepared.steps, "source_opset": prepared.source_opset,
                        "nodes_before": prepared.nodes_before, "nodes_after": prepared.nodes_after,
                        "max_abs_diff_vs_source": prepared.max_abs_diff,
                        "dynamic_batch": prepared.dynamic_batch,
                        "calibration_shape": prepared.input_shape},
        "calibration": {"method": rec.calibrated.method, "requested": plan.requested,
                        "why": plan.reason, "method_search": rec.search,
                        "seconds": rec.timings.get("calibrate"), "engine": plan.engine_text,
                        "lsq": bool(rec.job.cfg.quantization.lsq.enabled),
                        "effort": rec.job.cfg.quantization.effort,
                        "techniques": getattr(rec.calibrated.result, "techniques", {})},
        "outputs": ev.outputs,
        "task": _task_rows(ev, sim),
        "ppq_simulation": {"outputs": {k: {"sqnr_db": v["sqnr_db"], "cosine": v["cosine"]}
                                       for k, v in sim.outputs.items()},
                           "task": sim.task},
        "worst_layers": layers[:10],
        "layers": layers,
        "fallback": rec.fallback.as_dict() if rec.fallback else None,
        "placement": placement.as_dict(),
        "float_precision": rec.precision,
        "engine": rec.engine,
        "timings_s": rec.timings,
        "versions": versions,
    }


def _task_rows(ev_int8, ev_sim) -> dict:
    t = dict(ev_int8.task)
    t["ppq_simulation"] = {k: v for k, v in ev_sim.task.items() if k != "kind"}
    return t


def _plots(stage: Path, report: dict, fallback, cfg, scatter=None) -> list[Path]:
    from xtrt.analysis.metrics import sqnr_db
    from xtrt.report import plots

    out = []
    if scatter is not None:
        ref, test, title = scatter
        out.append(plots.plot_activation_scatter(ref, test, title, stage / "worst_layer_scatter.png",
                                                 sqnr_db=sqnr_db(ref, test)))
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

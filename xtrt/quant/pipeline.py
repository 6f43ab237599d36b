"""``xtrt.quant``: config in, quantized.onnx + quant_cfg.json + report out.

The run is a list of stages, each a function over typed values in a module named for it:

    job        = QuantJob.from_config(cfg)            xtrt.quant.job        paths, output folder claimed
    prepared   = prepare(job)                         xtrt.model.prepare    shapes, folding, opset 13
    placement  = place(job, prepared)                 xtrt.quant.placement  what runs INT8, and why not
    calibrated = calibrate(cfg, prepared, ...)        xtrt.quant.calibrate  streamed statistics, scales
    evaluator  = build_evaluator(job, prepared, ...)  xtrt.quant.evaluate   FP32 reference, once
    search     = choose_method(calibrated, ...)       xtrt.quant.select     auto: best method kept
    qmodel     = export_qdq(prepared.model, ...)      xtrt.quant.export     Q/DQ model
    evaluation = evaluator.evaluate_model(qmodel)     xtrt.quant.verify     fidelity on held-out images
    analysis   = analyse(cfg, prepared, ...)          xtrt.quant.analyse    graph-/layer-wise noise
    fallback   = run_target_fallback(...)             xtrt.quant.fallback   float layers for a target
    result     = write_outputs(RunRecord(...))        xtrt.quant.outputs    staged, then moved in

Data is streamed: calibration batches are decoded again for each pass once they exceed a small
memory budget, held-out batches and their FP32 outputs spill to disk past theirs.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Sequence

from xtrt.config import Config
from xtrt.quant.result import QuantResult

__all__ = ["QuantResult", "run_quant"]

log = logging.getLogger(__name__)


class _Timings(dict):
    @contextlib.contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self[name] = round(self.get(name, 0.0) + time.perf_counter() - t0, 3)


def run_quant(cfg: Config, *, progress: bool = True, plugins: Sequence[str] = ()) -> QuantResult:
    """Run the quantization job described by ``cfg`` (``plugins``: extra op-handler files given on
    the command line, relative to the working directory); see the module docstring."""
    from xtrt.quant import techniques
    from xtrt.quant.job import QuantJob

    t_start = time.perf_counter()
    cfg = techniques.resolve(cfg)  # quantization.effort fills what the config leaves unset
    job = QuantJob.from_config(cfg, cli_plugins=plugins, progress=progress)
    try:
        res = _run(job)
    finally:
        job.release()
    res.seconds = time.perf_counter() - t_start
    return res


def _run(job) -> QuantResult:
    from xtrt.backend import ppq as ppq_backend
    from xtrt.quant.analyse import analyse, worst_layer_values
    from xtrt.quant.calibrate import calibrate
    from xtrt.quant.evaluate import build_evaluator
    from xtrt.quant.checks import check_evaluation, check_scales
    from xtrt.quant.export import export_qdq, tensor_scales
    from xtrt.quant.fallback import run_target_fallback
    from xtrt.quant.outputs import write_outputs
    from xtrt.quant.result import RunRecord
    from xtrt.quant import techniques
    from xtrt.quant.select import choose_method

    cfg, t = job.cfg, _Timings()
    with t("prepare"):
        prepared = prepare(job)
    placement = place(job, prepared)
    cal_src = batches(job, prepared, job.calibration_files, cfg.calibration.batch_size,
                      "calibration data")
    with t("calibrate"):
        calibrated = calibrate(cfg, prepared, placement, cal_src, progress=job.progress)
    placement.quantize = [n for n in placement.quantize
                          if n in set(calibrated.result.quantized_ops)]
    check_scales(tensor_scales(prepared.model, calibrated.result, placement))
    with t("verify"):
        evaluator = build_evaluator(job, prepared, batches(
            job, prepared, job.heldout_files, cfg.evaluation.batch_size, "held-out data"))
        selector = evaluator if not job.selection_files else build_evaluator(
            job, prepared, batches(job, prepared, job.selection_files, cfg.evaluation.batch_size,
                                   "selection data"), kind="selection")
    try:
        with t("method_search"):
            search = choose_method(calibrated, lambda c: export_qdq(prepared.model, c.result,
                                                                   placement), selector,
                                   cfg.calibration.search_images)
        with t("techniques"):
            techniques.after_calibration(cfg, calibrated.result, calibrated.stats, cal_src,
                                         progress=job.progress)
        check_scales(tensor_scales(prepared.model, calibrated.result, placement))
        with t("export"):
            qmodel = export_qdq(prepared.model, calibrated.result, placement)
        with t("verify"):
            ev_int8 = evaluator.evaluate_model(qmodel)
            ev_sim = evaluator.evaluate_fn(ppq_backend.simulator(  # one executor, every batch
                calibrated.result, device=cfg.device, outputs=len(prepared.output_names)))
        precision_batches = _precision_batches(cal_src)   # decoded once: fallback + precision
        with t("analysis"):
            analysis = analyse(cfg, prepared, calibrated, cal_src,
                               need_layerwise=cfg.analysis.layerwise or
                               cfg.analysis.target is not None, progress=job.progress)
            scatter = _scatter(prepared, qmodel, analysis.worst, evaluator, cfg.device,
                               worst_layer_values)
        with t("fallback"):
            fb = run_target_fallback(cfg, prepared, calibrated, analysis, selector, ev_int8 if
                                     selector is evaluator else None, test=evaluator,
                                     precision_batches=precision_batches)
        final_placement, final_eval, final_model = placement, ev_int8, qmodel
        if fb is not None and fb.qmodel is not None:
            final_placement, final_model = fb.placement, fb.qmodel
            final_eval = fb.evaluation if selector is evaluator else \
                evaluator.evaluate_model(fb.qmodel)
        if fb is None:
            t.pop("fallback", None)
        with t("float_precision"):       # export.float_precision (xtrt.quant.precision)
            fp32_model, (final_model, precision, final_eval) = final_model, _precision(
                cfg, prepared, final_model, precision_batches, evaluator, final_eval)
        with t("engine"):                # TensorRT-RTX build of the written model (and the FP32)
            engine = _engine(cfg, final_model, final_placement, precision, fp32_model)
        rec = RunRecord(job=job, prepared=prepared, calibrated=calibrated,
                        placement=final_placement, qmodel=final_model, evaluation=final_eval,
                        simulation=ev_sim, judged_on=evaluator.judged_on,
                        chosen_on=selector.judged_on if (search or fb) else None, task=evaluator.data.task,
                        analysis=analysis, fallback=fb.result if fb else None, search=search,
                        timings=dict(t), scatter=scatter, precision=precision, engine=engine)
        check_evaluation(final_eval.outputs)     # PASSED only on real numbers
        check_evaluation(ev_sim.outputs, "PPQ's simulation")
        return write_outputs(rec)
    finally:
        evaluator.close()
        selector.close()


def _engine(cfg, model, placement, precision, fp32_model=None) -> dict | None:
    """The TensorRT-RTX engine judge of ``model`` (xtrt.lint.trt_rtx), each Float island with the
    reason the run recorded for it, and (``fp32_model``) the FP32 export's figures for contrast;
    None when switched off.  A builder that cannot run here is reported, never fatal."""
    if not cfg.analysis.trt_rtx:
        return None
    from xtrt.lint.trt_rtx import engine_judge, engine_summary, explain_islands
    from xtrt.quant.fp16 import output_writers
    from xtrt.quant.outputs import kept_float_reasons

    reasons = {**output_writers(model), **placement.keep_float,
               **kept_float_reasons(placement, model, precision)}
    fp32_model = None if fp32_model is model else fp32_model
    try:
        judged = explain_islands(engine_judge(model), reasons, model)
        if fp32_model is not None and judged.get("available", True):
            judged["fp32_export"] = engine_summary(explain_islands(
                engine_judge(fp32_model), {**reasons, **output_writers(fp32_model)}, fp32_model))
    except Exception as exc:  # the judge must never fail a run
        log.warning("TensorRT-RTX build check failed: %s", exc)
        return {"available": True, "accepted": False, "errors": [str(exc)]}
    return judged


def _precision_batches(cal_src) -> list:
    """The calibration feeds the FP16 keep-list is measured on (the fallback's trials and the
    precision stage use the same, so the written model is the one the fallback judged)."""
    import itertools

    return [b.feeds for b in itertools.islice(iter(cal_src), 2)]


def _precision(cfg, prepared, qmodel, batches, evaluator, evaluation):
    """FP16 or FP32 outside the Q/DQ pairs; both exports' fidelity (xtrt.quant.precision), on the
    run's shared FP16 exports, evaluations and runners (xtrt.quant.reuse).
    Returns ``(model, info, evaluation of that model)`` (``evaluation`` is ``qmodel``'s)."""
    from xtrt.quant.precision import precision_stage
    from xtrt.quant.fallback import float_precision_export

    model, info = precision_stage(cfg.export.float_precision, qmodel, batches,
                                  evaluator.data, plugin_nodes=prepared.tail_nodes,
                                  device=cfg.device, rtol=evaluator.rtol, atol=evaluator.atol,
                                  export=float_precision_export, evaluate=evaluator.evaluate_model,
                                  runner=evaluator.runner, qdq_opset=cfg.export.fp16_qdq_opset)
    return model, info, evaluation if model is qmodel else evaluator.evaluate_model(model)


def prepare(job):
    """Load the model, register plugins, prepare it for PPQ (xtrt.model.prepare)."""
    import xtrt.ops as ops
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.checks import check_input_type

    if job.device == "cuda":
        from xtrt.runtime.session import providers_for
        providers_for("cuda")
    for plugin in job.plugins:
        ops.REGISTRY.load_plugin(str(plugin))
    source = load_model(job.model_path)
    check_input_type(source, job.cfg.input.name)
    prepared = prepare_model(source, job.cfg.input.shape, job.cfg.input.name)
    log.info("prepared %s: %s", job.model_path.name, "; ".join(prepared.steps))
    return prepared


def place(job, prepared):
    """Where Q/DQ goes (xtrt.quant.placement)."""
    from xtrt.quant.placement import plan_placement

    q = job.cfg.quantization
    return plan_placement(prepared.model, exclude_nodes=q.exclude_nodes,
                          exclude_op_types=q.exclude_op_types,
                          keep_decode_fp32=q.keep_decode_fp32, plugin_tail=prepared.tail_nodes)


def batches(job, prepared, files, batch_size: int, title: str):
    """A streamed, re-iterable source of preprocessed batches over ``files``."""
    from xtrt.data.preprocess import build_preprocess
    from xtrt.data.source import BatchSource

    pre = build_preprocess(job.cfg.preprocess, tuple(prepared.input_shape[2:4]), job.cfg.base_dir)
    return BatchSource(files, prepared.input_name, tuple(prepared.input_shape[1:]), pre,
                       batch_size, progress=job.bar(title), workers=job.cfg.workers,
                       other_inputs=prepared.other_inputs)


def _scatter(prepared, qmodel, worst, evaluator, device, values_fn):
    try:
        return values_fn(prepared, qmodel, worst, evaluator.data.store.batches(2), device)
    except Exception as exc:  # a plot must never fail the run
        log.warning("could not collect the worst layer's activations: %s", exc)
        return None

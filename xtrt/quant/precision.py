"""The export's float precision (``export.float_precision``): which nodes stay FP32 and why,
measured on calibration data, and the fidelity of the FP16 export next to the FP32 one."""
from __future__ import annotations

import logging
from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = ["RESOLUTION_EPS", "activation_amax", "apply_float_precision", "fp16_fidelity",
           "precision_stage", "qdq_exact_evaluator", "sqnr_resolution"]

log = logging.getLogger(__name__)


def activation_amax(model, batches: Sequence[dict[str, np.ndarray]], *,
                    device: str = "cpu", skip_below: float | None = None) -> dict[str, float]:
    """Float tensor -> max |x| over ``batches``, on ONNX Runtime (the body before any plugin).
    ``skip_below``: leave out the tensors whose magnitude is provably at most that on these
    batches (:func:`xtrt.quant.bounds.provably_below`, from the graph and the largest |x| of each
    float graph input in ``batches``), so only the others are run and copied; no session at all
    when none is left."""
    from xtrt.model.split import runnable_body, with_outputs
    from xtrt.quant.fp16 import _elem_types
    from xtrt.quant.reuse import session_options
    from xtrt.runtime.session import make_session

    body = runnable_body(model)
    types = _elem_types(body)
    inits = {t.name for t in body.graph.initializer}
    names = list(dict.fromkeys(o for n in body.graph.node for o in n.output
                               if o and types.get(o) == 1 and o not in inits
                               and n.op_type not in ("Constant", "QuantizeLinear")))
    if skip_below is not None:
        from xtrt.quant.bounds import provably_below

        batches = list(batches)
        feeds_amax = {}
        for feeds in batches:
            for k, v in feeds.items():
                if np.issubdtype(np.asarray(v).dtype, np.floating) and np.size(v):
                    m = max(float(np.max(v)), -float(np.min(v)))
                    feeds_amax[k] = max(feeds_amax.get(k, 0.0), m)
        bounded = provably_below(body, skip_below, feeds_amax)
        names = [n for n in names if n not in bounded]
    if not names:
        return {}
    sess = make_session(with_outputs(body, names), device, **session_options(device))
    got = [o.name for o in sess.get_outputs()]
    amax: dict[str, float] = {}
    for feeds in batches:
        for name, val in zip(got, sess.run(got, feeds)):
            if val.size and np.issubdtype(val.dtype, np.floating):
                # max |x| = max(max x, -min x): two read-only reductions, no |x| temporary
                hi, lo = float(val.max()), float(val.min())
                amax[name] = max(amax.get(name, 0.0), hi if hi != hi else max(hi, -lo))
    return amax


def apply_float_precision(qmodel, precision: str, batches: Sequence[dict[str, np.ndarray]], *,
                          plugin_nodes: Iterable[str] = (), device: str = "cpu",
                          qdq_opset: int = 19):
    """``(model, info)``: ``qmodel`` unchanged for ``fp32``; for ``fp16`` everything outside the
    Q/DQ pairs in FP16 except the nodes :func:`xtrt.quant.fp16.fp32_reasons` keeps (listed in
    ``info["kept_fp32"]`` with the reason); ``qdq_opset`` 19: float16 Q/DQ scales, no Casts
    around them (``info["qdq"]``: :func:`xtrt.quant.fp16.fold_qdq_casts`), 13: Casts."""
    from xtrt.quant.fp16 import (FP16_SAFE, convert_fp16, float_regions, fold_qdq_casts,
                                 fp32_reasons)

    if precision == "fp32":
        return qmodel, {"float_precision": "fp32", "kept_fp32": {},
                        "regions": float_regions(qmodel)}
    # tensors provably inside the FP16 safe range cannot be kept FP32: only the rest is measured
    amax = activation_amax(qmodel, batches, device=device, skip_below=FP16_SAFE)
    keep = fp32_reasons(qmodel, amax, plugin_nodes=plugin_nodes)
    out = convert_fp16(qmodel, keep, qdq_opset=13)
    qdq = {"qdq_opset": 13, "folded_scales": 0}
    if qdq_opset >= 19:
        out, qdq = fold_qdq_casts(out, qdq_opset)
    info = {"float_precision": "fp16", "kept_fp32": keep, "regions": float_regions(out),
            "measured_on": f"{len(batches)} calibration batches", "qdq": qdq}
    log.info("FP16 export: %d nodes kept FP32", len(keep))
    return out, info


def fp16_fidelity(qmodel, batches: Sequence[dict[str, np.ndarray]],
                  evaluate: Callable[[object], object], *, plugin_nodes: Iterable[str] = (),
                  device: str = "cpu") -> dict:
    """Fidelity of the FP32 and the FP16 export of ``qmodel`` against the FP32 source.

    ``evaluate(model)`` returns an :class:`xtrt.quant.verify.Evaluation` (held-out images);
    ``batches`` are the calibration feeds the FP32 keep-list is measured on.  Returns
    ``{"fp32": {...}, "fp16": {...}, "delta_sqnr_db": fp16 - fp32, "kept_fp32": {...}}`` where each
    side has the worst output SQNR (dB) and the task metric (top-1 agreement or mAP50-95)."""
    from xtrt.quant.verify import metric_value

    fp16, info = apply_float_precision(qmodel, "fp16", batches, plugin_nodes=plugin_nodes,
                                       device=device)
    rows = {}
    for name, m in (("fp32", qmodel), ("fp16", fp16)):
        ev = evaluate(m)
        task = ev.task.get("top1_agreement", ev.task.get("map50_95"))
        rows[name] = {"sqnr_db": metric_value(ev, "sqnr"), "task_metric": task,
                      "images": ev.images}
    a, b = rows["fp32"]["sqnr_db"], rows["fp16"]["sqnr_db"]
    return {**rows, "delta_sqnr_db": (b - a) if a is not None and b is not None else None,
            "kept_fp32": info["kept_fp32"], "regions": info["regions"],
            "judged_on": "held-out images, ONNX Runtime CPU (FP16 tensors between ops)"}


def _row(ev) -> dict:
    from xtrt.quant.verify import metric_value

    return {"sqnr_db": metric_value(ev, "sqnr"),
            "task_metric": ev.task.get("top1_agreement", ev.task.get("map50_95"))}


RESOLUTION_EPS = 1e-5     # 50x below FP16 rounding (2^-11 relative)


def sqnr_resolution(qmodel, ed, base_db: float | None, *, device: str = "cpu",
                    rtol: float = 1e-3, atol: float = 1e-4, runner=None) -> float | None:
    """How far the worst output SQNR of ``qmodel`` on the held-out data ``ed`` moves when every
    float input is scaled by ``1 + RESOLUTION_EPS`` (``base_db``: the unperturbed figure).

    A Q/DQ model is chaotic at its rounding boundaries: a perturbation far below FP16 rounding
    flips some INT8 roundings, which compound layer by layer.  On few images, with one near a
    decision boundary, that alone moves the figure by dB; an FP16-vs-FP32 difference smaller
    than this is not resolved by these images.  ``runner``: an existing runner of ``qmodel``
    (ORT at 'basic') to reuse."""
    from xtrt.quant.verify import evaluate
    from xtrt.runtime.split import SplitRunner

    if base_db is None:
        return None
    runner = runner or SplitRunner(qmodel, device=device, optimization="basic")

    def run(feeds):
        return runner.run({k: (v * (1 + RESOLUTION_EPS)).astype(v.dtype)
                           if np.issubdtype(v.dtype, np.floating) else v
                           for k, v in feeds.items()})
    got = _row(evaluate(run, ed, rtol=rtol, atol=atol))["sqnr_db"]
    return None if got is None else abs(got - base_db)


def qdq_exact_evaluator(ed, *, device: str = "cpu", rtol: float = 1e-3, atol: float = 1e-4):
    """``evaluate(model)`` on the held-out data ``ed`` with ONNX Runtime's Q/DQ fusions off
    (graph optimization 'basic'): DequantizeLinear + float layer, the Q/DQ semantics TensorRT
    implements.  With fusions on, ORT's CPU QLinearConv on x86 without VNNI saturates its u8s8
    int16 sums (measured: EfficientNet-Lite0 FP32 export 6.6 dB fused vs 14.8 dB unfused on
    random input), which would make the FP32 export look worse than the FP16 one, whose Casts
    block the fusion."""
    from xtrt.quant.verify import evaluate
    from xtrt.runtime.split import SplitRunner

    def run(model):
        return evaluate(SplitRunner(model, device=device, optimization="basic").run, ed,
                        rtol=rtol, atol=atol)
    return run


def precision_stage(precision: str, qmodel, batches: Sequence[dict[str, np.ndarray]], ed, *,
                    plugin_nodes: Iterable[str] = (), device: str = "cpu", rtol: float = 1e-3,
                    atol: float = 1e-4, export=None, evaluate=None, runner=None,
                    qdq_opset: int = 19):
    """The pipeline's last model step: ``(model, info)`` for ``precision`` (fp16 | fp32).

    The FP16 export is always built, and both exports are evaluated on the held-out data ``ed``
    with the same ONNX Runtime settings (:func:`qdq_exact_evaluator`), so ``info["fidelity"]``
    holds both figures whichever precision is chosen.  A run that has them already passes
    ``export`` (like :func:`apply_float_precision`), ``evaluate`` (like
    :func:`qdq_exact_evaluator`'s, on ``ed``) and ``runner(model)`` (an ORT runner at 'basic').
    ``qdq_opset``: see :func:`apply_float_precision`; at 19, with ``fp16`` chosen, the FP32
    contrast takes the float16 values of the activation scales
    (:func:`xtrt.quant.fp16_qdq.fp16_valued_scales`), so the two differ by FP16 arithmetic
    alone."""
    fp16, info = (export or apply_float_precision)(qmodel, "fp16", batches,
                                                   plugin_nodes=plugin_nodes, device=device,
                                                   qdq_opset=qdq_opset)
    info = dict(info)
    contrast = qmodel
    if precision == "fp16" and qdq_opset >= 19:
        from xtrt.quant.fp16_qdq import fp16_valued_scales

        contrast = fp16_valued_scales(qmodel)
    evaluate = evaluate or qdq_exact_evaluator(ed, device=device, rtol=rtol, atol=atol)
    a, b = _row(evaluate(contrast)), _row(evaluate(fp16))
    info["fidelity"] = {"fp32": a, "fp16": b,
                        "delta_sqnr_db": (b["sqnr_db"] - a["sqnr_db"])
                        if a["sqnr_db"] is not None and b["sqnr_db"] is not None else None,
                        "resolution_db": sqnr_resolution(contrast, ed, a["sqnr_db"],
                                                         device=device, rtol=rtol, atol=atol,
                                                         runner=runner and runner(contrast)),
                        "resolution_how": f"|SQNR change| of the FP32 export when its input is "
                                          f"scaled by 1 + {RESOLUTION_EPS:g} (a perturbation far "
                                          f"below FP16 rounding): how far the figure moves on "
                                          f"these images by INT8 rounding flips alone",
                        "judged_on": "held-out images, ONNX Runtime CPU/CUDA with Q/DQ fusions "
                                     "off (FP16 tensors between ops)",
                        "fp32_scales": "the FP16 export's (float16 values)" if
                        precision == "fp16" and qdq_opset >= 19 else "as calibrated"}
    if precision == "fp16":
        return fp16, info
    info["float_precision"] = "fp32"
    info["fp16_kept_fp32"] = info.pop("kept_fp32")
    return qmodel, info

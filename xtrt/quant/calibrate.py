"""Calibration stage: which engine and methods run (decided here, once), the streamed statistics,
and the scales PPQ's rules make of them.

``method: auto`` on the ``ort`` engine computes the statistics of all four methods in two streamed
passes (:func:`xtrt.quant.observe.collect_statistics`) and lets :mod:`xtrt.quant.select` export
each and keep the best; every other setting runs one method.  LSQ needs PPQ's own executor end to
end, so it runs on the ``ppq`` engine with percentile for ``auto``: the plan says so, and the
report prints the plan's reason instead of working it out again.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

from xtrt.config import Config

__all__ = ["MethodPlan", "Calibrated", "plan_method", "calibrate", "placed_activations"]

log = logging.getLogger(__name__)


@dataclass
class MethodPlan:
    """What calibration will run, and why."""

    requested: str
    engine: str                       # "ort" | "ppq"
    methods: tuple[str, ...]          # candidates (more than one: chosen on held-out images)
    lsq: dict | None = None
    reason: str = ""
    per_tensor: bool = False          # statistics of every method kept for the per-layer choice

    @property
    def engine_text(self) -> str:
        return "onnxruntime statistics + PPQ scale rule" if self.engine == "ort" else "ppq"

    @property
    def searches(self) -> bool:
        return len(self.methods) > 1 and not self.per_tensor


@dataclass
class Calibrated:
    """A calibrated model: PPQ's result (scales, weights), the plan, and the statistics kept for
    re-deriving scales of the other candidate methods."""

    result: object                    # xtrt.backend.ppq.CalibrationResult
    placement: object                 # xtrt.quant.placement.Placement
    plan: MethodPlan
    stats: dict = field(default_factory=dict)
    method: str = ""                  # the method the scales are on now
    images: int = 0


def plan_method(cfg: Config) -> MethodPlan:
    """The one place that turns ``calibration.method/engine`` and ``quantization.lsq`` into a plan."""
    from xtrt.quant.observe import AUTO_METHODS

    # LSQ and the other optimisation passes run after calibration on either engine
    # (xtrt.quant.techniques); cfg is resolved (techniques.resolve) before it gets here
    c, q = cfg.calibration, cfg.quantization
    if c.engine == "ppq":
        m = "percentile" if c.method == "auto" else c.method
        why = "calibration.engine: ppq" + ("; auto means percentile on PPQ's engine"
                                            if c.method == "auto" else "")
        return MethodPlan(c.method, "ppq", (m,), None, why)
    if q.per_tensor:
        first = "percentile" if c.method == "auto" else c.method
        return MethodPlan(c.method, "ort", (first, *[m for m in AUTO_METHODS if m != first]),
                          None, "quantization.per_tensor: every layer's activation scale from "
                          "the method with the smallest error of that layer's output "
                          "(calibration images)", per_tensor=True)
    if c.method == "auto":
        return MethodPlan("auto", "ort", tuple(AUTO_METHODS), None,
                          "auto: all four methods from one set of statistics, the best on the "
                          "held-out images kept")
    return MethodPlan(c.method, "ort", (c.method,), None, f"calibration.method: {c.method}")


def placed_activations(model, placement) -> list[str]:
    """The activation tensors feeding the placed nodes (what calibration must measure)."""
    inits = {i.name for i in model.graph.initializer}
    placed = set(placement.quantize)
    return list(dict.fromkeys(t for n in model.graph.node if n.name in placed
                              for t in n.input if t and t not in inits))


def calibrate(cfg: Config, prepared, placement, source, *, progress: bool = True,
              keep_session: bool = False) -> Calibrated:
    """Calibrate ``prepared`` on the batches of ``source`` (re-iterable, streamed).

    ``keep_session``: keep the CUDA statistics session (and its GPU buffers) and PPQ's graph of
    the model for a next call on the same model (benchmarks timing several methods); by default
    both are dropped.
    """
    from xtrt.backend import ppq as ppq_backend
    from xtrt.quant.observe import collect_statistics, release_sessions

    from xtrt.quant import techniques

    plan = plan_method(cfg)
    keep_float = list(placement.keep_float)
    eq_info = techniques.before_calibration(cfg, prepared)
    if plan.engine == "ppq":
        # PPQ's executor needs every batch at once: calibration.steps bounds what it holds
        feeds = [b.feeds for b in source]
        cal = ppq_backend.calibrate(prepared.model, feeds, device=cfg.device,
                                    method=plan.methods[0], fp32_ops=keep_float, lsq=plan.lsq,
                                    progress=progress)
        cal.techniques = {"equalization": eq_info} if eq_info else {}
        return Calibrated(cal, placement, plan, {}, plan.methods[0], sum(f[next(iter(f))].shape[0]
                                                                         for f in feeds))
    tensors = placed_activations(prepared.model, placement)
    stats = collect_statistics(prepared.body, tensors, lambda: (b.feeds for b in source),
                               plan.methods, device=cfg.device,
                               progress="calibration statistics" if progress else None)
    if not keep_session:
        release_sessions()
    first = plan.methods[0]
    # PPQ traces shapes on one sample; with the statistics given it runs no calibration pass
    head = [b.feeds for b in itertools.islice(iter(source), 1)]
    cal = ppq_backend.calibrate(prepared.model, head, device=cfg.device, method=first,
                                fp32_ops=keep_float, lsq=None, progress=progress,
                                act_ranges=stats[first].get("ranges"),
                                act_hists=stats[first].get("hists"), keep_graph=keep_session)
    if not keep_session:
        ppq_backend.release_graphs()
    cal.techniques = {"equalization": eq_info} if eq_info else {}
    return Calibrated(cal, placement, plan, stats if len(plan.methods) > 1 else {}, first,
                      getattr(source, "used", 0))


def use_method(calibrated: Calibrated, method: str) -> None:
    """Put the activation scales of ``calibrated`` on ``method`` (one of the plan's candidates)."""
    from xtrt.backend import ppq as ppq_backend

    st = calibrated.stats[method]
    ppq_backend.rescale(calibrated.result, method, ranges=st.get("ranges"), hists=st.get("hists"))
    calibrated.method = method

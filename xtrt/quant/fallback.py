"""Fallback stage: the fewest layers kept in float that meet ``analysis.target``.

Each trial is the model xtrt would write: the Q/DQ export with those layers in float, then the
``export.float_precision`` step (FP16 everywhere outside the Q/DQ pairs, float layers included,
by :func:`xtrt.quant.precision.apply_float_precision` on the same calibration batches the
pipeline's precision stage uses), judged on the selection images.  The pipeline's precision step
rebuilds the chosen trial's model from the same inputs, so what is written is what was judged
(``graph_sha256`` of the chosen trial).

The layer order the search walks (``analysis.fallback_ranking``):

- ``int8_alone``: output noise with only that layer in INT8 (the layer-wise analysis);
- ``float_alone``: output noise of the all-INT8 model with only that layer back in float, i.e. what
  each candidate gains where it sits, with the other layers' error around it;
- ``greedy``: forward selection on that noise, re-ranked after each layer joins the float set
  (``analysis.rerank_steps`` steps over the ``analysis.rerank_candidates`` best so far).

The two last are measured on the first ``analysis.ranking_batches`` selection batches with one
switchable ONNX Runtime session (:class:`xtrt.quant.sensitivity.FloatGain`).  The search
(``analysis.fallback_strategy``): ``ranked`` / ``greedy`` (:func:`xtrt.analysis.fallback.run_fallback`)
or ``bisect`` (:func:`xtrt.analysis.fallback.run_bisect`).  Every trial is also scored on the test
images (``test_metric``), for the trade-off curve only: nothing is chosen on them.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Sequence

__all__ = ["FallbackOutcome", "FallbackSettings", "float_precision_export", "rank_layers",
           "search_float_layers", "run_target_fallback"]

log = logging.getLogger(__name__)


@dataclass
class FallbackOutcome:
    result: object               # xtrt.analysis.fallback.FallbackResult
    placement: object            # the placement chosen (float layers marked)
    evaluation: object           # the written model's evaluation on the selection images
    qmodel: object               # its Q/DQ export before the precision step (None: all INT8)
    written: object = None       # the model judged: qmodel after export.float_precision
    info: dict = field(default_factory=dict)   # ranking, seconds, counts


@dataclass
class FallbackSettings:
    """What the search needs from ``cfg.analysis`` / ``cfg.export`` (benchmarks vary them)."""

    metric: str
    goal: float
    ranking: str = "int8_alone"
    strategy: str = "ranked"
    max_trials: int = 6
    per_trial: int = 2
    precision: str = "fp16"
    qdq_opset: int = 19                 # export.fp16_qdq_opset
    rerank_steps: int = 6
    rerank_candidates: int = 8
    ranking_batches: int = 2

    @classmethod
    def from_config(cls, cfg) -> "FallbackSettings":
        a, t = cfg.analysis, cfg.analysis.target
        return cls(metric=t.metric, goal=t.goal(), ranking=a.fallback_ranking,
                   strategy=a.fallback_strategy, max_trials=a.max_trials,
                   per_trial=a.layers_per_trial, precision=cfg.export.float_precision,
                   rerank_steps=a.rerank_steps, rerank_candidates=a.rerank_candidates,
                   ranking_batches=a.ranking_batches, qdq_opset=cfg.export.fp16_qdq_opset)


def rank_layers(kind: str, prepared, cal, placement, batches: Sequence[dict], *,
                layerwise: dict[str, float] | None = None, steps: int = 6, candidates: int = 8,
                device: str = "cpu") -> tuple[list[str], dict]:
    """``(order, info)``: the placed layers in the order the fallback tries them (see the module
    docstring for ``kind``); ``info`` has the seconds, forwards and the per-layer noise."""
    t0 = time.perf_counter()
    if kind == "int8_alone":
        if not layerwise:
            from xtrt.quant.sensitivity import layerwise_sensitivity
            layerwise = layerwise_sensitivity(prepared.body, cal, placement, batches, device=device)
        order = sorted(layerwise, key=lambda n: -layerwise[n])
        return order, {"ranking": kind, "seconds": round(time.perf_counter() - t0, 2)}
    if kind not in ("float_alone", "greedy"):
        raise ValueError(f"unknown fallback ranking {kind!r}")
    from xtrt.quant.sensitivity import FloatGain

    fg = FloatGain(prepared.body, cal, placement, batches, device=device)
    alone = fg.float_alone()
    info = {"ranking": kind, "all_int8_noise": fg.noise([]), "float_alone_noise": alone}
    order = sorted(alone, key=alone.__getitem__)
    if kind == "greedy":
        order, path = fg.greedy_order(steps=steps, candidates=candidates, alone=alone)
        info["greedy_noise"] = path
    info.update(seconds=round(time.perf_counter() - t0, 2), forwards=fg.forwards,
                images=sum(len(next(iter(b.values()))) for b in batches))
    return order, info


def search_float_layers(s: FallbackSettings, prepared, cal, placement, selector, *,
                        precision_batches: Sequence[dict] = (), ranking_batches: Sequence[dict] = (),
                        layerwise: dict[str, float] | None = None, first=None, test=None,
                        ranked: tuple[list[str], dict] | None = None,
                        device: str = "cpu") -> FallbackOutcome:
    """Search the float layers for ``s.goal`` on ``selector``'s images (``first``: the all-INT8
    figure when it is already known for this precision); every trial also on ``test``.
    ``ranked``: ``(order, info)`` from :func:`rank_layers` when already computed."""
    from xtrt.analysis.fallback import run_fallback
    from xtrt.quant.verify import metric_value

    order, info = ranked if ranked is not None else rank_layers(
        s.ranking, prepared, cal, placement, ranking_batches, layerwise=layerwise,
        steps=s.rerank_steps, candidates=s.rerank_candidates, device=device)
    info = dict(info)
    cache: dict[frozenset, tuple] = {}

    def trial(fp32_layers: list[str]):
        p, qm, written = build_trial(prepared, cal, placement, fp32_layers, s.precision,
                                     precision_batches, device, qdq_opset=s.qdq_opset)
        ev_t = selector.evaluate_model(written)
        if test is not None:       # now, while its runner is warm (the curve reads it later)
            test.evaluate_model(written)
        cache[frozenset(fp32_layers)] = (p, ev_t, qm, written)
        # the output SQNR breaks ties of a coarse task metric (greedy strategy)
        return metric_value(ev_t, s.metric), metric_value(ev_t, "sqnr")

    t0 = time.perf_counter()
    fb = run_fallback(order, trial, target=s.goal, max_trials=s.max_trials,
                      per_trial=s.per_trial, first_value=first, sensitivity=layerwise,
                      strategy=s.strategy)
    info["search_seconds"] = round(time.perf_counter() - t0, 2)
    _score_on_test(fb, cache, test, s.metric)
    info["evaluations"] = len(cache)
    chosen = fb.trials[fb.chosen]
    key = frozenset(chosen["fp32_layers"])
    if key not in cache:                        # trial 0 figure came from the caller
        trial([])
    p, ev_t, qm, written = cache[key]
    # the graph: the written file adds metadata (xtrt.trt.kept_float) to it
    chosen["graph_sha256"] = hashlib.sha256(written.graph.SerializeToString()).hexdigest()
    fb_info = {**info, "strategy": s.strategy, "order": order[:max(12, len(chosen["fp32_layers"]))],
               "float_precision": s.precision}
    fb_info.pop("float_alone_noise", None)
    fb.search = fb_info
    if not chosen["fp32_layers"]:
        return FallbackOutcome(fb, placement, ev_t, None, written, fb_info)
    return FallbackOutcome(fb, p, ev_t, qm, written, fb_info)


def build_trial(prepared, cal, placement, fp32_layers: Sequence[str], precision: str,
                precision_batches: Sequence[dict], device: str = "cpu", qdq_opset: int = 19):
    """``(placement, Q/DQ export, written model)`` with ``fp32_layers`` kept in float."""
    from xtrt.quant import export as ex
    from xtrt.quant.placement import Placement
    floats = set(fp32_layers)
    p = Placement(quantize=[n for n in placement.quantize if n not in floats],
                  keep_float=dict(placement.keep_float), decode_tail=placement.decode_tail)
    for n in fp32_layers:
        p.keep_float[n] = "automatic fallback (most sensitive layer)"
    qm = ex.export_qdq(prepared.model, cal, p)
    if precision == "fp32":
        return p, qm, qm
    written, _ = float_precision_export(qm, precision, precision_batches,
                                        plugin_nodes=prepared.tail_nodes, device=device,
                                        qdq_opset=qdq_opset)
    return p, qm, written


def float_precision_export(qmodel, precision: str, batches, *, plugin_nodes=(),
                           device: str = "cpu", qdq_opset: int = 19):
    """:func:`xtrt.quant.precision.apply_float_precision`, once per model bytes and batches: the
    fallback's chosen trial and the precision stage build the same FP16 export."""
    from xtrt.quant.precision import apply_float_precision
    from xtrt.quant.reuse import FP16, batches_digest

    batches = list(batches)
    return FP16.get(qmodel, lambda: apply_float_precision(
        qmodel, precision, batches, plugin_nodes=plugin_nodes, device=device,
        qdq_opset=qdq_opset),
        precision, batches_digest(batches), tuple(sorted(plugin_nodes)), device, qdq_opset)


def _score_on_test(fb, cache: dict, test, metric: str) -> None:
    """Each trial's ``test_metric`` / ``test_sqnr`` (the curve's second line)."""
    from xtrt.quant.verify import metric_value

    if test is None:
        return
    for t in fb.trials:
        got = cache.get(frozenset(t["fp32_layers"]))
        if got is None:
            continue
        ev = test.evaluate_model(got[3])
        t["test_metric"], t["test_sqnr"] = metric_value(ev, metric), metric_value(ev, "sqnr")


def run_target_fallback(cfg, prepared, calibrated, analysis, evaluator, first_eval, *,
                        test=None, precision_batches: Sequence[dict] = ()
                        ) -> FallbackOutcome | None:
    """None when no target is set.  ``evaluator``: the selection images; ``test``: the report's
    (``None`` or the same evaluator when there is no split); ``first_eval``: the all-INT8 FP32
    export on the selection images (re-measured for an FP16 export)."""
    from xtrt.quant.verify import metric_value

    if cfg.analysis.target is None:
        return None
    s = FallbackSettings.from_config(cfg)
    first = None
    if s.precision == "fp32" and first_eval is not None:
        first = (metric_value(first_eval, s.metric), metric_value(first_eval, "sqnr"))
    ranking_batches = [] if s.ranking == "int8_alone" else \
        [b.feeds for b in evaluator.data.store.batches(s.ranking_batches)]
    return search_float_layers(s, prepared, calibrated.result, calibrated.placement, evaluator,
                               precision_batches=precision_batches,
                               ranking_batches=ranking_batches, layerwise=analysis.layerwise,
                               first=first, test=None if test is evaluator else test,
                               device=cfg.device)

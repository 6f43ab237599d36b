"""Fallback stage: keep the most sensitive layers in float until ``analysis.target`` is met (or the
trials run out), each trial an exported model evaluated on the held-out images."""
from __future__ import annotations

import logging
from dataclasses import dataclass

__all__ = ["FallbackOutcome", "run_target_fallback"]

log = logging.getLogger(__name__)


@dataclass
class FallbackOutcome:
    result: object               # xtrt.analysis.fallback.FallbackResult
    placement: object            # the placement chosen (float layers marked)
    evaluation: object           # its evaluation on the held-out images
    qmodel: object               # its exported model


def run_target_fallback(cfg, prepared, calibrated, analysis, evaluator, first_eval
                        ) -> FallbackOutcome | None:
    """None when no target is set."""
    from xtrt.analysis.fallback import run_fallback
    from xtrt.quant import export as ex
    from xtrt.quant.placement import Placement
    from xtrt.quant.verify import metric_value

    target = cfg.analysis.target
    if target is None:
        return None
    cal, placement = calibrated.result, calibrated.placement
    metric = target.metric
    first = (metric_value(first_eval, metric), metric_value(first_eval, "sqnr"))
    cache: dict[tuple, tuple] = {}

    def trial(fp32_layers: list[str]):
        keep = [n for n in placement.quantize if n not in set(fp32_layers)]
        p = Placement(quantize=keep, keep_float=dict(placement.keep_float),
                      decode_tail=placement.decode_tail)
        for n in fp32_layers:
            p.keep_float[n] = "automatic fallback (most sensitive layer)"
        qm = ex.export_qdq(prepared.model, cal, p)
        ev_t = evaluator.evaluate_model(qm)
        cache[tuple(fp32_layers)] = (p, ev_t, qm)
        # the output SQNR breaks ties of a coarse task metric (greedy strategy)
        return metric_value(ev_t, metric), metric_value(ev_t, "sqnr")

    fb = run_fallback(analysis.ranking(), trial, target=target.goal(),
                      max_trials=cfg.analysis.max_trials, per_trial=cfg.analysis.layers_per_trial,
                      first_value=first, sensitivity=analysis.layerwise,
                      strategy=cfg.analysis.fallback_strategy)
    chosen = tuple(fb.fp32_layers)
    if chosen:
        p, ev_t, qm = cache[chosen]
        return FallbackOutcome(fb, p, ev_t, qm)
    return FallbackOutcome(fb, placement, first_eval, None)

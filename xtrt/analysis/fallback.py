"""Automatic fallback: keep the most sensitive layers in float until a metric target is met.

Pure control flow: the caller supplies the ranking and a function that evaluates a set of float
layers.  Because calibration scales come from FP32 activations, keeping a layer in float needs no
re-calibration, only a re-export and a re-evaluation; each trial therefore costs one evaluation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

__all__ = ["FallbackResult", "run_fallback", "run_bisect", "explain_shortfall"]

log = logging.getLogger(__name__)


@dataclass
class FallbackResult:
    trials: list[dict] = field(default_factory=list)
    chosen: int = 0                    # index into trials
    reached: bool = False
    reason: str = ""
    why: str = ""                      # when the target was not reached: what stands in the way
    search: dict = field(default_factory=dict)   # ranking, strategy, seconds, evaluations

    @property
    def fp32_layers(self) -> list[str]:
        return list(self.trials[self.chosen]["fp32_layers"]) if self.trials else []

    def as_dict(self) -> dict:
        d = {"trials": self.trials, "chosen": self.chosen, "reached": self.reached,
             "reason": self.reason}
        if self.why:
            d["why"] = self.why
        if self.search:
            d["search"] = self.search
        d["curve"] = self.curve()
        return d

    def curve(self) -> list[dict]:
        """The trade-off curve: per float-layer count, the best trial's metric on the selection
        images (and on the test images where the trial was scored there too)."""
        best: dict[int, dict] = {}
        for t in self.trials:
            n, m = t["n_fp32_layers"], t.get("metric")
            if m is not None and (n not in best or m > best[n]["metric"]):
                best[n] = t
        return [{"n_fp32_layers": n, "selection": t["metric"], "test": t.get("test_metric"),
                 "selection_sqnr_db": t.get("tie_breaker"), "test_sqnr_db": t.get("test_sqnr")}
                for n, t in sorted(best.items())]


def _split(v) -> tuple[float | None, float | None]:
    """``evaluate`` returns the metric, or (metric, tie-breaker) such as (top-1, output SQNR)."""
    if isinstance(v, tuple):
        return v[0], v[1]
    return v, None


def run_fallback(ranking: Sequence[str], evaluate: Callable[[list[str]], object], *,
                 target: float, max_trials: int, per_trial: int,
                 first_value: float | None = None, progress=None,
                 sensitivity: dict[str, float] | None = None,
                 strategy: str = "ranked") -> FallbackResult:
    """Move layers (most sensitive first) to float ``per_trial`` at a time until
    ``evaluate(layers) >= target`` or ``max_trials`` re-evaluations are spent.

    ``evaluate`` returns the metric, or (metric, tie-breaker): a continuous measure such as the
    output SQNR that decides when a coarse metric (top-1 over a hundred images) does not move.
    ``strategy`` 'greedy': a trial's layers stay in float only if the metric improved on the best
    so far, or held and the tie-breaker improved; otherwise they go back to INT8 and the next layers
    of the ranking are tried (layers that do not help cost no speed); 'ranked': every trial adds
    the next layers regardless.
    ``first_value`` is the metric (or pair) with nothing in float (already measured by the caller).
    ``sensitivity`` (layer -> layer-wise noise ratio) lets a shortfall be explained.
    Returns every trial and the chosen one (the first that reaches the target, else the best).
    """
    if strategy == "bisect":
        return run_bisect(ranking, evaluate, target=target, max_trials=max_trials,
                          first_value=first_value, progress=progress, sensitivity=sensitivity)
    if strategy not in ("greedy", "ranked"):
        raise ValueError(f"unknown fallback strategy {strategy!r}")
    res = FallbackResult()
    value0, tie0 = _split(first_value if first_value is not None else evaluate([]))
    res.trials.append({"trial": 0, "n_fp32_layers": 0, "fp32_layers": [], "metric": value0,
                       "tie_breaker": tie0, "passed": value0 is not None and value0 >= target,
                       "kept": True})
    if value0 is not None and value0 >= target:
        res.reached, res.reason = True, "target met with every layer in INT8"
        return res
    kept: list[str] = []                 # layers in float so far
    tried: set[str] = set()
    best_value = value0 if value0 is not None else float("-inf")
    best_tie = tie0 if tie0 is not None else float("-inf")
    for t in range(1, max_trials + 1):
        nxt = [r for r in ranking if r not in tried][:per_trial]
        if not nxt:
            res.reason = "no more layers to move to float"
            break
        tried.update(nxt)
        layers = kept + nxt
        value, tie = _split(evaluate(list(layers)))
        passed = value is not None and value >= target
        improved = value is not None and (value > best_value or (
            value == best_value and tie is not None and tie > best_tie))
        keep = passed or improved or strategy == "ranked"
        res.trials.append({"trial": t, "n_fp32_layers": len(layers), "fp32_layers": list(layers),
                           "added": nxt, "metric": value, "tie_breaker": tie, "passed": passed,
                           "kept": keep})
        if progress is not None:
            progress(t, value)
        log.info("fallback trial %d: %d layer(s) in float -> %s%s", t, len(layers), value,
                 "" if keep else " (no gain: back to INT8)")
        if passed:
            res.reached, res.chosen = True, len(res.trials) - 1
            res.reason = f"target met with {len(layers)} layer(s) in float"
            return res
        if keep:
            kept = layers
            if improved:
                best_value, best_tie = value, (tie if tie is not None else best_tie)
    return _keep_best(res, target, max_trials, sensitivity)


def _keep_best(res: FallbackResult, target: float, max_trials: int,
               sensitivity: dict[str, float] | None) -> FallbackResult:
    """Target not reached: choose the best trial (metric, tie-breaker, fewer layers) and say why."""
    def rank(i):
        t = res.trials[i]
        return (t["metric"] if t["metric"] is not None else float("-inf"),
                t["tie_breaker"] if t.get("tie_breaker") is not None else float("-inf"),
                -t["n_fp32_layers"], -i)

    best = max(range(len(res.trials)), key=rank)
    res.chosen = best
    if not res.reason:
        res.reason = (f"target not met within {max_trials} trial(s) (budget analysis.max_trials); "
                      f"kept the best trial ({res.trials[best]['n_fp32_layers']} layer(s) in float)")
    res.why = explain_shortfall(res.trials, target, sensitivity or {})
    return res


def run_bisect(order: Sequence[str], evaluate: Callable[[list[str]], object], *, target: float,
               max_trials: int, first_value=None, progress=None,
               sensitivity: dict[str, float] | None = None) -> FallbackResult:
    """The fewest leading layers of ``order`` whose move to float meets ``target``.

    Galloping then bisection on the prefix length (1, 2, 4, 8, ... until a prefix passes, then
    halving the gap: about 2 log2(k) trials for an answer of k layers, whatever the layer
    count), assuming the metric grows with the prefix; then, while trials are left, each layer
    of the passing set is tried back in INT8 (last in the order first) and stays INT8 if the
    target still holds.  Every trial is recorded (``step``: gallop, bisect, prune)."""
    res = FallbackResult()
    value0, tie0 = _split(first_value if first_value is not None else evaluate([]))
    res.trials.append({"trial": 0, "n_fp32_layers": 0, "fp32_layers": [], "metric": value0,
                       "tie_breaker": tie0, "passed": value0 is not None and value0 >= target,
                       "kept": True, "step": "all INT8"})
    if res.trials[0]["passed"]:
        res.reached, res.reason = True, "target met with every layer in INT8"
        return res
    order = list(order)
    seen: dict[frozenset, bool] = {frozenset(): False}

    def trial(layers: list[str], step: str) -> bool:
        if frozenset(layers) in seen:            # e.g. pruning the last layer of a bisected prefix
            return seen[frozenset(layers)]
        value, tie = _split(evaluate(list(layers)))
        passed = value is not None and value >= target
        res.trials.append({"trial": len(res.trials), "n_fp32_layers": len(layers),
                           "fp32_layers": list(layers), "metric": value, "tie_breaker": tie,
                           "added": list(layers), "passed": passed, "kept": True, "step": step})
        if progress is not None:
            progress(len(res.trials) - 1, value)
        log.info("fallback %s trial: %d layer(s) in float -> %s", step, len(layers), value)
        seen[frozenset(layers)] = passed
        return passed

    lo, hi, k = 0, None, 1
    while len(res.trials) <= max_trials and order:
        k = min(k, len(order))
        if trial(order[:k], "gallop"):
            hi = k
            break
        lo = k
        if k == len(order):
            break
        k *= 2
    if hi is None:
        res.reason = ("no prefix of the ranking meets the target" if lo == len(order) else
                      "")
        return _keep_best(res, target, max_trials, sensitivity)
    while hi - lo > 1 and len(res.trials) <= max_trials:
        mid = (lo + hi) // 2
        if trial(order[:mid], "bisect"):
            hi = mid
        else:
            lo = mid
    chosen = order[:hi]
    for layer in reversed(order[:hi]):
        if len(res.trials) > max_trials or len(chosen) <= 1:
            break
        rest = [n for n in chosen if n != layer]
        if trial(rest, "prune"):
            chosen = rest
    res.reached = True
    res.chosen = next(i for i, t in enumerate(res.trials) if set(t["fp32_layers"]) == set(chosen))
    res.reason = f"target met with {len(chosen)} layer(s) in float"
    return res


def explain_shortfall(trials: Sequence[dict], target: float, sensitivity: dict[str, float]) -> str:
    """One or two sentences on why falling back did not reach ``target``, from the trials and the
    layer-wise sensitivities: is the error concentrated (more trials would help) or spread thinly
    over many layers (float fallback is the wrong tool)?"""
    vals = [t["metric"] for t in trials if t.get("metric") is not None]
    tried = [n for t in trials for n in (t.get("added") or [])]
    if not vals:
        return "the metric could not be computed (no reference detections/labels in the held-out images?)"
    best = max(vals)
    in_float = set(tried)                # every layer tried in float, kept or not
    parts = [f"best {best:.3f} against target {target:.3f}"]
    if len(vals) >= 3:
        gain = vals[-1] - vals[-3]
        first_gain = vals[1] - vals[0] if len(vals) > 1 else 0.0
        parts.append(f"the first trial moved the metric {first_gain:+.3f}, the last two {gain:+.3f}")
    total = sum(v for v in sensitivity.values() if v is not None and v > 0)
    if total > 0 and in_float:
        covered = sum(sensitivity.get(n, 0.0) or 0.0 for n in in_float) / total
        rest = [v for n, v in sensitivity.items() if n not in in_float and v]
        parts.append(f"the {len(in_float)} layer(s) tried in float carry {covered:.1%} of the summed "
                     f"layer-alone noise; the other {len(rest)} each carry at most "
                     f"{max(rest) / total:.2%}" if rest else
                     f"every ranked layer is already in float")
        if covered >= 0.9 and rest:
            parts.append("what is left is error accumulated over many layers, which fallback removes "
                         "only by keeping most of the network in float: try another "
                         "calibration.method, the other analysis.fallback_strategy, LSQ "
                         "(quantization.lsq.enabled), more calibration images, or a lower target")
        else:
            parts.append("the error is still concentrated: raise analysis.max_trials or "
                         "analysis.layers_per_trial")
    return "; ".join(parts)

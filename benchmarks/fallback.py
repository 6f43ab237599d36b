"""Accuracy-target fallback on top of ``quantization.effort: best``: how few float layers reach
the target, per ranking and search, chosen on the selection images, figures on the test images.

    python benchmarks/fallback.py [--models effnet,yolo] [--work /tmp/xtrt-bench] \\
        [--rankings int8_alone,float_alone,greedy] [--json rows.jsonl] [--png-dir benchmarks]

Data and scoring: ``benchmarks/_bench.py`` (32 calibration photos; held-out photos + vtest.avi
frames split into selection and test parts; xtrt's evaluator on ONNX Runtime CPU).  Targets
(issue 14): EfficientNet-Lite0 top-1 agreement with FP32 >= 0.98, YOLOv8n 640 mAP50-95 vs FP32
>= 0.95.  Every trial is the model xtrt writes: the Q/DQ export with those layers float, then the
FP16 export step (``export.float_precision: fp16``, the default).

Per model: calibrate once (effort best = minmax + LSQ 20; cached in ``--work`` as a pickle of
the calibration result); then per ranking (``int8_alone``: today's layer-wise ranking on one
calibration batch; ``float_alone`` and ``greedy``: :class:`xtrt.quant.sensitivity.FloatGain` on
two selection batches) the prefix curve k = 0..``--curve`` float layers on the selection and test
images, and xtrt's own searches as a run would do them (``bisect`` with each ranking, and the
old ``ranked`` / ``greedy`` strategies on ``int8_alone`` at their default budget).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402

def _compat() -> None:
    """``_bench.evaluator`` (helper cmp2's file, not edited here) imports
    ``xtrt.quant.evaluate.task_and_layout``, which main replaced by
    ``xtrt.analysis.task.infer_task``: the old name, on the new function, until _bench.py follows."""
    import xtrt.quant.evaluate as ev

    if not hasattr(ev, "task_and_layout"):
        from xtrt.analysis.task import infer_task

        ev.task_and_layout = lambda cfg, shapes: infer_task(shapes, cfg.evaluation.task,
                                                            cfg.input.shape[2:4])


TARGET = {"effnet": ("top1", 0.98), "yolo": ("map50_95", 0.95)}
RANKINGS = ("float_alone", "greedy", "int8_alone")


def calibrate_best(bench, work: Path, effort: str = "best"):
    """``(cfg, prepared, placement, cal, cal_src, seconds)`` for ``effort`` (cached)."""
    from xtrt.quant import techniques
    from xtrt.quant.calibrate import calibrate

    cfg = techniques.resolve(bench.config([f"quantization.effort={effort}"]))
    prepared, placement = _bench.prepare(bench, cfg)
    cal_src = _bench.batches(bench, cfg, prepared, bench.cal, cfg.calibration.batch_size)
    cache = work / f"fallback_{bench.key}_{effort}_cal.pkl"
    if cache.exists():
        cal, quantize, seconds = pickle.loads(cache.read_bytes())
    else:
        t0 = time.perf_counter()
        calibrated = calibrate(cfg, prepared, placement, cal_src, progress=False)
        techniques.after_calibration(cfg, calibrated.result, calibrated.stats, cal_src,
                                     progress=False)
        seconds = round(time.perf_counter() - t0, 1)
        cal = dataclasses.replace(calibrated.result, graph=None)
        quantize = [n for n in placement.quantize if n in set(cal.quantized_ops)]
        cache.write_bytes(pickle.dumps((cal, quantize, seconds)))
    placement.quantize = quantize
    return cfg, prepared, placement, cal, cal_src, seconds


def _fig(f: dict, metric: str):
    return f.get("top1") if metric == "top1" else f.get("map50_95")


def prefix_curve(ctx, order: Sequence[str], k_max: int) -> list[dict]:
    """k = 0..k_max leading layers of ``order`` float: fidelity on selection and test."""
    from xtrt.quant.fallback import build_trial

    rows = []
    for k in range(0, min(k_max, len(order)) + 1):
        _, _, written = build_trial(ctx["prepared"], ctx["cal"], ctx["placement"], order[:k],
                                    "fp16", ctx["prec"])
        sel, test = _bench.score(ctx["sel"], written), _bench.score(ctx["test"], written)
        rows.append({"k": k, "layers": list(order[:k]), "selection": sel, "test": test})
        print(f"    k={k}: selection {_bench.fidelity_text(sel)}; test {_bench.fidelity_text(test)}",
              file=sys.stderr, flush=True)
    return rows


def run_search(ctx, ranking: str, strategy: str, ranked, *, max_trials: int, per_trial: int,
               test_every_trial: bool = False):
    """xtrt's fallback search as a run does it (selection images), its chosen model on test
    (every trial on test with ``test_every_trial``: the curve's second line)."""
    from xtrt.quant.fallback import FallbackSettings, search_float_layers

    metric, goal = ctx["target"]
    s = FallbackSettings(metric=metric, goal=goal, ranking=ranking, strategy=strategy,
                         max_trials=max_trials, per_trial=per_trial, precision="fp16")
    t0 = time.perf_counter()
    out = search_float_layers(s, ctx["prepared"], ctx["cal"], ctx["placement"], ctx["sel"],
                              precision_batches=ctx["prec"], layerwise=ctx["layerwise"],
                              ranked=ranked, test=ctx["test"] if test_every_trial else None)
    seconds = round(time.perf_counter() - t0, 1)
    fb = out.result
    chosen = fb.trials[fb.chosen]
    return {"ranking": ranking, "strategy": strategy, "max_trials": max_trials,
            "per_trial": per_trial, "reached_on_selection": fb.reached,
            "float_layers": chosen["n_fp32_layers"], "layers": chosen["fp32_layers"],
            "trials": len(fb.trials) - 1, "search_s": seconds,
            "ranking_s": ranked[1].get("seconds"),
            "selection_metric": chosen["metric"], "test": _bench.score(ctx["test"], out.written),
            "path": [{"k": t["n_fp32_layers"], "selection": t["metric"], "sqnr": t["tie_breaker"],
                      "test": t.get("test_metric"), "step": t.get("step")} for t in fb.trials]}


def run_model(key: str, work: Path, k_max: int, rankings: Sequence[str], *,
              test_curve: Sequence[str] = (), old: bool = True, effort: str = "best",
              search: bool = True) -> dict:
    import itertools

    from xtrt.quant.fallback import rank_layers
    from xtrt.quant.sensitivity import layerwise_sensitivity

    _compat()
    bench = _bench.load_bench(key, work)
    cfg, prepared, placement, cal, cal_src, cal_s = calibrate_best(bench, work, effort)
    head = [b.feeds for b in itertools.islice(iter(cal_src), 2)]
    sel, test = _bench.evaluator(bench, bench.sel, "selection"), _bench.evaluator(bench, bench.test, "test")
    print(f"{bench.label}: {len(bench.cal)} calibration, {len(bench.sel)} selection, "
          f"{len(bench.test)} test images; effort {effort} calibration {cal_s} s", file=sys.stderr,
          flush=True)
    t0 = time.perf_counter()
    lw = layerwise_sensitivity(prepared.body, cal, placement, head[:1])
    ctx = {"prepared": prepared, "cal": cal, "placement": placement, "prec": head, "sel": sel,
           "test": test, "layerwise": lw, "target": TARGET[key]}
    row = {"model": bench.label, "key": key, "target": TARGET[key], "calibration_s": cal_s,
           "effort": effort,
           "layers": len(placement.quantize), "layerwise_s": round(time.perf_counter() - t0, 1),
           "images": {"calibration": len(bench.cal), "selection": len(bench.sel),
                      "test": len(bench.test)}, "rankings": {}, "searches": []}
    sel_batches = [b.feeds for b in sel.data.store.batches(2)]
    for r in rankings:
        order, info = rank_layers(r, prepared, cal, placement,
                                  head[:1] if r == "int8_alone" else sel_batches, layerwise=lw)
        info.pop("float_alone_noise", None)
        print(f"  ranking {r}: {info.get('seconds')} s, first {order[:6]}", file=sys.stderr,
              flush=True)
        curve = prefix_curve(ctx, order, k_max) if k_max > 0 else []
        row["rankings"][r] = {"info": info, "order": order[:max(k_max, 12)], "curve": curve}
        searches = [("bisect", 10, 1)] + ([("ranked", 6, 2), ("greedy", 6, 2)]
                                          if r == "int8_alone" and old else [])
        searches = searches if search else []
        for strategy, trials, per in searches:
            res = run_search(ctx, r, strategy, (order, info), max_trials=trials, per_trial=per,
                             test_every_trial=strategy == "bisect" and r in test_curve)
            print(f"  search {r}/{strategy}: {res['float_layers']} float layers, "
                  f"{res['trials']} trials, {res['search_s']} s; test {_bench.fidelity_text(res['test'])}",
                  file=sys.stderr, flush=True)
            row["searches"].append(res)
            (work / f"fallback_{key}_partial.json").write_text(json.dumps(row, default=str))
    sel.close()
    test.close()
    return row


def plot(row: dict, path: Path) -> Path:
    """Float layers -> fidelity, one line per ranking, selection solid and test dotted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric, goal = row["target"]
    fig, ax = plt.subplots(figsize=(7.5, 4.6), dpi=110)
    colors = {"int8_alone": "tab:gray", "float_alone": "tab:blue", "greedy": "tab:orange"}
    for res in row["searches"]:
        if res["strategy"] != "bisect":
            continue
        r, pts = res["ranking"], sorted(res["path"], key=lambda t: t["k"])
        ax.plot([t["k"] for t in pts], [t["selection"] for t in pts], "-o", ms=4,
                color=colors.get(r), label=f"{r} + bisect: selection "
                                          f"({row['images']['selection']} images)")
        tp = [t for t in pts if t["test"] is not None]
        if tp:
            ax.plot([t["k"] for t in tp], [t["test"] for t in tp], ":s", ms=5, mfc="none",
                    color=colors.get(r), label=f"{r} + bisect: test ({row['images']['test']} images)")
        ax.plot([res["float_layers"]], [_fig(res["test"], metric)], "*", ms=13, mfc="none",
                color=colors.get(r), label=f"{r}: chosen, on test")
    ax.axhline(goal, color="tab:red", ls="--", lw=1, label=f"target {goal:g}")
    ax.set_xlabel("layers kept in float (FP16 export): the bisect search's trials")
    ax.set_ylabel("top-1 agreement with FP32" if metric == "top1" else "mAP50-95 vs FP32")
    ax.set_title(f"{row['model']}: fallback trade-off on effort {row.get('effort', 'best')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="effnet,yolo")
    p.add_argument("--rankings", default=",".join(RANKINGS))
    p.add_argument("--curve", type=int, default=0,
                   help="also every prefix k = 0..CURVE of each ranking on both parts (slow)")
    p.add_argument("--test-curve", default="float_alone,greedy",
                   help="rankings whose bisect trials are all scored on the test part too")
    p.add_argument("--no-old", action="store_true", help="skip the ranked/greedy strategies")
    p.add_argument("--no-search", action="store_true",
                   help="only the rankings and their --curve (no fallback search)")
    p.add_argument("--effort", default="best", help="quantization.effort under the fallback")
    p.add_argument("--work", default="/tmp/xtrt-bench")
    p.add_argument("--json", help="append one row per model to this JSON-lines file")
    p.add_argument("--png-dir", default=str(Path(__file__).resolve().parent))
    a = p.parse_args(argv)
    for m in [x.strip() for x in a.models.split(",") if x.strip()]:
        row = run_model(m, Path(a.work), a.curve, [r for r in a.rankings.split(",") if r],
                        test_curve=a.test_curve.split(","), old=not a.no_old, effort=a.effort,
                        search=not a.no_search)
        if row["searches"]:
            png = plot(row, Path(a.png_dir) / f"fallback_{m}.png")
            print(f"{row['model']}: curve in {png}", file=sys.stderr)
        if a.json:
            with open(a.json, "a") as fh:
                fh.write(json.dumps(row, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

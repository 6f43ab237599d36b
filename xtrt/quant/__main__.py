"""``python -m xtrt.quant --config FILE``: parse arguments, run, render, map errors to exit codes."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Sequence

from xtrt.cli import add_common_args, configure_logging, run_main

log = logging.getLogger("xtrt.quant")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m xtrt.quant",
        description="Calibrate an ONNX vision model with PPQ on real images and export a "
                    "TensorRT-ready Q/DQ model (quantized.onnx) plus quant_cfg.json and a report.")
    p.add_argument("--config", required=True, help="YAML config (see data/*.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set calibration.steps=64 (repeatable)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="override config 'device'")
    p.add_argument("--output-dir", help="override config 'output_dir'")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                   help="load op handlers from a Python file (repeatable)")
    add_common_args(p)
    return p


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def render_terminal(res) -> str:
    from xtrt.report.table import render_table

    r = res.report
    parts = []
    outs = [{"output": k, **v} for k, v in (r.get("outputs") or {}).items()]
    parts.append(render_table(outs, [("output", "output", None), ("sqnr_db", "SQNR dB", ".1f"),
                                      ("cosine", "cosine", ".5f"), ("isclose", "isclose", ".1%"),
                                      ("max_abs", "max abs", ".4g")],
                              title=f"INT8 (ONNX Runtime) vs FP32 on "
                                    f"{r['summary'].get('judged_on', 'held-out images')}"))
    task = r.get("task") or {}
    if task.get("kind") == "classification":
        sim = task.get("ppq_simulation", {})
        parts.append(f"top-1 agreement with FP32: {task['agree']}/{task['total']} "
                     f"({task['top1_agreement']:.1%}); PPQ simulation (all layers INT8): "
                     f"{sim.get('top1_agreement', float('nan')):.1%}")
    elif task.get("kind") == "detection":
        name = "COCO mAP" if task.get("kind_map") == "coco" else "mAP vs FP32 detections"
        def f3(x):
            return "n/a" if x is None else f"{x:.3f}"
        sim = task.get("ppq_simulation", {}).get("map50_95")
        parts.append(f"{name}: mAP50-95 {f3(task.get('map50_95'))}, mAP50 {f3(task.get('map50'))} "
                     f"({task.get('reference_boxes')} reference boxes, {task.get('detections')} "
                     f"INT8 detections); PPQ simulation (all layers INT8) mAP50-95 {f3(sim)}")
    search = (r.get("calibration") or {}).get("method_search")
    if search:
        parts.append(render_table(search["candidates"],
                                  [("method", "method", None), ("task_metric", "task metric", ".4f"),
                                   ("sqnr_db", "worst SQNR dB", ".2f")],
                                  title=f"Calibration methods on {search.get('judged_on', 'held-out images').split(' (')[0]} "
                                        f"(chosen: {search['chosen']})"))
    layers = r.get("worst_layers") or []
    if layers:
        parts.append(render_table(layers, [("name", "layer", None), ("op_type", "op", None),
                                           ("noise_ratio", "graph-wise noise", ".4f"),
                                           ("cosine", "cosine", ".4f"),
                                           ("layerwise_noise_ratio", "alone", ".2e")],
                                  title="Worst layers (graph-wise noise: PPQ; cosine: the exported model on ORT; alone: layer-wise)"))
    fb = r.get("fallback")
    if fb:
        parts.append(render_table(fb["trials"], [("trial", "trial", "d"),
                                                 ("n_fp32_layers", "FP32 layers", "d"),
                                                 ("metric", "metric", ".4f"),
                                                 ("test_metric", "test", ".4f"),
                                                 ("passed", "target met", None),
                                                 ("kept", "kept float", None)],
                                  title=f"Fallback: {fb['reason']}"))
        parts.append(fallback_curve_line(fb))
        if fb.get("why"):
            parts.append(f"Why: {fb['why']}")
    return "\n\n".join(parts)


def fallback_curve_line(fb: dict) -> str:
    """One line: float layers -> metric on the selection images (/ on the test images)."""
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    seen, pts = set(), []
    for t in sorted(fb["trials"], key=lambda t: (t["n_fp32_layers"], -(t.get("metric") or 0))):
        if t["n_fp32_layers"] in seen:
            continue
        seen.add(t["n_fp32_layers"])
        test = f"/{f(t['test_metric'])}" if "test_metric" in t else ""
        pts.append(f"{t['n_fp32_layers']}: {f(t.get('metric'))}{test}")
    chosen = fb["trials"][fb["chosen"]]
    has_test = any("test_metric" in t for t in fb["trials"])
    return (f"Fallback curve (float layers: selection{'/test' if has_test else ''} metric): "
            f"{', '.join(pts)}; chosen {chosen['n_fp32_layers']} layer(s)"
            f"{'' if fb['reached'] else ' (target not met)'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    t0 = time.perf_counter()
    from xtrt.config import load_config

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    from xtrt.quant.pipeline import run_quant

    res = run_quant(cfg, progress=not args.quiet, plugins=args.plugin)
    if not args.quiet:
        print(render_terminal(res))
    r = res.report
    files = ", ".join(f"{p} ({_fmt_size(p.stat().st_size)})" for name, p in res.files.items()
                      if name in ("quantized.onnx", "quant_cfg.json"))
    task = r.get("task") or {}
    metric = ""
    if task.get("kind") == "classification":
        metric = f", top-1 agreement {task['top1_agreement']:.1%}"
    elif task.get("kind") == "detection" and task.get("map50_95") is not None:
        metric = f", mAP50-95 vs FP32 {task['map50_95']:.3f} ({task['reference_boxes']} boxes)"
    worst = r["summary"].get("worst_layer")
    eng = r.get("engine") or {}
    if eng.get("available") and not args.quiet:
        print(_engine_line(eng))
    print(f"PASSED xtrt.quant in {time.perf_counter() - t0:.1f}s: {files}; "
          f"{r['summary']['int8_ops']} ops INT8{metric}, judged on {r['summary']['judged_on']}; "
          f"worst layer {worst}")
    return 0


def _engine_line(eng: dict) -> str:
    scope = " (body before the plugin nodes)" if eng.get("body_only") else ""
    if not eng.get("accepted"):
        err = (eng.get("errors") or ["no engine"])[0]
        return f"{eng.get('label', 'TensorRT-RTX')}{scope}: NOT accepted: {err}"
    return (f"{eng['label']}{scope}: {eng['int8_convolutions']}/{eng['convolutions']} "
            f"convolutions take Int8, {len(eng['fp32_islands'])} Float layers outside them, "
            f"{eng['half_layers']} Half layers ({eng['layers']} engine layers; structure only, "
            f"not TensorRT 10, no latency)")


def entry() -> None:
    sys.exit(run_main(main))


if __name__ == "__main__":
    entry()

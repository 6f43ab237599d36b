"""Technique x model table: which accuracy technique buys how much fidelity for how many seconds.

    python benchmarks/techniques.py [--models effnet,yolo] [--variants minmax,pt,...] \\
        [--json rows.jsonl] [--work /tmp/xtrt-bench]

Data and scoring: ``benchmarks/_bench.py`` (32 calibration photos; held-out photos + vtest.avi
frames split into a selection part, used only by ``method: auto``, and a test part every figure
comes from; xtrt's evaluator on ONNX Runtime CPU).

Each variant runs xtrt's own stages as ``run_quant`` does (prepare, calibrate, method search,
techniques, export) without its verification, analysis and report writing.  ``seconds`` is that
wall time on this machine (2 CPU cores shared with other jobs: noisy, inflated); for ``auto`` it
includes the FP32 reference pass over the selection images, which only the search needs.
``CPU s`` is the process's CPU time over the same stages (all threads; less load-dependent:
an idle 2-core machine needs between CPU s / 2 and CPU s of wall time).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402

F = "quantization.effort=fast"
BC = ["quantization.bias_correction.enabled=true", "quantization.bias_correction.block_size=16",
      "quantization.bias_correction.batches=1"]
VARIANTS: dict[str, list[str]] = {
    "minmax": [F, "calibration.method=minmax"],
    "percentile": [F, "calibration.method=percentile"],
    "mse": [F, "calibration.method=mse"],
    "kl": [F, "calibration.method=kl"],
    "auto": [F, "calibration.method=auto"],
    "pt": [F, "quantization.per_tensor=true"],
    "cle+mse": [F, "calibration.method=mse", "quantization.equalization.enabled=true"],
    "cle+pt": [F, "quantization.per_tensor=true", "quantization.equalization.enabled=true"],
    "mse+bc16": [F, "calibration.method=mse", *BC],
    "pt+bc16": [F, "quantization.per_tensor=true", *BC],
    "minmax+lsq20": [F, "calibration.method=minmax", "quantization.lsq.steps=20",
                     "quantization.lsq.batches=2"],
    "mse+lsq20": [F, "calibration.method=mse", "quantization.lsq.steps=20",
                  "quantization.lsq.batches=2"],
    "pt+lsq20": [F, "quantization.per_tensor=true", "quantization.lsq.steps=20",
                 "quantization.lsq.batches=2"],
    "pt+lsq100": [F, "quantization.per_tensor=true", "quantization.lsq.steps=100",
                  "quantization.lsq.batches=2"],
    "mse+adaround100": [F, "calibration.method=mse", "quantization.adaround.steps=100",
                        "quantization.adaround.batches=2"],
    "pt+adaround100": [F, "quantization.per_tensor=true", "quantization.adaround.steps=100",
                       "quantization.adaround.batches=2"],
    "effort=fast": ["quantization.effort=fast"],
    "effort=default": ["quantization.effort=default"],
    "effort=best": ["quantization.effort=best"],
}


def run_variant(bench, overrides: Sequence[str], sel_ev=None, device: str = "cpu"):
    """xtrt's stages on ``bench`` with ``overrides`` on ``device``; returns (qmodel, info dict)."""
    from xtrt.quant import techniques
    from xtrt.quant.calibrate import calibrate
    from xtrt.quant.export import export_qdq
    from xtrt.quant.select import choose_method

    cfg = techniques.resolve(bench.config(overrides))
    cfg.device = device
    t = {}
    c0 = time.process_time()
    t0 = time.perf_counter()
    prepared, placement = _bench.prepare(bench, cfg)
    cal_src = _bench.batches(bench, cfg, prepared, bench.cal, cfg.calibration.batch_size)
    t["prepare"] = time.perf_counter() - t0
    calibrated = calibrate(cfg, prepared, placement, cal_src, progress=False)
    placement.quantize = [n for n in placement.quantize
                          if n in set(calibrated.result.quantized_ops)]
    t["calibrate"] = time.perf_counter() - t0 - sum(t.values())
    search = None
    if calibrated.plan.searches:
        if sel_ev is None:
            raise ValueError("method auto needs the selection evaluator")
        search = choose_method(calibrated, lambda c: export_qdq(prepared.model, c.result,
                                                               placement), sel_ev)
        t["method_search"] = time.perf_counter() - t0 - sum(t.values())
        t["selection_fp32"] = sel_ev.reference_seconds
    t1 = time.perf_counter()
    info = techniques.after_calibration(cfg, calibrated.result, calibrated.stats, cal_src,
                                        progress=False)
    t["techniques"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    qmodel = export_qdq(prepared.model, calibrated.result, placement)
    t["export"] = time.perf_counter() - t2
    return qmodel, {"seconds": round(sum(t.values()), 1),
                    "cpu_s": round(time.process_time() - c0, 1),
                    "timings_s": {k: round(v, 1) for k, v in t.items()},
                    "method": calibrated.method if not cfg.quantization.per_tensor else
                    "per-tensor", "search": search and search["chosen"],
                    "techniques": {k: v for k, v in (info or {}).items()}}


def render(rows: Sequence[dict]) -> str:
    lines = ["| model | technique | seconds (wall) | CPU s | method | fidelity on the test part |",
             "|---|---|---:|---:|---|---|"]
    for r in rows:
        m = r["method"] + (f" (auto -> {r['search']})" if r.get("search") else "")
        lines.append(f"| {r['model']} | {r['variant']} | {r['seconds']:.1f} | {r.get('cpu_s', 0):.1f} | {m} | "
                     f"{_bench.fidelity_text(r['test'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="effnet,yolo")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--work", default="/tmp/xtrt-bench")
    p.add_argument("--json", help="append rows to this JSON-lines file as they finish")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where calibration, the techniques and the scoring run")
    p.add_argument("--photos", help="a local photo folder (vtest* files = the video frames) instead "
                   "of the downloads (with --effnet-model / --yolo-model)")
    p.add_argument("--effnet-model", help="with --photos: EfficientNet-Lite0 ONNX (opset 13)")
    p.add_argument("--yolo-model", help="with --photos: the YOLOv8n e2e ONNX")
    p.add_argument("--extra", action="append", default=[], metavar="NAME=K=V[,K=V]",
                   help="an extra variant: NAME=override;override (e.g. "
                   "'lsq200=calibration.method=minmax;quantization.lsq.steps=200')")
    a = p.parse_args(argv)
    for spec in a.extra:
        name, _, sets = spec.partition("=")
        VARIANTS[name] = [F, *[x for x in sets.split(";") if x]]
    local = ({"photos": a.photos, "models": {"effnet": a.effnet_model, "yolo": a.yolo_model}}
             if a.photos else None)
    rows = []
    for m in [x.strip() for x in a.models.split(",") if x.strip()]:
        bench = _bench.load_bench(m, Path(a.work), local)
        test_ev = _bench.evaluator(bench, bench.test, "test")   # scored on CPU (no TF32)
        names = [x.strip() for x in a.variants.split(",") if x.strip()]
        sel_ev = _bench.evaluator(bench, bench.sel, "selection") if any(
            "auto" in VARIANTS[v] or "calibration.method=auto" in VARIANTS[v] for v in names) \
            else None
        print(f"{bench.label}: {len(bench.cal)} calibration, {len(bench.sel)} selection, "
              f"{len(bench.test)} test images; FP32 test pass {test_ev.reference_seconds} s",
              file=sys.stderr, flush=True)
        for v in names:
            t0 = time.perf_counter()
            qmodel, row = run_variant(bench, VARIANTS[v], sel_ev, a.device)
            row.update(model=bench.label, variant=v, test=_bench.score(test_ev, qmodel),
                       device=a.device, wall_with_scoring_s=round(time.perf_counter() - t0, 1),
                       images={"calibration": len(bench.cal), "selection": len(bench.sel),
                               "test": len(bench.test)}, overrides=VARIANTS[v])
            rows.append(row)
            print(render([row]).splitlines()[-1], file=sys.stderr, flush=True)
            if a.json:
                with open(a.json, "a") as fh:
                    fh.write(json.dumps(row, default=str) + "\n")
        test_ev.close()
        if sel_ev is not None:
            sel_ev.close()
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Technique x model table: which accuracy technique buys how much fidelity for how many seconds.

    python benchmarks/techniques.py [--models effnet,yolo] [--variants minmax,pt,...] \\
        [--json rows.jsonl] [--work /tmp/xtrt-bench] [--selection]

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
import itertools
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
    "entropy": [F, "calibration.method=entropy"],
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


def run_variant(bench, overrides: Sequence[str], sel_ev=None, cache: Path | None = None,
                device: str = "cpu"):
    """The model ``xtrt.quant`` writes for ``bench`` with ``overrides``: the Q/DQ export of
    :func:`export_variant`, then the float-precision stage (``export.float_precision``, FP16 by
    default, measured on the first 2 calibration batches as the pipeline does) and the kept-float
    record xtrt.lint reads.  Returns (model, info dict)."""
    from xtrt.quant import techniques
    from xtrt.quant.outputs import kept_float_reasons
    from xtrt.quant.precision import apply_float_precision
    from xtrt.trt.kept_float import write_kept_float

    qmodel, info = export_variant(bench, overrides, sel_ev, cache, device)
    cfg = techniques.resolve(bench.config(overrides))
    prepared, placement = _bench.prepare(bench, cfg)
    src = _bench.batches(bench, cfg, prepared, bench.cal, cfg.calibration.batch_size)
    t0 = time.perf_counter()
    model, prec = apply_float_precision(qmodel, cfg.export.float_precision,
                                        [b.feeds for b in itertools.islice(iter(src), 2)],
                                        plugin_nodes=prepared.tail_nodes, device=device,
                                        qdq_opset=cfg.export.fp16_qdq_opset)
    write_kept_float(model, kept_float_reasons(placement, model, prec))
    spent = time.perf_counter() - t0
    info = {**info, "seconds": round(info["seconds"] + spent, 1),
            "timings_s": {**info.get("timings_s", {}), "float_precision": round(spent, 1)},
            "float_precision": cfg.export.float_precision}
    return model, info


def export_variant(bench, overrides: Sequence[str], sel_ev=None, cache: Path | None = None,
                   device: str = "cpu"):
    """xtrt's stages on ``bench`` with ``overrides`` on ``device``; returns (qmodel, info dict).

    With ``cache`` (a folder), the exported model and its timings are kept there under a key of
    the bench and the overrides, and a later call with the same key (``compare.py``'s xtrt rows
    and this table's effort rows) loads them instead of running again."""
    if cache is not None:
        import hashlib

        import onnx

        tag = [] if device == "cpu" else [device]     # keys of CPU runs stay as they were
        key = hashlib.sha1(json.dumps([bench.key, [str(x) for x in bench.cal],
                                       list(overrides)] + tag).encode()).hexdigest()[:12]
        path, meta = cache / f"{bench.key}_{key}.onnx", cache / f"{bench.key}_{key}.json"
        if path.is_file() and meta.is_file():
            return onnx.load(str(path)), {**json.loads(meta.read_text()), "cached": True}
        qmodel, info = export_variant(bench, overrides, sel_ev, device=device)
        cache.mkdir(parents=True, exist_ok=True)
        onnx.save(qmodel, str(path))
        meta.write_text(json.dumps(info, default=str))
        return qmodel, info
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
                                                               placement), sel_ev,
                               cfg.calibration.search_images)
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
    lines = ["| model | technique | seconds (wall) | CPU s | method | fidelity on the test part "
             "[95 % interval] |", "|---|---|---:|---:|---|---|"]
    for r in rows:
        if r.get("failed"):
            lines.append(f"| {r['model']} | {r['variant']} | - | - | - | {r['failed']} |")
            continue
        m = r["method"] + (f" (auto -> {r['search']})" if r.get("search") else "")
        lines.append(f"| {r['model']} | {r['variant']} | {r['seconds']:.1f} | "
                     f"{r.get('cpu_s', 0):.1f} | {m} | {_bench.fidelity_text(r['test'])}"
                     + (f" (selection: {_bench.fidelity_text(r['selection'])})"
                        if r.get("selection") else "") + " |")
    return "\n".join(lines)


def _variant_row(bench, v: str, test_ev, sel_ev, a, left: float) -> dict:
    base = {"model": bench.label, "key": bench.key, "variant": v, "overrides": VARIANTS[v],
            "images": {"calibration": len(bench.cal), "selection": len(bench.sel),
                       "test": len(bench.test)}}
    if left <= 5:
        return {**base, "failed": "not run: the run's time budget was spent"}
    try:
        t0 = time.perf_counter()
        with _bench.Alarm(min(a.timeout, left)):
            qmodel, row = run_variant(bench, VARIANTS[v], sel_ev, cache=Path(a.work) / "variants",
                                      device=a.device)
        row.update(base, test=_bench.score(test_ev, qmodel), device=a.device,
                   wall_with_scoring_s=round(time.perf_counter() - t0, 1))
        if a.selection and sel_ev is not None:    # the part choices are made on
            row["selection"] = _bench.score(sel_ev, qmodel)
        return row
    except Exception as exc:                              # noqa: BLE001 - one line in the table
        return {**base, "failed": f"failed: {_bench.one_line(exc)}"}


def _rendered_rows(files: Sequence[str]) -> list[dict]:
    """Rows of ``files`` (this script's and compare.py's), one per (model, variant), sorted by
    model then variant order."""
    names = {"xtrt-default": "effort=default", "xtrt-best": "effort=best",
             "xtrt-fast": "effort=fast"}
    out: dict[tuple, dict] = {}
    for f in files:
        for ln in Path(f).read_text().splitlines():
            if not ln.strip():
                continue
            r = json.loads(ln)
            if "tool" in r:
                if r["tool"] not in names:
                    continue
                info = r.get("info") or {}
                r = {**r, "variant": names[r["tool"]], "method": info.get("method", "-"),
                     "search": info.get("search")}
            k = (r.get("key"), r["variant"])
            if k not in out or (out[k].get("failed") and not r.get("failed")):
                out[k] = r      # a measured row over a failed / not-run one
    order = {k: i for i, k in enumerate(_bench.SPEC)}
    vorder = {v: i for i, v in enumerate(VARIANTS)}
    return sorted(out.values(), key=lambda r: (order.get(r.get("key"), 99),
                                               vorder.get(r["variant"], 99)))


def _context(m: str, work: Path, variants: str, local: dict | None = None,
             selection: bool = False):
    """(bench, test evaluator, selection evaluator or None) of model ``m``."""
    bench = _bench.load_bench(m, work, local)
    test_ev = _bench.evaluator(bench, bench.test, "test")   # scored on CPU (no TF32)
    names = [x.strip() for x in variants.replace(";", ",").split(",") if x.strip()]
    sel_ev = _bench.evaluator(bench, bench.sel, "selection") if selection or any(
        "calibration.method=auto" in VARIANTS[v] for v in names) else None
    print(f"{bench.label}: {len(bench.cal)} calibration, {len(bench.sel)} selection, "
          f"{len(bench.test)} test images; FP32 test pass {test_ev.reference_seconds} s",
          file=sys.stderr, flush=True)
    return bench, test_ev, sel_ev


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(_bench.SPEC))
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="comma-separated variants; ';' separates passes over all models")
    p.add_argument("--work", default="/tmp/xtrt-bench")
    p.add_argument("--json", help="append rows to this JSON-lines file as they finish; rows "
                                  "already there are kept and not re-run")
    p.add_argument("--timeout", type=float, default=420, help="seconds per variant")
    p.add_argument("--budget", type=float, default=1e9, help="seconds for the whole run")
    p.add_argument("--render", nargs="+", metavar="JSONL",
                   help="run nothing: print the table from rows of earlier --json runs of this "
                        "script and of compare.py (its xtrt-default / xtrt-best rows are the "
                        "effort=default / effort=best variants: same images, same scorer)")
    p.add_argument("--selection", action="store_true",
                   help="score every variant on the selection part too (to choose a preset on "
                        "it and judge the choice on the test part)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where calibration and the techniques run (scoring: CPU)")
    p.add_argument("--photos", help="a local photo folder (vtest* files = the video frames) instead "
                   "of the downloads (with --effnet-model / --yolo-model; effnet and yolo only)")
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
    if a.render:
        print(render(_rendered_rows(a.render)))
        return 0
    t_start = time.perf_counter()
    rows = []
    if a.json and Path(a.json).is_file():
        rows = [json.loads(ln) for ln in Path(a.json).read_text().splitlines() if ln.strip()]
        rows = [r for r in rows if not r.get("failed", "").startswith("not run")]
    done = {(r["key"], r["variant"]) for r in rows}
    models = [_bench.ALIASES.get(x.strip(), x.strip()) for x in a.models.split(",") if x.strip()]
    ctxs: dict[str, tuple] = {}
    for group in a.variants.split(";"):
        for m in models:
            names = [x.strip() for x in group.split(",")
                     if x.strip() and (m, x.strip()) not in done]
            if not names:
                continue
            if m not in ctxs:
                ctxs[m] = _context(m, Path(a.work), a.variants, local, a.selection)
            bench, test_ev, sel_ev = ctxs[m]
            for v in names:
                row = _variant_row(bench, v, test_ev, sel_ev, a,
                                   a.budget - (time.perf_counter() - t_start))
                rows.append(row)
                print(render([row]).splitlines()[-1], file=sys.stderr, flush=True)
                if a.json:
                    with open(a.json, "a") as fh:
                        fh.write(json.dumps(row, default=str) + "\n")
    for _, test_ev, sel_ev in ctxs.values():
        test_ev.close()
        if sel_ev is not None:
            sel_ev.close()
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

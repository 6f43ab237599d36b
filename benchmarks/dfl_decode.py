"""YOLOv8n's DFL decode conv: quantized or kept float, measured (mAP50-95 vs FP32, worst SQNR).

    python benchmarks/dfl_decode.py [--work /tmp/xtrt-bench] [--json rows.jsonl]

The YOLOv8n 640 bench of ``benchmarks/_bench.py`` (the same data split and scorer as
``techniques.py``), minmax calibration, two placements: the default (``keep_decode_fp32: true``:
the decode tail, whose only weighted layer is the 16-tap DFL conv, stays float) and
``keep_decode_fp32: false`` (the DFL conv gets Q/DQ).  Each is scored as the FP32 export and as
the FP16 export xtrt writes (``export.float_precision: fp16``) on the test part.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _bench  # noqa: E402
import techniques  # noqa: E402

PLACEMENTS = {"DFL conv float (keep_decode_fp32: true)": [],
              "DFL conv INT8 (keep_decode_fp32: false)": ["quantization.keep_decode_fp32=false"]}


def _evaluator(bench, files):
    """xtrt's Evaluator with FP32 references on ``files`` (as ``_bench.evaluator``, through
    ``xtrt.analysis.task.infer_task``)."""
    from xtrt.analysis.task import infer_task
    from xtrt.data.store import BatchStore
    from xtrt.model.load import dims_of, load_model
    from xtrt.quant.evaluate import Evaluator
    from xtrt.quant.verify import prepare_eval
    from xtrt.runtime.split import SplitRunner

    cfg = bench.config()
    prepared, _ = _bench.prepare(bench, cfg)
    task, layout = infer_task([dims_of(o) for o in prepared.model.graph.output],
                              cfg.evaluation.task, prepared.input_shape[2:4])
    ed = prepare_eval(SplitRunner(load_model(bench.model), device="cpu"),
                      _bench.batches(bench, cfg, prepared, files, 4), task, layout,
                      conf=bench.conf, iou=cfg.evaluation.iou_threshold,
                      store=BatchStore(spill_dir=Path("/tmp/xtrt-bench-store-dfl")))
    return Evaluator(ed, "cpu", cfg.evaluation.rtol, cfg.evaluation.atol, f"{ed.count} test")


def main() -> int:
    from xtrt.quant.precision import apply_float_precision

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="/tmp/xtrt-bench")
    p.add_argument("--json")
    a = p.parse_args()
    bench = _bench.load_bench("yolo", Path(a.work))
    test_ev = _evaluator(bench, bench.test)
    print(f"{len(bench.cal)} calibration, {len(bench.test)} test images", file=sys.stderr)
    rows = []
    for label, extra in PLACEMENTS.items():
        over = techniques.VARIANTS["minmax"] + extra
        qmodel, info = techniques.export_variant(bench, over)   # the FP32 export
        cfg = bench.config(over)
        prepared, placement = _bench.prepare(bench, cfg)
        feeds = [b.feeds for b in itertools.islice(iter(_bench.batches(
            bench, cfg, prepared, bench.cal, cfg.calibration.batch_size)), 2)]
        fp16, pinfo = apply_float_precision(qmodel, "fp16", feeds,
                                            plugin_nodes=prepared.tail_nodes)
        row = {"placement": label, "quantized_nodes": len(placement.quantize),
               "fp32_export": _bench.score(test_ev, qmodel),
               "fp16_export": _bench.score(test_ev, fp16),
               "fp16_kept_fp32": pinfo["kept_fp32"], "seconds": info["seconds"]}
        rows.append(row)
        print(json.dumps(row, default=str), file=sys.stderr, flush=True)
        if a.json:
            with open(a.json, "a") as fh:
                fh.write(json.dumps(row, default=str) + "\n")
    test_ev.close()
    print("| placement | INT8 nodes | FP32 export | FP16 export |\n|---|---:|---|---|")
    for r in rows:
        print(f"| {r['placement']} | {r['quantized_nodes']} | "
              f"{_bench.fidelity_text(r['fp32_export'])} | "
              f"{_bench.fidelity_text(r['fp16_export'])} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

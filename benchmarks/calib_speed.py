"""Calibration wall time per method against one plain FP32 pass, on CPU or CUDA.

    python benchmarks/calib_speed.py [--model data/yolov8n_e2e.onnx] [--images DIR] [--count 512]
                                     [--batch 32] [--imgsz 640] [--device cuda] [--methods ...] [--ppq]

The brief's yardstick (YOLOv8n 640, 512 images, H100): one FP32 pass on ORT's CUDA EP 0.65 s;
PPQ's default percentile 138.6 s without its JIT CUDA kernels, 20.1 s with them (plus a 74 s build);
ModelOpt max 10.3 s.  This script times what ``xtrt.quant`` does for each method: ONNX Runtime
statistics over the calibration batches plus PPQ's scale rules (``xtrt.quant.calibrate.calibrate``).
Image decoding and preprocessing are timed separately (they are the same for every tool).
When the folder has fewer images than ``--count`` the files are cycled (said in the output).
``--ppq`` also times PPQ's own engine (``calibration.engine: ppq``) for percentile.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="data/yolov8n_e2e.onnx")
    p.add_argument("--images", default="data/images")
    p.add_argument("--count", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--methods", default="percentile,minmax,mse,kl")
    p.add_argument("--ppq", action="store_true", help="also time PPQ's own engine (percentile)")
    a = p.parse_args(argv)

    from xtrt.backend import ppq as ppq_backend
    from xtrt.config import Config, PreprocessConfig
    from xtrt.data.images import list_files
    from xtrt.data.preprocess import build_preprocess
    from xtrt.data.source import BatchSource
    from xtrt.model.load import load_model
    from xtrt.model.prepare import prepare_model
    from xtrt.quant.calibrate import calibrate
    from xtrt.quant.placement import plan_placement
    from xtrt.runtime.session import make_session

    files = list_files(a.images)
    distinct = len(files)
    files = [files[i % distinct] for i in range(a.count)]
    shape = [a.batch, 3, a.imgsz, a.imgsz]
    t = time.perf_counter()
    pm = prepare_model(load_model(a.model), shape)
    t_prep = time.perf_counter() - t
    pre = build_preprocess(PreprocessConfig(preset="letterbox", size=[a.imgsz, a.imgsz]))
    t = time.perf_counter()
    batches = list(BatchSource(files, pm.input_name, tuple(shape[1:]), pre, a.batch))
    t_data = time.perf_counter() - t
    feeds = [b.feeds for b in batches]
    placement = plan_placement(pm.model, plugin_tail=pm.tail_nodes)

    sess = make_session(pm.body, a.device)
    names = [o.name for o in sess.get_outputs()]
    sess.run(names, feeds[0])                      # warm-up (CUDA context, cuDNN autotune)
    t = time.perf_counter()
    for f in feeds:
        sess.run(names, f)
    t_fp32 = time.perf_counter() - t

    rows = []
    for m in [x for x in a.methods.split(",") if x]:
        cfg = Config()
        cfg.device = a.device
        cfg.calibration.method = m
        t = time.perf_counter()
        cal = calibrate(cfg, pm, placement, batches, progress=False).result
        rows.append((f"xtrt {m} (ORT statistics)", time.perf_counter() - t, len(cal.quantized_ops)))
    if a.ppq:
        t = time.perf_counter()
        cal = ppq_backend.calibrate(pm.model, feeds, device=a.device, method="percentile",
                                    fp32_ops=list(placement.keep_float))
        rows.append(("PPQ engine percentile (no JIT kernels)", time.perf_counter() - t,
                     len(cal.quantized_ops)))

    print(f"{Path(a.model).name} at {a.imgsz}x{a.imgsz}, {a.count} images "
          f"({distinct} distinct{', cycled' if distinct < a.count else ''}), batch {a.batch}, "
          f"device {a.device}")
    print(f"prepare {t_prep:.1f} s; decode+preprocess {t_data:.1f} s (not in the figures below)\n")
    print("| what | seconds | INT8 layers |")
    print("|---|---:|---:|")
    print(f"| one FP32 pass on ONNX Runtime ({a.device}) | {t_fp32:.2f} | - |")
    for name, sec, n in rows:
        print(f"| {name} | {sec:.2f} | {n} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
